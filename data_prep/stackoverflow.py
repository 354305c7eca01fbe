"""The Kaggle "Python Questions from Stack Overflow" CSVs: streamed, decoded deliberately, joined.

Each question is paired with its best answer (highest score; the lowest answer Id breaks a tie, so the
choice never depends on file order). Malformed rows are counted with their line numbers, not fatal; so
are repeats of a question Id (the first row with the Id is the one used).
"""

from __future__ import annotations

import codecs
import csv
import functools
import html
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from core.config import StackOverflowSource
from core.errors import UserError
from data_prep.inputs import marked_encoding, open_input
from data_prep.progress import Progress

QUESTION_COLUMNS = ("Id", "Score", "Title", "Body")
ANSWER_COLUMNS = ("Id", "ParentId", "Score", "Body")
TAG_COLUMNS = ("Id", "Tag")
FALLBACK_ERRORS = "utf8-else-cp1252"
INTEGER = r"^[+-]?[0-9]+$"  # what Python's int() reads, less the spaces and underscores
CSV_BLOCK_BYTES = 2 << 20  # what the reader parses at a time: memory stays bounded by it; a row must fit


def _decode_as_cp1252(error: UnicodeDecodeError) -> tuple[str, int]:
    """Decode the bytes that are not UTF-8 as cp1252 (latin-1 for the five bytes cp1252 leaves undefined)."""
    bad = error.object[error.start : error.end]
    return "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in bad), error.end


codecs.register_error(FALLBACK_ERRORS, _decode_as_cp1252)


@dataclass
class Pair:
    question_id: int
    title: str
    question_html: str
    question_score: int
    answer_id: int
    answer_html: str
    answer_score: int


@dataclass
class ReadStats:
    questions_read: int = 0
    answers_read: int = 0
    malformed_rows: dict[str, int] = field(default_factory=dict)
    malformed_first_lines: dict[str, list[int]] = field(default_factory=dict)
    low_score_questions: int = 0
    low_score_answers: int = 0
    orphan_answers: int = 0
    unanswered_questions: int = 0
    excluded_by_tags: int = 0
    repeated_question_ids: int = 0  # rows of Questions.csv whose Id an earlier row had: skipped
    repeated_question_ids_first: list[int] = field(default_factory=list)  # the first ten such Ids


def read_rows(
    path: Path, required: tuple[str, ...], integers: tuple[str, ...], encoding: str, stats: ReadStats
) -> Iterator[tuple[Any, ...]]:
    """Stream a CSV's rows as the values of the required columns, in that order (read_columns)."""
    for columns in read_columns(path, required, integers, encoding, stats):
        yield from zip(*columns, strict=True)


def read_columns(
    path: Path, required: tuple[str, ...], integers: tuple[str, ...], encoding: str, stats: ReadStats
) -> Iterator[list[list[Any]]]:
    """Stream a CSV's rows a batch at a time, as lists of the values of the required columns, in that
    order, those of `integers` as ints. A row with a wrong field count, with a value of an integer column
    that is not an integer (`NA`), or ending the file inside a quoted field is malformed: counted with its
    first line, and skipped. Progress is logged every few seconds.

    pyarrow's CSV reader parses (multi-line quoted fields, doubled quotes) block by block, several times
    faster than the csv module; fields come as bytes and are decoded here, so that the encoding rule is
    ours. The reader numbers rows, not lines, so a malformed row's line is counted from the rows and the
    line breaks inside the fields before it."""
    encoding, header = _inspect(path, required, encoding)
    codec, errors, transcode = _decoding(encoding)
    invalid: deque[tuple[int, str]] = deque()  # (row number, the header's being 1; its text)
    number, line = 2, 2  # the next row's number and first line
    progress = Progress("read", f"rows of {path.name}")
    try:
        reader = _open_reader(path, header, transcode, invalid.append)
        for batch, is_last in _marking_the_last(reader):
            progress.add(batch.num_rows)
            last = number + batch.num_rows - 1  # the batch's last row number, counting invalid rows in it
            for invalid_number, _ in invalid:
                if invalid_number > last:
                    break
                last += 1
            checks = [pc.match_substring_regex(batch[column], INTEGER) for column in integers]
            well_formed = functools.reduce(pc.and_, checks).to_pylist() if checks else [True] * batch.num_rows
            ends_the_file = is_last and (not invalid or invalid[-1][0] <= last)
            if ends_the_file and _ends_in_open_quote(path, batch.columns[-1][-1].as_py(), transcode):
                well_formed[-1] = False
            columns = [
                _integers(batch[column], well_formed)
                if column in integers
                else _decoded(batch[column], codec, errors)
                for column in required
            ]
            if last == number + batch.num_rows - 1 and all(well_formed):  # nothing malformed: no lines needed
                yield columns
                line += batch.num_rows + sum(map(_line_breaks, batch.columns))
                number = last + 1
                continue
            breaks = functools.reduce(pc.add, [pc.count_substring(column, "\n") for column in batch.columns])
            good_rows = []
            for row_breaks, good, *row in zip(breaks.to_pylist(), well_formed, *columns, strict=True):
                while invalid and invalid[0][0] == number:
                    _count_malformed(stats, path, line)
                    line += invalid.popleft()[1].count("\n") + 1
                    number += 1
                if good:
                    good_rows.append(row)
                else:
                    _count_malformed(stats, path, line)
                line += row_breaks + 1
                number += 1
            if good_rows:
                yield [list(column) for column in zip(*good_rows, strict=True)]
        for _, text in invalid:  # rows after the last good one
            _count_malformed(stats, path, line)
            line += text.count("\n") + 1
    except UnicodeDecodeError:
        raise _undecodable(path, encoding) from None
    except pa.ArrowInvalid as error:
        line += sum(text.count("\n") + 1 for _, text in invalid)  # rows skipped since the last good one
        if "straddl" in str(error):  # a row longer than a block
            raise UserError(
                f"{path}: the row at line {line} is over {CSV_BLOCK_BYTES >> 20} MB, more than a row may "
                "hold (a Stack Overflow post is at most 30,000 characters): is a quote left open there?"
            ) from None
        raise UserError(f"{path}: unreadable CSV near line {line}: {error}".replace("\n", " ")) from None


def _marking_the_last(reader: pa_csv.CSVStreamingReader) -> Iterator[tuple[pa.RecordBatch, bool]]:
    """The reader's batches that hold rows, each with whether it is the last. Each is held until the next
    one is read; if reading that one fails, the held batch still comes first, so that lines are counted
    up to the failure."""
    held = None
    try:
        for batch in reader:
            if not batch.num_rows:
                continue
            if held is not None:
                yield held, False
            held = batch
    except pa.ArrowInvalid:
        if held is not None:
            yield held, False
        raise
    if held is not None:
        yield held, True


def _ends_in_open_quote(path: Path, last_field: bytes, transcode: str) -> bool:
    """Whether the file ends inside a quoted field, the last one read. pyarrow reads a quote left open at
    the end as a field that runs to the end, line break included: the file then ends with a field
    separator (or line break), the opening quote and the field as written (its quotes doubled), where a
    closed field is followed by its closing quote."""
    written, separators = b'"' + last_field.replace(b'"', b'""'), [b",", b"\n", b"\r"]
    if transcode != "utf8":  # the reader transcoded the field to UTF-8; the file holds it in `transcode`
        written = written.decode().encode(transcode)
        separators = [separator.decode().encode(transcode) for separator in separators]
    width = len(separators[0])
    with path.open("rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(max(0, size - len(written) - width))
        tail = handle.read()
    return tail[width:] == written and tail[:width] in separators


def _decoding(encoding: str) -> tuple[str, str, str]:
    """(codec, errors) for the fields' bytes, and the encoding the reader transcodes from first."""
    if encoding == "auto":
        return "utf-8", FALLBACK_ERRORS, "utf8"
    if ',"\r\n'.encode(encoding) == b',"\r\n':  # the CSV's syntax reads the same: decode the fields only
        return encoding, "strict", "utf8"
    return "utf-8", "strict", encoding  # UTF-16 and the like: the reader transcodes to UTF-8 first


def _open_reader(
    path: Path, header: list[str], transcode: str, on_invalid: Callable[[tuple[int, str]], None]
) -> pa_csv.CSVStreamingReader:
    """pyarrow's streaming reader over the rows after the header, every field as bytes; a row with a
    wrong field count is skipped and handed to `on_invalid` as (its row number, its text)."""

    def skip_invalid(row: pa_csv.InvalidRow) -> str:
        on_invalid((row.number, row.text))
        return "skip"

    return pa_csv.open_csv(
        path,
        read_options=pa_csv.ReadOptions(
            use_threads=False,
            block_size=CSV_BLOCK_BYTES,
            skip_rows=1,
            column_names=header,
            encoding=transcode,
        ),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True, invalid_row_handler=skip_invalid),
        convert_options=pa_csv.ConvertOptions(
            column_types=dict.fromkeys(header, pa.binary()),
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )


def _integers(column: pa.Array, integral: list[bool]) -> list[int | None]:
    return [int(value) if ok else None for value, ok in zip(column.to_pylist(), integral, strict=True)]


def _line_breaks(column: pa.Array) -> int:
    """The line breaks in all of a column's values, counted in its data buffer (not copied)."""
    _, offsets, data = column.buffers()
    if data is None or not len(column):
        return 0
    bounds = np.frombuffer(offsets, dtype=np.int32)[column.offset : column.offset + len(column) + 1]
    values = np.frombuffer(data, np.uint8, int(bounds[-1] - bounds[0]), int(bounds[0]))
    return int(np.count_nonzero(values == ord("\n")))


def _decoded(column: pa.Array, codec: str, errors: str) -> list[str]:
    """A column of bytes as text: UTF-8 is checked in one pass by Arrow; a column with other bytes (or
    another codec) is decoded value by value."""
    if codec == "utf-8":
        try:
            return column.cast(pa.string()).to_pylist()
        except pa.ArrowInvalid:
            pass
    return [value.decode(codec, errors) for value in column.to_pylist()]


def _inspect(path: Path, required: tuple[str, ...], configured: str) -> tuple[str, list[str]]:
    """The encoding to read `path` with, and its column names, checked for the required ones."""
    encoding = file_encoding(path, configured)
    return encoding, _header(path, required, encoding)


def file_encoding(path: Path, configured: str) -> str:
    """The encoding `path` is read with: the configured one, unless the file starts with a byte-order mark
    (as spreadsheet tools write), which then names it; `auto` recognises UTF-8, UTF-16 and UTF-32 by it.
    A mark at odds with the configured encoding, or UTF-16/32 without the mark that gives its byte order,
    is one line."""
    with open_input(path, "Stack Overflow file") as handle:
        marked = marked_encoding(handle.read(4))
    name = configured if configured == "auto" else codecs.lookup(configured).name
    if marked is None:
        if name in ("utf-16", "utf-32"):
            raise UserError(
                f"{path} does not start with a byte-order mark, which {configured} needs for its byte "
                f"order: set data.stackoverflow.encoding to {name}-le or {name}-be, or auto for UTF-8"
            )
        return configured
    family = marked.removesuffix("-le").removesuffix("-be")
    if name not in ("auto", marked, family, f"{family}-sig"):
        raise UserError(
            f"{path} starts with a {marked.upper()} byte-order mark, but data.stackoverflow.encoding is "
            f"{configured}: set it to auto"
        )
    return "auto" if name == "auto" and marked == "utf-8" else marked


def _header(path: Path, required: tuple[str, ...], encoding: str) -> list[str]:
    """The column names, after any byte-order mark, checked for the required ones."""
    codec, errors = ("utf-8", FALLBACK_ERRORS) if encoding == "auto" else (encoding, "strict")
    with path.open(encoding=codec, errors=errors, newline="") as handle:
        try:
            header = next(csv.reader(handle), None)
        except UnicodeDecodeError:  # anywhere in the first block the text reader decoded
            raise _undecodable(path, encoding) from None
    if header is None:
        raise UserError(f"{path} is empty: expected a header with columns {', '.join(required)}")
    header[0] = header[0].removeprefix("\ufeff")  # the reader below skips the mark with the header line
    missing = [column for column in required if column not in header]
    if missing:
        raise UserError(f"{path}: missing column {', '.join(missing)} (header: {', '.join(header)})")
    return header


def _undecodable(path: Path, encoding: str) -> UserError:
    return UserError(
        f"{path}: not valid {encoding} at line {_first_undecodable_line(path, encoding)}; set "
        "data.stackoverflow.encoding (auto reads UTF-8, and any bytes that are not UTF-8 as cp1252)"
    )


def _first_undecodable_line(path: Path, codec: str) -> int:
    """The line of the first bytes of `path` that `codec` cannot decode (the text reader only knows the
    8 KB block it was decoding)."""
    decoder, line = codecs.getincrementaldecoder(codec)(), 1
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as error:  # error.object: this block after any undecoded tail
                return line + error.object[: error.start].count(b"\n")
            line += block.count(b"\n")
    return line


def _count_malformed(stats: ReadStats, path: Path, line: int) -> None:
    """Count a malformed row of `path`; the first ten line numbers are kept for the report."""
    stats.malformed_rows[path.name] = stats.malformed_rows.get(path.name, 0) + 1
    first = stats.malformed_first_lines.setdefault(path.name, [])
    if len(first) < 10:
        first.append(line)


def tag_filter(source: StackOverflowSource, stats: ReadStats) -> Callable[[int], bool]:
    """Whether a question's tags pass `include_tags` and `exclude_tags`; Tags.csv is read only for them."""
    include, exclude = {t.lower() for t in source.include_tags}, {t.lower() for t in source.exclude_tags}
    if not include and not exclude:
        return lambda question_id: True
    if source.tags is None:
        raise UserError(
            "data.stackoverflow.include_tags/exclude_tags need data.stackoverflow.tags (Tags.csv)"
        )
    included: set[int] = set()
    excluded: set[int] = set()
    for question_id, tag in read_rows(source.tags, TAG_COLUMNS, ("Id",), source.encoding, stats):
        tag = tag.strip().lower()
        if tag in include:
            included.add(question_id)
        if tag in exclude:
            excluded.add(question_id)
    return lambda question_id: (not include or question_id in included) and question_id not in excluded


def read_pairs(source: StackOverflowSource, stats: ReadStats) -> Iterator[Pair]:
    """Questions joined with their best answer, both at or above the minimum scores, in Questions.csv order.

    Answers.csv is read now, keeping only each question's best answer so far (the only bodies held in
    memory); the iterator returned then streams Questions.csv and joins, so that the slow part of curation
    can start while this function's caller does something else. Each file is read once.
    """
    # A missing file or column fails now, not after Answers.csv has been read.
    for path, columns in ((source.questions, QUESTION_COLUMNS), (source.answers, ANSWER_COLUMNS)):
        _inspect(path, columns, source.encoding)
    keep_tags = tag_filter(source, stats)
    best: dict[int, tuple[int, int, str]] = {}  # question id -> (score, answer id, body) of its best answer
    answer_counts: Counter[int] = Counter()  # question id -> its answers, to count those with no question
    integers = ("Id", "ParentId", "Score")
    minimum = source.min_answer_score
    for columns in read_columns(source.answers, ANSWER_COLUMNS, integers, source.encoding, stats):
        stats.answers_read += len(columns[0])
        answer_counts.update(columns[1])
        for answer_id, parent_id, score, body in zip(*columns, strict=True):
            if score < minimum:
                stats.low_score_answers += 1
                continue
            current = best.get(parent_id)
            if current is None or (score, -answer_id) > (current[0], -current[1]):
                best[parent_id] = (score, answer_id, body)
    return _join_questions(source, best, answer_counts, keep_tags, stats)


def _join_questions(
    source: StackOverflowSource,
    best: dict[int, tuple[int, int, str]],
    answer_counts: Counter[int],
    keep_tags: Callable[[int], bool],
    stats: ReadStats,
) -> Iterator[Pair]:
    seen: set[int] = set()
    for question_id, score, title, body in read_rows(
        source.questions, QUESTION_COLUMNS, ("Id", "Score"), source.encoding, stats
    ):
        stats.questions_read += 1
        if question_id in seen:
            stats.repeated_question_ids += 1
            if len(stats.repeated_question_ids_first) < 10:
                stats.repeated_question_ids_first.append(question_id)
            continue
        seen.add(question_id)
        answer_counts.pop(question_id, None)
        chosen = best.pop(question_id, None)
        if not keep_tags(question_id):
            stats.excluded_by_tags += 1
        elif score < source.min_question_score:
            stats.low_score_questions += 1
        elif chosen is None:
            stats.unanswered_questions += 1
        else:
            answer_score, answer_id, answer_body = chosen
            yield Pair(
                question_id, html.unescape(title).strip(), body, score, answer_id, answer_body, answer_score
            )
    stats.orphan_answers = sum(answer_counts.values())
