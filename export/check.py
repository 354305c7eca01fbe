"""The export's check: the GGUF files against the merged model they came from, through llama.cpp itself.

- tokenizer: the GGUF's tokenizer gives our ids (BOS added, special tokens parsed) on every validation
  prompt and prompt + answer, and on a chat with closed turns; same BOS and EOS ids.
- chat template: the template embedded in the GGUF, rendered as llama-cpp-python renders it, gives
  exactly the prompt of the run's chat format (core/prompts.py; with the BOS text in front) for chats
  with and without a system prompt and with history; its stop is our EOS.
- 16-bit: on the compare prompts (the first `inference.compare_examples` validation rows), llama.cpp's
  greedy answers equal transformers' greedy answers from the merged model, or else its logits, teacher-
  forced on transformers' answers, are within TOLERANCE of transformers' logits.
- 8-bit and 4-bit: how often their greedy token (teacher-forced on the validation answers) is the 16-bit
  file's, their greedy answers identical to its, and the perplexity of each file (and of the merged model
  in transformers) on those answers and their EOS.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.config import Config
from core.model import answer_ids, chat_format, device_map, load_causal_lm
from core.patches import llama_cpp_without_amx
from core.prompts import ChatFormat, PlainTextFormat, Rendered, curated_row

log = logging.getLogger(__name__)

# Largest |logit difference| allowed between llama.cpp on the 16-bit file and the merged model in
# transformers (float32 on a CPU). llama.cpp rounds each matrix product's input to the weights' type, so the
# difference is at that type's precision: bf16 keeps 8 bits of mantissa, f16 11.
TOLERANCE = {"F16": 0.05, "BF16": 0.25}
# One step of a model under this many parameters is too little work to share between threads: on two busy
# cores, 256 greedy tokens of the embedded base took 25.7 s with two threads against 1.5 s with one in
# transformers, 0.89 s against 0.28 s in llama.cpp. Bigger models decode on every core.
SMALL_MODEL_PARAMETERS = 100_000_000
CHAT_QUESTIONS = ("How do I reverse a list in Python?", "And a string?")
CHAT_ANSWER = "Use `items[::-1]`, or `reversed(items)` for an iterator."


@dataclass(frozen=True)
class Example:
    ids: list[int]  # BOS + prompt + completion + EOS, as training saw it
    start: int  # where the answer starts: ids[:start] is BOS + prompt

    @property
    def prompt(self) -> list[int]:
        return self.ids[: self.start]


def example(tokenizer, prompt: Rendered | str, completion: Rendered | str) -> Example:
    return Example(*answer_ids(tokenizer, prompt, completion))


def answer_nll(logits: np.ndarray, ids: Sequence[int], start: int) -> np.ndarray:
    """The negative log-likelihood of each answer token ids[start:], from logits[i] predicting ids[i + 1]."""
    predicting = logits[start - 1 : len(ids) - 1].astype(np.float64)
    top = predicting.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(predicting - top).sum(axis=1))
    return log_norm - predicting[np.arange(len(predicting)), np.asarray(ids[start:])]


def perplexity(nlls: Sequence[np.ndarray]) -> float:
    return math.exp(float(np.concatenate(nlls).mean()))


def common_prefix(first: Sequence[int], second: Sequence[int]) -> int:
    length = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        length += 1
    return length


def first_difference(ours: Sequence[int], theirs: Sequence[int]) -> dict[str, Any]:
    at = common_prefix(ours, theirs)
    return {"position": at, "ours": list(ours[at : at + 5]), "gguf": list(theirs[at : at + 5])}


class GgufModel:
    """One GGUF file in llama.cpp (llama-cpp-python), with the logits of every position kept."""

    def __init__(self, path: Path, context: int, threads: int | None = None):
        from llama_cpp import Llama

        with llama_cpp_without_amx():
            self.llm = Llama(
                model_path=str(path), n_ctx=context, n_batch=context, n_ubatch=context, logits_all=True,
                n_threads=threads or os.cpu_count(), n_threads_batch=os.cpu_count(), verbose=False,
            )  # fmt: skip

    def close(self) -> None:
        self.llm.close()

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def token_text(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8")

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[: len(ids)])

    def greedy(self, prompt: Sequence[int], max_new: int, eos: int) -> list[int]:
        """The argmax token, step by step, until EOS or `max_new` tokens."""
        self.llm.reset()
        self.llm.eval(list(prompt))
        answer: list[int] = []
        while len(answer) < max_new:
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            answer.append(token)
            if token == eos:
                break
            self.llm.eval([token])
        return answer


def check_tokenizer(tokenizer, gguf: GgufModel, rows: list[dict], system: str | None) -> dict[str, Any]:
    """Our ids and the GGUF's on every validation prompt and prompt + answer, and on a chat."""
    texts = [text for row in rows for text in (row["prompt"], row["prompt"] + row["completion"])]
    chat = chat_format(tokenizer)
    if not isinstance(chat, PlainTextFormat):  # a model that continues text holds no chat
        texts.append(chat.prompt(CHAT_QUESTIONS[1], system, [(CHAT_QUESTIONS[0], CHAT_ANSWER)]))
    differences = []
    for text in texts:
        ours, theirs = tokenizer(text)["input_ids"], gguf.tokenize(text)
        if ours != theirs:
            differences.append({"text": text[:200], **first_difference(ours, theirs)})
    special = {
        "bos": [tokenizer.bos_token_id, gguf.llm.token_bos()],
        "eos": [tokenizer.eos_token_id, gguf.llm.token_eos()],
    }
    same_special = all(ours == theirs for ours, theirs in special.values())
    return {
        "texts": len(texts),
        "identical": len(texts) - len(differences),
        "special_token_ids": special,
        "first_difference": differences[0] if differences else None,
        "passed": not differences and same_special,
    }


def check_chat_template(gguf: GgufModel, chat: ChatFormat, system: str | None) -> dict[str, Any]:
    """The GGUF's embedded chat template, rendered as llama-cpp-python renders it, against our format."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = gguf.llm.metadata.get("tokenizer.chat_template")
    if template is None:
        return {"passed": False, "problem": "the GGUF has no tokenizer.chat_template"}
    bos, eos = gguf.token_text(gguf.llm.token_bos()), gguf.token_text(gguf.llm.token_eos())
    formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
    histories = ((),) if isinstance(chat, PlainTextFormat) else ((), ((CHAT_QUESTIONS[0], CHAT_ANSWER),))
    differences, stops = [], set()
    chats = [(system_prompt, turns) for system_prompt in (system, None) for turns in histories]
    for system_prompt, turns in chats:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        for question, answer in turns:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": CHAT_QUESTIONS[-1]})
        rendered = formatter(messages=messages)
        expected = bos + chat.prompt(CHAT_QUESTIONS[-1], system_prompt, turns)
        stops.update(rendered.stop if isinstance(rendered.stop, list) else [rendered.stop])
        if rendered.prompt != expected:
            differences.append({"expected": expected, "rendered": rendered.prompt})
    return {
        "chats": len(chats),
        "identical": len(chats) - len(differences),
        "stop": sorted(stops),
        "first_difference": differences[0] if differences else None,
        "passed": not differences and stops == {eos},
    }


@torch.no_grad()
def merged_logits(model, ids: Sequence[int]) -> np.ndarray:
    return model(torch.tensor([list(ids)], device=model.device)).logits[0].float().cpu().numpy()


@torch.no_grad()
def transformers_answers(model, examples: list[Example], limits: list[int], eos: int):
    """The merged model's greedy answers in transformers, and its logits on prompt + answer."""
    for item, limit in zip(examples, limits, strict=True):
        prompt = torch.tensor([item.prompt], device=model.device)
        output = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=limit,
            eos_token_id=eos, pad_token_id=eos, repetition_penalty=1.0,
        )  # fmt: skip
        answer = output[0, len(item.prompt) :].tolist()
        yield answer, merged_logits(model, item.prompt + answer)


def check_sixteen_bit(
    model, gguf: GgufModel, examples: list[Example], limits: list[int], eos: int, tolerance: float
) -> dict[str, Any]:
    """llama.cpp on the 16-bit file against transformers on the merged model, on the compare prompts."""
    identical, difference, compared = 0, 0.0, 0
    for item, limit, (answer, reference) in zip(
        examples, limits, transformers_answers(model, examples, limits, eos), strict=True
    ):
        identical += gguf.greedy(item.prompt, limit, eos) == answer
        positions = slice(len(item.prompt) - 1, len(item.prompt) + len(answer) - 1)
        delta = np.abs(gguf.logits(item.prompt + answer)[positions] - reference[positions])
        difference, compared = max(difference, float(delta.max())), compared + len(delta)
    return {
        "prompts": len(examples),
        "identical_greedy_answers": identical,
        "answer_tokens_compared": compared,
        "max_abs_logit_difference": round(difference, 5),
        "tolerance": tolerance,
        "passed": identical == len(examples) or difference <= tolerance,
    }


def file_numbers(gguf: GgufModel, examples: list[Example], limits: list[int], eos: int):
    """A file's logits on every validation example, and its greedy answers to their prompts."""
    logits = [gguf.logits(item.ids) for item in examples]
    answers = [gguf.greedy(item.prompt, limit, eos) for item, limit in zip(examples, limits, strict=True)]
    return logits, answers


def agreement(logits: list[np.ndarray], reference: list[np.ndarray], examples: list[Example]) -> float:
    """How often the argmax of `logits` is that of `reference` at the answer positions (teacher-forced)."""
    same = total = 0
    for scores, expected, item in zip(logits, reference, examples, strict=True):
        positions = slice(item.start - 1, len(item.ids) - 1)
        same += int((scores[positions].argmax(axis=1) == expected[positions].argmax(axis=1)).sum())
        total += len(item.ids) - item.start
    return same / total


def answers_perplexity(logits: list[np.ndarray], examples: list[Example]) -> float:
    return perplexity(
        [answer_nll(scores, item.ids, item.start) for scores, item in zip(logits, examples, strict=True)]
    )


def check_export(
    merged: Path, tokenizer, rows: list[dict], files: dict[str, Path], config: Config
) -> dict[str, Any]:
    """Every check of the module's docstring; `files` maps each kind (the 16-bit one first) to its file."""
    sixteen, *quantized = files
    compared = rows[: config.inference.compare_examples]
    examples = [
        example(tokenizer, *curated_row(row["prompt"], row["completion"], row.get("controls")))
        for row in compared
    ]
    model = load_causal_lm(merged, "auto", device_map())
    model.eval()
    threads = 1 if model.num_parameters() < SMALL_MODEL_PARAMETERS else os.cpu_count() or 1
    torch.set_num_threads(threads)
    trained_context = model.config.max_position_embeddings
    limits = [min(config.inference.max_new_tokens, trained_context - len(item.prompt)) for item in examples]
    context = min(trained_context, max(len(item.ids) + 1 for item in examples) + max(limits))
    eos = tokenizer.eos_token_id

    with closing(GgufModel(files[sixteen], context, threads)) as reference_file:
        report: dict[str, Any] = {
            "tokenizer": check_tokenizer(tokenizer, reference_file, rows, config.data.system_prompt),
            "chat_template": check_chat_template(
                reference_file, chat_format(tokenizer), config.data.system_prompt
            ),
            "sixteen_bit": {
                "file": files[sixteen].name,
                **check_sixteen_bit(model, reference_file, examples, limits, eos, TOLERANCE[sixteen]),
            },
        }
        transformers_logits = [merged_logits(model, item.ids) for item in examples]
        del model
        reference, reference_answers = file_numbers(reference_file, examples, limits, eos)
    report["perplexity"] = {
        "validation_examples": len(examples),
        "merged model (transformers)": round(answers_perplexity(transformers_logits, examples), 4),
        sixteen: round(answers_perplexity(reference, examples), 4),
    }
    report["quantized"] = {}
    for kind in quantized:
        with closing(GgufModel(files[kind], context, threads)) as gguf:
            logits, answers = file_numbers(gguf, examples, limits, eos)
        report["perplexity"][kind] = round(answers_perplexity(logits, examples), 4)
        report["quantized"][kind] = {
            "file": files[kind].name,
            "greedy_token_agreement_with_16_bit": round(agreement(logits, reference, examples), 4),
            "greedy_answers_identical_to_16_bit": sum(
                a == b for a, b in zip(answers, reference_answers, strict=True)
            ),
            "prompts": len(examples),
        }
    report["passed"] = all(report[name]["passed"] for name in ("tokenizer", "chat_template", "sixteen_bit"))
    return report
