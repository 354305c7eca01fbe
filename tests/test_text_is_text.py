"""Text is text: a row or a prompt that spells every special token of its tokenizer (`<s>`, `</s>`,
`<|eot_id|>`, Llama-3's reserved tokens) holds exactly the format's control tokens, one BOS and, for a
training row, one final EOS, on the embedded tokenizer and Meta's Llama-2 and Llama-3 ones."""

from __future__ import annotations

import pytest

from core.model import answer_ids, chat_format, load_tokenizer, prompt_ids
from core.prompts import Rendered, curated_row
from core.tokens import encode
from data_prep.rows import Example, RowSettings, prepare_batch
from tests.conftest import LLAMA3_TOKENIZER, built, smoke_config


@pytest.fixture(scope="module", params=[built("embedded"), "llama2", "llama3"])
def tokenizer(request):
    if request.param == "embedded":
        return request.getfixturevalue("smoke_tokenizer")
    if request.param == "llama2":
        return request.getfixturevalue("llama2_tokenizer")
    return load_tokenizer(str(LLAMA3_TOKENIZER), prompt_format="chat_template")


def special_texts(tokenizer) -> list[str]:
    return [token.content for token in tokenizer.added_tokens_decoder.values() if token.special]


def control_ids(tokenizer) -> set[int]:
    return {token_id for token_id, token in tokenizer.added_tokens_decoder.items() if token.special}


def spelled(tokenizer) -> str:
    return "Use re.sub(" + " | ".join(special_texts(tokenizer)) + ") on [INST] <<SYS>> text"


def controls_of(tokenizer, ids: list[int]) -> list[int]:
    return [token_id for token_id in ids if token_id in control_ids(tokenizer)]


def test_plain_text_gets_the_ids_a_plain_call_gives(tokenizer):
    chat = chat_format(tokenizer)
    prompt = chat.rendered_prompt("How do I reverse a list?", "Be brief.", [("Hi?", "Hello.")])
    assert prompt_ids(tokenizer, prompt) == tokenizer(prompt.text)["input_ids"]
    completion = chat.rendered_completion("Use `items[::-1]`.")
    ids, start = answer_ids(tokenizer, prompt, completion)
    assert ids == [*tokenizer(prompt.text + completion.text)["input_ids"], tokenizer.eos_token_id]
    assert start == len(prompt_ids(tokenizer, prompt))


def test_a_curated_row_that_spells_every_special_token_has_one_bos_and_one_final_eos(tokenizer):
    chat = chat_format(tokenizer)
    text = spelled(tokenizer)
    settings = RowSettings("System " + text, False, chat)
    (row,) = prepare_batch([Example("alpaca", "1", "Q: " + text, "A: " + text)], settings).rows.to_pylist()
    prompt, completion = curated_row(row["prompt"], row["completion"], row["controls"])
    ids, start = answer_ids(tokenizer, prompt, completion)
    # Only the format's own controls: the tokenizer's BOS, the template's headers, the closing EOS.
    neutral = answer_ids(tokenizer, chat.rendered_prompt("Q", "System") + chat.rendered_completion("A"), "")[
        0
    ]
    assert controls_of(tokenizer, ids) == controls_of(tokenizer, neutral)
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    # One EOS, the last; a template that closes every turn with it (Llama-3's <|eot_id|>) has those too.
    assert ids[-1] == tokenizer.eos_token_id
    assert ids.count(tokenizer.eos_token_id) == (
        1 if chat.name == "llama2" else neutral.count(tokenizer.eos_token_id)
    )
    assert start < len(ids) - 1
    answer = tokenizer.decode(ids[start:-1], skip_special_tokens=False)
    assert answer.strip() == "A: " + text  # the literal text survives the round trip


def test_a_prompt_that_spells_them_reaches_the_model_as_text(tokenizer):
    chat = chat_format(tokenizer)
    text = spelled(tokenizer)
    ids = prompt_ids(tokenizer, chat.rendered_prompt(text))
    assert controls_of(tokenizer, ids) == controls_of(
        tokenizer, prompt_ids(tokenizer, chat.rendered_prompt("x"))
    )
    assert text in tokenizer.decode(ids, skip_special_tokens=True)
    # A chat's history: each closed turn's EOS and the next BOS are the format's, the turns' text is text.
    history = [(text, text)]
    with_history = prompt_ids(tokenizer, chat.rendered_prompt(text, None, history))
    neutral = prompt_ids(tokenizer, chat.rendered_prompt("x", None, [("x", "x")]))
    assert controls_of(tokenizer, with_history) == controls_of(tokenizer, neutral)


def test_a_plain_string_is_text_only(tokenizer):
    """What a plain call gives for such text: control ids (the problem), and what the encoder gives: none."""
    text = spelled(tokenizer)
    assert len(controls_of(tokenizer, tokenizer(text, add_special_tokens=False)["input_ids"])) > 1
    assert controls_of(tokenizer, encode(tokenizer, text, add_special_tokens=False)) == []
    assert encode(tokenizer, Rendered(text)) == encode(tokenizer, text)


@pytest.mark.e2e
def test_the_trainer_gets_the_text_as_text(curated, tmp_path):
    """The whole path on the smoke run: the curated rows through training's tokenization and TRL's own
    preparation and collator (what make inspect shows)."""
    from datasets import Dataset, DatasetDict

    from core.model import base_tokenizer
    from core.patches import sft_collator, sft_training_rows
    from fine_tune.train import sft_config, tokenized_rows

    config = smoke_config(curated, "train.packing=false")
    tokenizer = base_tokenizer(config)
    text = spelled(tokenizer)
    chat = chat_format(tokenizer)
    settings = RowSettings(config.data.system_prompt, False, chat)
    rows = prepare_batch([Example("alpaca", "1", text, text)], settings).rows.to_pylist()
    dataset = tokenized_rows(DatasetDict({"train": Dataset.from_list(rows)}), tokenizer)
    args = sft_config(config, tmp_path)
    (example,) = list(sft_training_rows(dataset["train"], tokenizer, args))
    batch = sft_collator(tokenizer, args)([example])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    assert controls_of(tokenizer, ids) == [tokenizer.bos_token_id, tokenizer.eos_token_id]
    assert ids[-1] == tokenizer.eos_token_id and labels[-1] == tokenizer.eos_token_id
