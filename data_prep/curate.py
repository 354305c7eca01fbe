"""Curation: the configured sources to prompt/completion rows in the run's format, filtered, deduplicated
and split.

1. The sources stream through in batches. Worker processes (`data.num_proc`, default every core) convert
   the HTML, render the prompt (a conversation's every turn, cut after the last that fits
   train.max_length) and check the one-row rules (data_prep/rows.py); this process drops the rows they
   fail and the repeats of an example already kept, and appends the rest to an Arrow file, holding on to
   nothing but each row's source and digest.
2. Each source's rows are put in an order drawn from the run's seed. With the length rule, the workers
   count their tokens in that order and rows are kept while they fit, up to the source's limit, so that
   a limit of 20,000 counts about 20,000 rows, not every row; without it, the first `limit` are kept.
3. The kept rows are shuffled with the same seed and the first `data.validation_size` become the
   validation split. A question is one row (its best answer), and repeats of a question were dropped
   in step 1, so no question is in both splits.
"""

from __future__ import annotations

import importlib
import os
import random
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.config import Config
from core.errors import UserError
from core.prompts import ChatFormat, Rendered, without_system
from data_prep import alpaca, conversations, plain_text, stackoverflow
from data_prep.allocators import PiecewiseFile, tune_allocators
from data_prep.progress import Progress
from data_prep.row_workers import count, count_up_to, prepare, workers
from data_prep.rows import ROW_SCHEMA, Example, RowSettings, TokenCounter
from data_prep.rules import DUPLICATE, TOO_LONG, active_rules
from evaluation.contamination import CHUNK_ROWS, find_overlaps_in_chunks

BATCH_SIZE = 1024  # examples a worker prepares at once: 256 took 8% longer on the 100k bench (round trips)
COUNT_CHUNK = 4096  # rows counted per round while filling a source's limit
ROWS_FILE_BATCH = 8192  # rows per batch of the rows file, at least
TOKEN_SAMPLE = 2000  # rows whose tokens are counted for the statistics when the length rule is off


@dataclass
class CurationStats:
    read: dict[str, Any] = field(default_factory=dict)
    examples: dict[str, int] = field(default_factory=dict)
    rules: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    length_checked: int = 0  # rows the length rule measured: fewer than reached it when limits filled first
    kept_by_source: dict[str, int] = field(default_factory=dict)
    train_rows: int = 0
    validation_rows: int = 0
    token_lengths: dict[str, int] = field(default_factory=dict)
    special_token_text: int = 0  # rows whose text spells a special token (`</s>`, `<|eot_id|>`), kept as text
    turns_cut: int = 0  # later turns of conversations left out to fit train.max_length
    # validation rows that share a run of n-grams with a training row: validation_row, training_row, tokens
    overlaps: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def source_examples(config: Config, stats: CurationStats) -> Iterator[Example]:
    """Every configured source's examples, Stack Overflow first. Stack Overflow's Answers.csv and the other
    files are read here and now, so that a bad file fails at once; Questions.csv streams as the iterator
    is consumed. Reading statistics go into `stats`; a conversation or text source is named by its path."""
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
    for source in config.data.conversations:
        name = str(source.path)
        read = stats.read[name] = conversations.ConversationStats()
        allow_system = config.data.prompt_format != "firefly"
        records = conversations.read_conversations(source.path, source.format, read, allow_system)
        stats.examples[name] = len(records)
        streams.append(map(partial(conversation_example, name), records))
    for source in config.data.text:
        name = str(source.path)
        read = stats.read[name] = plain_text.TextStats()
        documents = plain_text.read_documents(source.path, read)
        stats.examples[name] = len(documents)
        streams.append(map(partial(document_example, name), documents))
    return chain.from_iterable(streams)


def conversation_example(source: str, record: conversations.Conversation) -> Example:
    """The conversation's last turn, with the turns before it as history."""
    (question, answer) = record.turns[-1]
    return Example(
        source, str(record.position), question, answer, history=record.turns[:-1], system=record.system
    )


def document_example(source: str, document: tuple[int, str]) -> Example:
    line, text = document
    return Example(source, str(line), question="", answer=text, plain_text=True)


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


def filter_rows(
    config: Config, imap: Callable, rows_file: Path, stats: CurationStats
) -> tuple[list[str], bytearray, array | None]:
    """Step 1: every example through the one-row rules and the duplicate rule into `rows_file`. Returns
    the source of each row written, whether its text spells a special token, and its tokens when the
    workers counted them (RowSettings.count_rows)."""
    seen: set[bytes] = set()
    sources: list[str] = []
    spelled = bytearray()
    counted: array | None = None
    batches = imap(prepare, batched(source_examples(config, stats), BATCH_SIZE))
    # `datasets` takes a second to import and is needed after this step: it loads now, while this
    # process mostly waits for the workers.
    threading.Thread(target=importlib.import_module, args=("datasets",), daemon=True).start()
    pending: list[pa.RecordBatch] = []
    sink = pa.PythonFile(PiecewiseFile(rows_file), mode="w")
    with sink, pa.ipc.new_stream(sink, ROW_SCHEMA) as writer:
        for batch in chain(batches, [None]):
            if batch is None or sum(map(len, pending)) >= ROWS_FILE_BATCH:
                # Few large batches: RowsFile gathers rows batch by batch
                writer.write_table(pa.Table.from_batches(pending, ROW_SCHEMA).combine_chunks())
                pending.clear()
            if batch is None:
                break
            stats.turns_cut += batch.turns_cut
            keep = []
            for rule, key in zip(batch.failed_rules, batch.question_keys, strict=True):
                if rule is None and key in seen:
                    rule = DUPLICATE
                if rule is None:
                    seen.add(key)
                else:
                    stats.dropped[rule] += 1
                keep.append(rule is None)
            kept = batch.rows if all(keep) else batch.rows.filter(pa.array(keep, pa.bool_()))  # most: all
            flags = zip(batch.spells_special, keep, strict=True)
            spelled += bytes(flag for flag, kept_row in flags if kept_row)
            if batch.tokens is not None:
                counted = array("l") if counted is None else counted
                counted.extend(count for count, kept_row in zip(batch.tokens, keep, strict=True) if kept_row)
            sources += kept.column("source").to_pylist()
            pending.append(kept)
    return sources, spelled, counted


class RowsFile:
    """The rows of step 1, read back by index through one memory map (a second map of the same file
    would count its pages twice in this process's memory). Rows are gathered by Arrow, not row by row."""

    def __init__(self, path: Path) -> None:
        from datasets import Dataset

        self.dataset = Dataset.from_file(str(path))
        self.batches = self.dataset.data.table.to_batches()
        self.starts = np.cumsum([0, *(len(batch) for batch in self.batches)])

    def rows(self, indices: Sequence[int] | np.ndarray) -> pa.Table:
        """The rows, in the order asked, in one chunk. Gathered batch by batch: Arrow's take on the whole
        file's table would first copy every batch of a column into one."""
        indices = np.asarray(indices, np.int64)
        if not len(indices):
            return ROW_SCHEMA.empty_table()
        order = np.argsort(indices, kind="stable")
        ordered = indices[order]
        number = np.searchsorted(self.starts, ordered, side="right") - 1
        first = np.flatnonzero(np.diff(number, prepend=-1))
        parts = [
            self.batches[number[start]].take(pa.array(ordered[start:end] - self.starts[number[start]]))
            for start, end in zip(first, [*first[1:], len(ordered)], strict=True)
        ]
        table = pa.Table.from_batches(parts, ROW_SCHEMA).combine_chunks()
        return table.take(pa.array(np.argsort(order)))

    def joined(self, indices: Sequence[int] | np.ndarray) -> tuple[pa.Array, pa.Table]:
        """prompt + completion of each row, as one Arrow array, and the rows' columns."""
        table = self.rows(indices)
        return pc.binary_join_element_wise(table["prompt"], table["completion"], ""), table

    def texts(self, indices: list[int]) -> list[Rendered]:
        """prompt + completion of each row, with its format's control tokens: what training encodes."""
        joined, table = self.joined(indices)
        return [
            Rendered(text, tuple(map(tuple, spans or ())))
            for text, spans in zip(joined.to_pylist(), table["controls"].to_pylist(), strict=True)
        ]


def count_tokens_of(
    rows: RowsFile, indices: list[int], imap: Callable, limit: int | None = None
) -> list[int]:
    """The rows' token counts, by the workers; with `limit`, exact up to it (TokenCounter.up_to)."""
    texts = rows.texts(indices)
    chunks = [texts[start : start + BATCH_SIZE] for start in range(0, len(texts), BATCH_SIZE)]
    function = count if limit is None else partial(count_up_to, limit)
    return [number for counts in imap(function, chunks) for number in counts]


def source_limits(config: Config) -> dict[str, int | None]:
    """Each source's `limit` (None: all of it), by its name in the statistics."""
    sources = {"stackoverflow": config.data.stackoverflow, "alpaca": config.data.alpaca}
    sources |= {str(source.path): source for source in [*config.data.conversations, *config.data.text]}
    return {name: source.limit for name, source in sources.items() if source is not None}


def choose_rows(
    config: Config,
    sources: list[str],
    rows: RowsFile,
    imap: Callable,
    stats: CurationStats,
    counted: array | None = None,
) -> tuple[list[int], list[int]]:
    """Step 2: each source's kept rows, in its seeded order, and the token counts the length rule measured
    for the rows it kept: counted by the workers now, or in step 1 (`counted`)."""
    rng = random.Random(config.run.seed)
    limits = source_limits(config)
    packed = {str(source.path) for source in config.data.text}  # longer documents are split, not dropped
    chosen: list[int] = []
    lengths: list[int] = []
    progress = Progress("counted the tokens of", "rows")
    for source in stats.examples:
        order = [index for index, name in enumerate(sources) if name == source]
        rng.shuffle(order)
        limit = limits[source] or len(order)
        if TOO_LONG not in stats.rules or source in packed:
            kept = order[:limit]
        else:
            kept = []
            for start in range(0, len(order), COUNT_CHUNK):
                chunk = order[start : start + COUNT_CHUNK]
                if counted is None:
                    counts = count_tokens_of(rows, chunk, imap, config.train.max_length)
                else:
                    counts = [counted[index] for index in chunk]
                for index, count in zip(chunk, counts, strict=True):
                    if len(kept) == limit:
                        break
                    stats.length_checked += 1
                    if count > config.train.max_length:
                        stats.dropped[TOO_LONG] += 1
                    else:
                        kept.append(index)
                        lengths.append(count)
                progress.add(len(chunk))
                if len(kept) == limit:
                    break
        stats.kept_by_source[source] = len(kept)
        chosen += kept
    return chosen, lengths


def check_nothing_emptied(stats: CurationStats) -> None:
    """Fail naming the source or the rule that left nothing."""
    for source, examples in stats.examples.items():
        if examples == 0:
            raise UserError(f"the {source} source gave no usable examples: {asdict(stats.read[source])}")
    remaining = sum(stats.examples.values())
    for rule in stats.rules:
        if remaining and stats.dropped[rule] == remaining:
            raise UserError(f"no examples left after the rule '{rule}' removed all {remaining}")
        remaining -= stats.dropped[rule]


def shuffle_and_split(config: Config, chosen: list[int], stats: CurationStats) -> list[int]:
    """Step 3: the kept rows shuffled with the run's seed; the first `stats.validation_rows` of them are
    the validation split."""
    if len(chosen) < 2:
        raise UserError(f"only {len(chosen)} example(s) left after curation: need at least 2 to split")
    chosen = chosen.copy()
    random.Random(config.run.seed).shuffle(chosen)
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


def note_overlaps(
    config: Config, rows: RowsFile, validation: list[int], train: list[int], stats: CurationStats
) -> None:
    """Validation rows that share a run of `eval.ngram` normalized tokens with a training row (system prompt
    aside): their loss says little about generalization. Listed in the stats and the card; a warning."""
    system = config.data.system_prompt

    def contents(indices: Sequence[int] | np.ndarray) -> pa.Array:
        return without_system(rows.joined(indices)[0], system)

    def training_chunks() -> Iterator[tuple[pa.Array, np.ndarray]]:
        """The training rows in the rows file's order, each with its number in the training split: a
        stretch of the file is read at once, where the split's order would gather each chunk's rows from
        all over it (this thread, which feeds the others, took 0.65 s for that on the 100k dump, 0.25 s
        now)."""
        number = np.full(len(rows.dataset), -1)
        number[train] = np.arange(len(train))
        for start in range(0, len(number), CHUNK_ROWS):
            numbers = number[start : start + CHUNK_ROWS]
            in_train = np.flatnonzero(numbers >= 0)
            in_train = in_train[np.argsort(numbers[in_train])]
            yield contents(start + in_train), numbers[in_train]

    progress = Progress("overlap check:", f"of {len(train):,} training rows")
    probes = contents(validation)
    overlaps = find_overlaps_in_chunks(probes, training_chunks(), config.eval.ngram, progress.add)
    stats.overlaps = [
        {"validation_row": o.probe, "training_row": o.row, "tokens": o.tokens, "text": o.text[:200]}
        for o in overlaps
    ]
    if overlaps:
        longest = max(o.tokens for o in overlaps)
        stats.warnings.append(
            f"{len(overlaps)} of {len(validation)} validation rows share a run of {config.eval.ngram} or "
            f"more tokens with a training row (the longest: {longest} tokens): the validation loss "
            "flatters the model on them; the dataset card lists them"
        )


def curate(config: Config, count_tokens: TokenCounter, chat: ChatFormat, folder: Path) -> CurationStats:
    """Write the DatasetDict (train, validation) to `folder / "data"`; return what each rule did."""
    tune_allocators()
    stats = CurationStats(rules=active_rules(config))
    stats.dropped = dict.fromkeys(stats.rules, 0)
    settings = RowSettings(
        config.data.system_prompt,
        config.data.require_code_block,
        chat,
        config.train.max_length,
        drop_too_long=config.data.too_long == "drop",
        # With the length rule and no source limit every row is counted: by the workers, as they render it
        count_rows=config.data.too_long == "drop" and not any(source_limits(config).values()),
    )
    num_proc = config.data.num_proc or len(os.sched_getaffinity(0))
    rows_file = folder / "rows.arrow"
    with workers(settings, count_tokens, num_proc) as imap:
        sources, spelled, counted = filter_rows(config, imap, rows_file, stats)
        rows = RowsFile(rows_file)
        chosen, lengths = choose_rows(config, sources, rows, imap, stats, counted)
        check_nothing_emptied(stats)
        shuffled = shuffle_and_split(config, chosen, stats)
        # When nothing needed the counts, the workers count a seeded sample for the statistics (in this
        # process, counting would hold the GIL for most of a second beside the overlap check).
        lengths = lengths or count_tokens_of(rows, shuffled[:TOKEN_SAMPLE], imap)
    # The workers are gone before the dataset is written (their memory with it): a thread writes it while
    # the overlap check runs.
    from datasets import DatasetDict  # imported by filter_rows meanwhile

    validation, train = shuffled[: stats.validation_rows], shuffled[stats.validation_rows :]
    # Indices as numpy arrays: datasets fingerprints a list item by item, in Python (0.1 s)
    split_rows = {"train": np.asarray(train), "validation": np.asarray(validation)}
    splits = DatasetDict({name: rows.dataset.select(indices) for name, indices in split_rows.items()})
    with ThreadPoolExecutor(max_workers=2) as threads:
        written = threads.submit(splits.save_to_disk, str(folder / "data"))
        note_overlaps(config, rows, validation, train, stats)
        written.result()
    stats.special_token_text = sum(spelled[index] for index in shuffled)
    stats.token_lengths = token_lengths(lengths, len(shuffled), config.train.max_length)
    stats.read = {source: asdict(read) for source, read in stats.read.items()}
    rows_file.unlink()
    return stats
