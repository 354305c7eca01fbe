"""The numbers of `make compare`, as pure functions: loss on the answer tokens, stop rate, fenced Python
code where the reference has some and code that parses, ROUGE-L against the reference, answer length and
speed."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import torch

from core.model import training_ids_batch
from core.prompts import Rendered, TrainingRow, as_rendered
from core.syntax import parses
from inference.generate import Answer

# A fence opens with 3+ backticks or tildes (at most 3 spaces in) and an optional language; it closes
# with a line of the same character, at least as long (CommonMark).
FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\s]*)[^`]*$")
PYTHON_LANGUAGES = {"", "python", "py", "python3", "py3"}  # untagged blocks count: the data is Python


def completion_labels(
    tokenizer,
    prompt: Rendered | str,
    completion: Rendered | str,
    earlier_answers: Sequence[tuple[int, int]] = (),
) -> tuple[list[int], list[int]]:
    """Token ids of BOS + prompt + completion + EOS, and labels that keep only what training puts in the loss:
    the completion and EOS, and a conversation's earlier answers with their closing tokens."""
    row = TrainingRow(as_rendered(prompt), as_rendered(completion), tuple(earlier_answers))
    ((input_ids, mask),) = training_ids_batch(tokenizer, [row])
    return input_ids, [token if kept else -100 for token, kept in zip(input_ids, mask, strict=True)]


def summed_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Teacher-forced cross-entropy summed over the labelled tokens (label -100: not counted), and their
    count. The logits at position i predict the label at position i + 1."""
    shifted_logits, shifted_labels = logits[:, :-1].float(), labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)), shifted_labels.reshape(-1), reduction="sum"
    )
    return loss.item(), int((shifted_labels != -100).sum())


@dataclass(frozen=True)
class Segment:
    kind: str  # "text" or "code"
    text: str
    language: str = ""  # a code block's info string, lowercased
    closed: bool = True  # False: the text ended inside the code block


def split_fenced(text: str) -> list[Segment]:
    """The text cut into prose and fenced code blocks, in order; a block left open runs to the end."""
    segments: list[Segment] = []
    prose: list[str] = []
    code: list[str] = []
    fence = language = None
    for line in text.split("\n"):
        if fence is None:
            opening = FENCE.match(line)
            if opening is None:
                prose.append(line)
                continue
            if prose:
                segments.append(Segment("text", "\n".join(prose)))
                prose = []
            fence, language, code = opening["fence"], opening["info"].lower(), []
        elif line.strip() and set(line.strip()) == {fence[0]} and len(line.strip()) >= len(fence):
            segments.append(Segment("code", "\n".join(code), language))
            fence = None
        else:
            code.append(line)
    if fence is not None:
        segments.append(Segment("code", "\n".join(code), language, closed=False))
    elif prose:
        segments.append(Segment("text", "\n".join(prose)))
    return segments


def python_blocks(text: str) -> list[str]:
    """The fenced code blocks of `text` that are Python: tagged python/py, or untagged."""
    return [s.text for s in split_fenced(text) if s.kind == "code" and s.language in PYTHON_LANGUAGES]


def code_parse_counts(texts: Sequence[str]) -> tuple[int, int]:
    """(blocks that parse, Python blocks) over all the texts."""
    blocks = [block for text in texts for block in python_blocks(text)]
    return sum(parses(block) for block in blocks), len(blocks)


@cache
def _rouge_scorer():
    from rouge_score import rouge_scorer, tokenizers

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=tokenizers.DefaultTokenizer(use_stemmer=False))


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of lowercased words), 0 to 1."""
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


def code_when_expected(answers: Sequence[str], references: Sequence[str | None]) -> float | None:
    """The fraction of answers with a Python code block among those whose reference has one; None when no
    reference has one."""
    expected = [
        bool(python_blocks(answer))
        for answer, reference in zip(answers, references, strict=True)
        if reference is not None and python_blocks(reference)
    ]
    return round(sum(expected) / len(expected), 3) if expected else None


def summarize(
    loss: float,
    answers: Sequence[Answer],
    references: Sequence[str | None],
    rouge_scores: Sequence[float | None],
    seconds: float,
) -> dict[str, float | int | None]:
    """One model's row of the summary. `loss` is the mean teacher-forced loss per answer token;
    `references` and `rouge_scores` have one entry per answer, None where there is no reference (left out
    of the means); the parse rate is None when the answers hold no Python code block. An answer that is
    EOS at once (or only spaces) is counted as empty, not as one that stopped: a model that has learnt
    little can put EOS first."""
    scored = [score for score in rouge_scores if score is not None]
    parsed, blocks = code_parse_counts([answer.text for answer in answers])
    new_tokens = sum(answer.new_tokens for answer in answers)
    count = len(answers)
    return {
        "validation_loss": round(loss, 4),
        "perplexity": round(math.exp(loss), 2),
        "stop_rate": round(
            sum(answer.stopped and bool(answer.text.strip()) for answer in answers) / count, 3
        ),
        "empty_answers": round(sum(not answer.text.strip() for answer in answers) / count, 3),
        "code_when_expected": code_when_expected([answer.text for answer in answers], references),
        "code_blocks": blocks,
        "code_parse_rate": round(parsed / blocks, 3) if blocks else None,
        "rouge_l": round(sum(scored) / len(scored), 4) if scored else None,
        "mean_answer_tokens": round(new_tokens / count, 1),
        "tokens_per_second": round(new_tokens / seconds, 1) if seconds > 0 else None,
    }
