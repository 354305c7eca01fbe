"""Generation with the real smoke base model: only the answer comes back, it stops at EOS, and left-padded
batches answer exactly as one prompt at a time. Without a model: every way of reading an answer cuts it at
the same EOS, and inference loads on the current device whatever a launcher's variables say."""

from pathlib import Path

import pytest
import torch

from core.errors import UserError
from core.model import device_map
from core.prompts import render_prompt
from inference.chat import fitted_prompt
from inference.generate import (
    Answer,
    AnswerStreamer,
    answer_from_tokens,
    continuation,
    decoding_options,
    generate,
)
from inference.loading import load_model
from inference.models import ModelSource
from tests.conftest import smoke_config

QUESTIONS = [
    "How do I reverse a list?",
    "What is the fastest way to read a very large CSV file with pandas when memory is short?",
    "Sort a dict by value",
    "Why does my recursive function return None even though it prints the right value at the end?",
]


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return smoke_config(tmp_path_factory.mktemp("generate")).inference


@pytest.fixture(scope="module")
def base(smoke_base_dir: Path, tmp_path_factory):
    config = smoke_config(tmp_path_factory.mktemp("load"))
    return load_model(ModelSource("base", str(smoke_base_dir), is_adapter=False), config)


def prompts() -> list[str]:
    return [render_prompt(question, "Be brief.") for question in QUESTIONS]


def test_loaded_for_batched_generation(base):
    model, tokenizer = base
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert not model.training


def test_batched_left_padded_answers_equal_one_by_one(base, settings):
    model, tokenizer = base
    batched = generate(model, tokenizer, prompts(), settings.model_copy(update={"batch_size": 4}))
    alone = generate(model, tokenizer, prompts(), settings.model_copy(update={"batch_size": 1}))
    assert batched == alone
    # The equality means something only if the model reads its prompt: the next-token logits of the
    # left-padded batch equal those of each prompt alone, and differ from prompt to prompt.
    padded = tokenizer(prompts(), return_tensors="pt", padding=True)
    with torch.no_grad():
        batch_logits = model(**padded).logits[:, -1]
        alone_logits = [model(**tokenizer(p, return_tensors="pt")).logits[0, -1] for p in prompts()]
    for row, single in zip(batch_logits, alone_logits, strict=True):
        assert torch.allclose(row, single, atol=1e-4)
    assert not torch.allclose(alone_logits[0], alone_logits[1], atol=1e-2)


def test_only_the_answer_is_returned_and_max_new_tokens_excludes_the_prompt(base, settings):
    model, tokenizer = base
    prompt = prompts()[1]
    inputs = tokenizer(prompt, return_tensors="pt")
    full = model.generate(**inputs, **decoding_options(settings, tokenizer))[0].tolist()
    (answer,) = generate(model, tokenizer, [prompt], settings)
    new = full[inputs["input_ids"].shape[1] :]
    assert len(new) == settings.max_new_tokens == answer.new_tokens and not answer.stopped
    assert answer.text == tokenizer.decode(new, skip_special_tokens=True).strip()
    assert "[INST]" not in answer.text and "Be brief" not in answer.text


def test_generation_stops_at_eos_and_drops_what_follows(base, settings, smoke_base_dir, tmp_path):
    """Give EOS the same output weights as the 4th greedy token of one answer: the tie goes to EOS (the
    lower id), so that answer must end there with its first 3 tokens, while another prompt in the same
    batch runs on to the limit."""
    model, tokenizer = base
    # The other prompt is plain code, so that its answer differs from the first's even on this tiny model.
    first, other = prompts()[0], "import os\nimport sys\n\n\ndef main():\n    "

    def greedy(prompt: str) -> list[int]:
        inputs = tokenizer(prompt, return_tensors="pt")
        tokens = model.generate(**inputs, **decoding_options(settings, tokenizer))
        return tokens[0, inputs["input_ids"].shape[1] :].tolist()

    continuation, elsewhere = greedy(first), set(greedy(other))
    cut = next(
        i
        for i in range(3, len(continuation))
        if continuation[i] not in continuation[:i] and continuation[i] not in elsewhere
    )
    stopper = load_model(ModelSource("base", str(smoke_base_dir), is_adapter=False), smoke_config(tmp_path))[
        0
    ]
    with torch.no_grad():
        stopper.lm_head.weight[tokenizer.eos_token_id] = stopper.lm_head.weight[continuation[cut]]
    stopped, running = generate(stopper, tokenizer, [first, other], settings)
    assert stopped.stopped and stopped.new_tokens == cut
    assert stopped.text == tokenizer.decode(continuation[:cut], skip_special_tokens=True).strip()
    assert tokenizer.eos_token_id < continuation[cut]
    assert running.new_tokens > cut  # the batch ran on: the pads after the first answer's EOS were cut


def test_sampling_is_reproducible_with_the_seed(base, settings):
    model, tokenizer = base
    sampling = settings.model_copy(update={"do_sample": True, "temperature": 1.5, "seed": 3})
    first = generate(model, tokenizer, prompts(), sampling)
    assert generate(model, tokenizer, prompts(), sampling) == first
    assert decoding_options(sampling, tokenizer)["temperature"] == 1.5
    assert "temperature" not in decoding_options(settings, tokenizer)


def test_four_bit_loading_quantizes_and_still_answers(smoke_base_dir, tmp_path, settings):
    from bitsandbytes.nn import Linear4bit

    config = smoke_config(tmp_path, "inference.quantize=true")
    model, tokenizer = load_model(ModelSource("base", str(smoke_base_dir), is_adapter=False), config)
    assert isinstance(model.model.layers[0].self_attn.q_proj, Linear4bit)
    (answer,) = generate(model, tokenizer, prompts()[:1], settings)
    assert answer.new_tokens > 0


def test_chat_prompt_drops_the_oldest_turns_to_fit(smoke_tokenizer, settings):
    history = [(f"question {n} " + "word " * 20, f"answer {n} " + "word " * 20) for n in range(4)]
    full, dropped = fitted_prompt(smoke_tokenizer, "last?", "Be brief.", history, 10_000, settings)
    assert dropped == 0 and full.text == render_prompt("last?", "Be brief.", history)
    limit = len(smoke_tokenizer(render_prompt("last?", "Be brief.", history[2:]))["input_ids"])
    context = limit + settings.max_new_tokens  # room for exactly the last two turns and the answer
    fitted, dropped = fitted_prompt(smoke_tokenizer, "last?", "Be brief.", history, context, settings)
    assert dropped == 2 and fitted.text == render_prompt("last?", "Be brief.", history[2:])
    assert fitted.text.startswith(
        "[INST] <<SYS>>\nBe brief."
    )  # the system prompt stays with the first kept turn
    with pytest.raises(UserError) as error:
        fitted_prompt(smoke_tokenizer, "word " * 300, "Be brief.", history, context, settings)
    tokens = len(smoke_tokenizer(render_prompt("word " * 300, "Be brief."))["input_ids"])
    assert str(error.value) == (
        f"your message: the prompt is {tokens} tokens, more than the {limit} that fit: the model's context "
        f"of {context} tokens (max_position_embeddings) minus inference.max_new_tokens "
        f"{settings.max_new_tokens}; shorten it, or lower inference.max_new_tokens"
    )


class Letters:
    """A tokenizer of one letter per id, enough to see where an answer is cut: EOS 0, pad 1, a is 2."""

    eos_token_id, pad_token_id = 0, 1

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(ord("a") + token - 2) if token > 1 else "" for token in ids)


def streamed(tokens: list[int], capsys) -> str:
    streamer = AnswerStreamer(Letters())
    streamer.put(torch.tensor([[9, 9]]))  # the prompt, which generate passes first
    for token in tokens:
        streamer.put(torch.tensor([token]))
    streamer.end()
    return capsys.readouterr().out


def test_every_reading_of_an_answer_cuts_it_at_the_first_eos(capsys):
    ended = [2, 3, 0, 4, 0, 1, 1]  # a, b, EOS, then what the rest of a batch made this row generate, pads
    assert answer_from_tokens(Letters(), ended) == Answer("ab", 2, stopped=True)
    assert continuation(Letters(), [5], ended) == Answer("ab", 2, stopped=True)
    assert streamed(ended, capsys) == "ab\n"
    cut_off = [2, 3, 4]  # no EOS: the token limit
    assert answer_from_tokens(Letters(), cut_off) == Answer("abc", 3, stopped=False)
    assert continuation(Letters(), [5], cut_off) == Answer("abc", 3, stopped=False)
    assert streamed(cut_off, capsys) == "abc\n"


def test_inference_takes_the_current_device_whatever_a_launcher_says(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert device_map(launched=False) == {"": "cpu"}
    assert device_map() is None  # training under FSDP: the launcher shards the model
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    assert device_map(launched=False) == {"": "cuda"} and device_map() == {"": 1}
