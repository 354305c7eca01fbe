"""Curation: sources to Llama-2 prompt/completion examples, filtered, deduplicated, split by question."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from core.config import Config
from core.errors import UserError
from core.prompts import render_completion, render_prompt
from data_prep import alpaca, stackoverflow
from data_prep.html import html_to_markdown

T = TypeVar("T")


@dataclass
class Example:
    source: str
    source_id: str
    user: str
    answer: str
    question_score: int | None = None
    answer_score: int | None = None


@dataclass
class CurationStats:
    read: dict[str, Any] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=Counter)
    kept_by_source: dict[str, int] = field(default_factory=dict)
    train_rows: int = 0
    validation_rows: int = 0
    token_lengths: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def stackoverflow_examples(config: Config, stats: CurationStats) -> list[Example]:
    source = config.data.stackoverflow
    read = stackoverflow.ReadStats()
    examples = [
        Example(
            source="stackoverflow",
            source_id=str(pair.question_id),
            user=f"{pair.title}\n\n{html_to_markdown(pair.question_html)}".strip(),
            answer=html_to_markdown(pair.answer_html),
            question_score=pair.question_score,
            answer_score=pair.answer_score,
        )
        for pair in stackoverflow.read_pairs(source, read)
    ]
    stats.read["stackoverflow"] = asdict(read)
    return examples


def alpaca_examples(config: Config, stats: CurationStats) -> list[Example]:
    read = alpaca.AlpacaStats()
    examples = [
        Example(source="alpaca", source_id=str(position), user=user, answer=answer)
        for position, user, answer in alpaca.read_examples(config.data.alpaca.path, read)
    ]
    stats.read["alpaca"] = asdict(read)
    return examples


def normalized_question(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def apply_rule(rows: list[T], rule: str, keep: Callable[[T], bool], stats: CurationStats) -> list[T]:
    """Filter by `keep`, count what the rule removed, and fail naming the rule if nothing is left."""
    kept = [row for row in rows if keep(row)]
    stats.dropped[rule] += len(rows) - len(kept)
    if rows and not kept:
        raise UserError(f"no examples left after the rule '{rule}' removed all {len(rows)}")
    return kept


def first_occurrence_of_question() -> Callable[[Example], bool]:
    seen: set[str] = set()

    def keep(example: Example) -> bool:
        key = normalized_question(example.user)
        if key in seen:
            return False
        seen.add(key)
        return True

    return keep


def render(example: Example, system_prompt: str | None) -> dict[str, Any]:
    return {
        "prompt": render_prompt(example.user, system_prompt),
        "completion": render_completion(example.answer),
        "source": example.source,
        "source_id": example.source_id,
        "question_score": example.question_score,
        "answer_score": example.answer_score,
    }


def token_length(tokenizer, row: dict[str, Any]) -> int:
    """Tokens of the training sequence: BOS, prompt, completion and EOS."""
    return len(tokenizer(row["prompt"] + row["completion"])["input_ids"]) + 1


def percentiles(values: list[int]) -> dict[str, int]:
    ordered = sorted(values)
    return {f"p{q}": ordered[min(len(ordered) - 1, len(ordered) * q // 100)] for q in (50, 90, 99, 100)}


def curate(config: Config, tokenizer) -> tuple[list[dict], list[dict], CurationStats]:
    """The train and validation rows, and what each rule did."""
    stats = CurationStats()
    rng = random.Random(config.run.seed)
    readers = {"stackoverflow": stackoverflow_examples, "alpaca": alpaca_examples}
    settings = {"stackoverflow": config.data.stackoverflow, "alpaca": config.data.alpaca}
    examples: list[Example] = []
    for source, reader in readers.items():
        if settings[source] is not None:
            read = reader(config, stats)
            if not read:
                raise UserError(f"the {source} source gave no usable examples: {stats.read[source]}")
            examples.extend(read)

    examples = apply_rule(examples, "empty question or answer", lambda e: bool(e.user and e.answer), stats)
    examples = apply_rule(examples, "duplicate question", first_occurrence_of_question(), stats)
    rows = [render(example, config.data.system_prompt) for example in examples]
    for row in rows:
        row["num_tokens"] = token_length(tokenizer, row)
    if config.data.too_long == "drop":
        fits = config.train.max_length
        rows = apply_rule(rows, "longer than train.max_length", lambda row: row["num_tokens"] <= fits, stats)

    limited = []
    for source, source_settings in settings.items():
        source_rows = [row for row in rows if row["source"] == source]
        if source_settings is not None and source_settings.limit and len(source_rows) > source_settings.limit:
            source_rows = rng.sample(source_rows, source_settings.limit)
        stats.kept_by_source[source] = len(source_rows)
        limited.extend(source_rows)
    if len(limited) < 2:
        raise UserError(f"only {len(limited)} example(s) left after curation: need at least 2 to split")

    rng.shuffle(limited)
    validation_size = config.data.validation_size
    ceiling = max(1, len(limited) // 5)
    if validation_size > ceiling:
        stats.warnings.append(
            f"data.validation_size {validation_size} is more than a fifth of the {len(limited)} examples: "
            f"using {ceiling}"
        )
        validation_size = ceiling
    validation, train = limited[:validation_size], limited[validation_size:]
    stats.train_rows, stats.validation_rows = len(train), len(validation)
    stats.token_lengths = percentiles([row["num_tokens"] for row in limited])
    stats.dropped = dict(stats.dropped)
    return train, validation, stats
