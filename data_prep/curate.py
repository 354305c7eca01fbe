"""Curation: the configured sources to Llama-2 prompt/completion rows, filtered, deduplicated and split.

The sources stream through in batches. Worker processes (`data.num_proc`, default every core) convert
the HTML, render the prompt, check the one-row rules and count tokens (data_prep/rows.py); this process
applies the rules in order and appends the rows it keeps to an Arrow file, holding on to nothing but
their sources, token counts and question digests. Then each source is sampled down to its limit, the
rows are shuffled with the run's seed, and the first `data.validation_size` become the validation split.

No question is in both splits: a question is one row (its best answer), and repeats of a question are
dropped before the split, so each question's row lands in exactly one of them.
"""

from __future__ import annotations

import multiprocessing
import os
import random
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any

import pyarrow as pa

from core.config import Config
from core.errors import UserError
from data_prep import alpaca, stackoverflow
from data_prep.rows import (
    EMPTY,
    NO_CODE_BLOCK,
    ROW_SCHEMA,
    Example,
    PreparedBatch,
    RowSettings,
    TokenCounter,
    prepare_batch,
)

TOO_LONG = "longer than train.max_length"
DUPLICATE = "duplicate question"
BATCH_SIZE = 256
TOKEN_SAMPLE = 2000  # rows whose tokens are counted for the statistics when no rule needs every count


@dataclass
class CurationStats:
    read: dict[str, Any] = field(default_factory=dict)
    examples: dict[str, int] = field(default_factory=dict)
    rules: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    kept_by_source: dict[str, int] = field(default_factory=dict)
    train_rows: int = 0
    validation_rows: int = 0
    token_lengths: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def active_rules(config: Config) -> list[str]:
    """The rules in the order they apply; each row is counted against the first one it breaks."""
    rules = [EMPTY]
    if config.data.require_code_block:
        rules.append(NO_CODE_BLOCK)
    if config.data.too_long == "drop":
        rules.append(TOO_LONG)
    return [*rules, DUPLICATE]


def source_examples(config: Config, stats: CurationStats) -> Iterator[Example]:
    """Every configured source's examples, Stack Overflow first. Stack Overflow's Answers.csv and the
    Alpaca file are read here and now, so that a bad file fails at once; Questions.csv streams as the
    iterator is consumed. Reading statistics go into `stats`."""
    streams: list[Iterable[Example]] = []
    if config.data.stackoverflow is not None:
        read = stats.read["stackoverflow"] = stackoverflow.ReadStats()
        stats.examples["stackoverflow"] = 0
        pairs = stackoverflow.read_pairs(config.data.stackoverflow, read)
        streams.append(_stackoverflow_examples(pairs, stats))
    if config.data.alpaca is not None:
        read = stats.read["alpaca"] = alpaca.AlpacaStats()
        records = alpaca.read_examples(config.data.alpaca.path, read)
        stats.examples["alpaca"] = len(records)
        streams.append(
            Example(source="alpaca", source_id=str(position), question=user, answer=answer)
            for position, user, answer in records
        )
    return chain.from_iterable(streams)


def _stackoverflow_examples(pairs: Iterator[stackoverflow.Pair], stats: CurationStats) -> Iterator[Example]:
    for pair in pairs:
        stats.examples["stackoverflow"] += 1
        yield Example(
            source="stackoverflow",
            source_id=str(pair.question_id),
            question=pair.question_html,
            answer=pair.answer_html,
            title=pair.title,
            html=True,
            question_score=pair.question_score,
            answer_score=pair.answer_score,
        )


def batched(items: Iterable[Example], size: int) -> Iterator[list[Example]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


# What a worker process holds: set once by the pool's initializer (or in this process when num_proc is 1).
_settings: RowSettings | None = None
_count_tokens: TokenCounter | None = None


def _start_worker(settings: RowSettings, count_tokens: TokenCounter) -> None:
    global _settings, _count_tokens
    _settings, _count_tokens = settings, count_tokens


def _prepare(batch: list[Example]) -> PreparedBatch:
    return prepare_batch(batch, _settings, _count_tokens)


def _count(texts: list[str]) -> list[int]:
    return _count_tokens(texts)


@contextmanager
def workers(settings: RowSettings, count_tokens: TokenCounter, num_proc: int) -> Iterator[Callable]:
    """An ordered, lazy `imap(function, items)` over `num_proc` worker processes holding the settings and
    the tokenizer. They are spawned, not forked: each holds lxml, pyarrow and the tokenizer, not this
    process's memory; they start while this process reads Answers.csv."""
    if num_proc == 1:
        _start_worker(settings, count_tokens)
        yield map
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(num_proc, initializer=_start_worker, initargs=(settings, count_tokens)) as pool:
        yield pool.imap


def filter_rows(
    config: Config, imap: Callable, rows_file: Path, stats: CurationStats
) -> tuple[list[str], list[int]]:
    """Stream every example through the rules into `rows_file`. Returns the kept rows' sources and
    their token counts (None where no rule needed them)."""
    drop_long = TOO_LONG in stats.rules
    seen: set[bytes] = set()
    sources: list[str] = []
    num_tokens: list[int] = []
    batches = imap(_prepare, batched(source_examples(config, stats), BATCH_SIZE))
    with pa.OSFile(str(rows_file), "wb") as sink, pa.ipc.new_stream(sink, ROW_SCHEMA) as writer:
        for batch in batches:
            keep = []
            for rule, key, tokens in zip(
                batch.failed_rules, batch.question_keys, batch.num_tokens, strict=True
            ):
                if rule is None and drop_long and tokens > config.train.max_length:
                    rule = TOO_LONG
                if rule is None and key in seen:
                    rule = DUPLICATE
                if rule is None:
                    seen.add(key)
                    num_tokens.append(tokens)
                else:
                    stats.dropped[rule] += 1
                keep.append(rule is None)
            kept = batch.rows.filter(pa.array(keep, pa.bool_()))
            sources += kept.column("source").to_pylist()
            writer.write_batch(kept)
    return sources, num_tokens


def check_nothing_emptied(stats: CurationStats) -> None:
    """Fail naming the source or the rule that left nothing."""
    for source, count in stats.examples.items():
        if count == 0:
            raise UserError(f"the {source} source gave no usable examples: {asdict(stats.read[source])}")
    remaining = sum(stats.examples.values())
    for rule in stats.rules:
        if remaining and stats.dropped[rule] == remaining:
            raise UserError(f"no examples left after the rule '{rule}' removed all {remaining}")
        remaining -= stats.dropped[rule]


def sample_and_split(config: Config, sources: list[str], stats: CurationStats) -> list[int]:
    """Row indices, each source sampled down to its limit, shuffled with the run's seed; the first
    `stats.validation_rows` of them are the validation split."""
    rng = random.Random(config.run.seed)
    limits = {"stackoverflow": config.data.stackoverflow, "alpaca": config.data.alpaca}
    chosen: list[int] = []
    for source in stats.examples:
        indices = [index for index, name in enumerate(sources) if name == source]
        limit = limits[source].limit
        if limit and len(indices) > limit:
            indices = rng.sample(indices, limit)
        stats.kept_by_source[source] = len(indices)
        chosen.extend(indices)
    if len(chosen) < 2:
        raise UserError(f"only {len(chosen)} example(s) left after curation: need at least 2 to split")
    rng.shuffle(chosen)
    stats.validation_rows = config.data.validation_size
    ceiling = max(1, len(chosen) // 5)
    if stats.validation_rows > ceiling:
        stats.warnings.append(
            f"data.validation_size {stats.validation_rows} is more than a fifth of the {len(chosen)} "
            f"examples: using {ceiling}"
        )
        stats.validation_rows = ceiling
    stats.train_rows = len(chosen) - stats.validation_rows
    return chosen


def token_lengths(lengths: list[int], rows: int, max_length: int) -> dict[str, int]:
    """Percentiles of `lengths`, counted on `len(lengths)` of the `rows` kept rows."""
    ordered = sorted(lengths)
    at = {f"p{q}": ordered[min(len(ordered) - 1, len(ordered) * q // 100)] for q in (50, 90, 99)}
    over = sum(length > max_length for length in ordered)
    return {"counted_rows": len(ordered), "of_rows": rows, **at, "max": ordered[-1], "over_max_length": over}


def read_texts(rows_file: Path, indices: list[int]) -> list[str]:
    """prompt + completion of the rows at `indices`, in one pass over the file, one batch in memory at a
    time (Arrow's take across the file's many batches would first copy whole columns)."""
    texts: dict[int, str] = {}
    wanted = sorted(indices)
    start = 0
    with pa.OSFile(str(rows_file)) as source:
        for batch in pa.ipc.open_stream(source):
            first, last = bisect_left(wanted, start), bisect_left(wanted, start + batch.num_rows)
            local = [index - start for index in wanted[first:last]]
            picked = batch.select(["prompt", "completion"]).take(pa.array(local, pa.int64())).to_pydict()
            for index, prompt, completion in zip(wanted[first:last], *picked.values(), strict=True):
                texts[index] = prompt + completion
            start += batch.num_rows
    return [texts[index] for index in indices]


def measured_lengths(
    rows_file: Path, chosen: list[int], num_tokens: list, settings: RowSettings, imap: Callable
) -> list[int]:
    """Token counts for the statistics: every kept row's when the length rule counted them, else those of
    a seeded sample (the first rows of the shuffled order), counted now by the workers."""
    if settings.count_tokens:
        return [num_tokens[index] for index in chosen]
    texts = read_texts(rows_file, chosen[:TOKEN_SAMPLE])
    chunks = [texts[start : start + BATCH_SIZE] for start in range(0, len(texts), BATCH_SIZE)]
    return [count for counts in imap(_count, chunks) for count in counts]


def curate(config: Config, count_tokens: TokenCounter, folder: Path) -> CurationStats:
    """Write the DatasetDict (train, validation) to `folder / "data"`; return what each rule did."""
    from datasets import Dataset, DatasetDict

    stats = CurationStats(rules=active_rules(config))
    stats.dropped = dict.fromkeys(stats.rules, 0)
    settings = RowSettings(config.data.system_prompt, config.data.require_code_block, TOO_LONG in stats.rules)
    num_proc = config.data.num_proc or len(os.sched_getaffinity(0))
    rows_file = folder / "rows.arrow"
    with workers(settings, count_tokens, num_proc) as imap:
        sources, num_tokens = filter_rows(config, imap, rows_file, stats)
        check_nothing_emptied(stats)
        chosen = sample_and_split(config, sources, stats)
        lengths = measured_lengths(rows_file, chosen, num_tokens, settings, imap)
    stats.token_lengths = token_lengths(lengths, len(chosen), config.train.max_length)
    stats.read = {source: asdict(read) for source, read in stats.read.items()}

    rows = Dataset.from_file(str(rows_file))
    validation, train = chosen[: stats.validation_rows], chosen[stats.validation_rows :]
    DatasetDict({"train": rows.select(train), "validation": rows.select(validation)}).save_to_disk(
        str(folder / "data")
    )
    rows_file.unlink()
    return stats
