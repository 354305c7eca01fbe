"""Generating answers: the decoding settings, batched generation (left padding, KV cache) and the answer.

The decoding settings come from `inference.*` and are described in words for reports and closing lines.
Every way of generating here (batched, streamed, and a function's continuation for `make eval`) takes the
answer as the ids before the first EOS: up_to_eos is that rule. The model and its tokenizer come from
inference/loading.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from core.config import InferenceConfig
from core.model import prompt_ids
from core.prompts import Rendered


def decoding_settings(settings: InferenceConfig) -> dict[str, Any]:
    """Every setting that decides the answers: max_new_tokens, do_sample and repetition_penalty, and when
    sampling, temperature, top_p and seed."""
    names = {"max_new_tokens", "do_sample", "repetition_penalty"}
    if settings.do_sample:
        names |= {"temperature", "top_p", "seed"}
    return settings.model_dump(include=names)


def describe_decoding(decoding: dict[str, Any]) -> str:
    """The decoding settings in words, for reports and closing lines."""
    mode = "greedy (do_sample false)"
    if decoding["do_sample"]:
        mode = f"sampling (do_sample true, temperature {decoding['temperature']}, top_p {decoding['top_p']}, "
        mode += f"seed {decoding['seed']})"
    return (
        f"{mode}, repetition_penalty {decoding['repetition_penalty']}, "
        f"max_new_tokens {decoding['max_new_tokens']}"
    )


def decoding_options(settings: InferenceConfig, tokenizer) -> dict[str, Any]:
    """The `generate` keyword arguments for the configured decoding: greedy unless `do_sample`.

    `max_new_tokens` counts the answer only, never the prompt. Every way of generating here (batched,
    streamed, and the benchmark's pipeline baseline) decodes with exactly these options.
    """
    options = decoding_settings(settings)
    options.pop("seed", None)  # set once before generating, not an option of `generate`
    options.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, use_cache=True)
    return options


@dataclass
class Answer:
    text: str
    new_tokens: int
    stopped: bool  # ended with EOS before the token limit


def up_to_eos(tokenizer, new_tokens: list[int]) -> tuple[list[int], bool]:
    """The generated ids before the first EOS, and whether there was one (the answer ended before the token
    limit). What follows EOS is not the answer: in a batch, the pads of a row that ended before the others."""
    eos = tokenizer.eos_token_id
    if eos in new_tokens:
        return new_tokens[: new_tokens.index(eos)], True
    return new_tokens, False


def answer_from_tokens(tokenizer, new_tokens: list[int]) -> Answer:
    """The answer in the generated ids: up to the first EOS, decoded without special tokens."""
    tokens, stopped = up_to_eos(tokenizer, new_tokens)
    return Answer(tokenizer.decode(tokens, skip_special_tokens=True).strip(), len(tokens), stopped)


@torch.no_grad()
def generate_ids(
    model,
    tokenizer,
    prompts: Sequence[Rendered | str],
    settings: InferenceConfig,
    streamer: Any = None,
    progress: Callable[[int, int], None] | None = None,
    stop_strings: Sequence[str] = (),
) -> list[tuple[list[int], list[int]]]:
    """Each rendered prompt's ids and the ids generated after them, batched; in the prompts' order.

    Prompts are batched by length so that little padding is computed. A `streamer` (which transformers
    allows only for a batch of one) receives the tokens as they come; `progress` is called after each
    batch with the number of prompts answered and the total; a row also ends at any of `stop_strings`.
    """
    if settings.do_sample:
        from transformers import set_seed

        set_seed(settings.seed)
    options = decoding_options(settings, tokenizer)
    if stop_strings:
        options.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
    encoded = [prompt_ids(tokenizer, prompt) for prompt in prompts]
    order = sorted(range(len(prompts)), key=lambda index: len(encoded[index]))
    generated: dict[int, list[int]] = {}
    for start in range(0, len(order), settings.batch_size):
        indices = order[start : start + settings.batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in indices]}, return_tensors="pt")
        batch = batch.to(model.device)
        output = model.generate(**batch, streamer=streamer, **options)
        for index, row in zip(indices, output[:, batch["input_ids"].shape[1] :].tolist(), strict=True):
            generated[index] = row
        if progress is not None:
            progress(len(generated), len(prompts))
    return [(encoded[index], generated[index]) for index in range(len(prompts))]


def generate(
    model,
    tokenizer,
    prompts: Sequence[Rendered | str],
    settings: InferenceConfig,
    streamer: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Answer]:
    """Answer rendered prompts in batches (see generate_ids); only the answer is returned, not the prompt."""
    rows = generate_ids(model, tokenizer, prompts, settings, streamer, progress)
    return [answer_from_tokens(tokenizer, new_tokens) for _, new_tokens in rows]


def continuation(tokenizer, prompt_ids: list[int], new_tokens: list[int]) -> Answer:
    """The generated text exactly as it continues the prompt, its leading spaces kept (the indentation of a
    function body), up to the first EOS.

    The text is the decoded prompt + continuation minus the decoded prompt: decoding the new ids alone
    would drop the space a Llama tokenizer's first piece opens with.
    """
    tokens, stopped = up_to_eos(tokenizer, new_tokens)
    # A row that ended at a stop string has no EOS, and is padded to the batch's longest row.
    tokens = [token for token in tokens if token != tokenizer.pad_token_id]
    head = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    whole = tokenizer.decode(prompt_ids + tokens, skip_special_tokens=True)
    text = (
        whole[len(head) :] if whole.startswith(head) else tokenizer.decode(tokens, skip_special_tokens=True)
    )
    return Answer(text, len(tokens), stopped)


def stream_answer(model, tokenizer, prompt: Rendered | str, settings: InferenceConfig) -> Answer:
    """Answer one rendered prompt, printing the answer to stdout as it is generated."""
    (answer,) = generate(model, tokenizer, [prompt], settings, streamer=AnswerStreamer(tokenizer))
    return answer


class AnswerStreamer:
    """Prints the answer to stdout as `generate` produces it (a transformers streamer: `put`, `end`).

    It decodes all the answer's tokens so far and prints what is new, rather than decoding pieces the
    way transformers' TextStreamer does, which drops the space that opens a piece: the indentation of
    a code line would come out one space short.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.printed = 0
        self.prompt_done = False

    def _text(self) -> str:
        tokens, _ = up_to_eos(self.tokenizer, self.tokens)
        return self.tokenizer.decode(tokens, skip_special_tokens=True).lstrip()

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_done:  # generate passes the prompt first
            self.prompt_done = True
            return
        self.tokens += value.flatten().tolist()
        text = self._text()
        if not text.endswith("\ufffd"):  # else wait: a character's bytes are still coming
            print(text[self.printed :], end="", flush=True)
            self.printed = len(text)

    def end(self) -> None:
        print(self._text()[self.printed :], flush=True)
        self.tokens, self.printed, self.prompt_done = [], 0, False
