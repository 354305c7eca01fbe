"""The Kaggle "Python Questions from Stack Overflow" CSVs: streamed, decoded deliberately, joined.

Each question is paired with its best answer (highest score; the lowest answer Id breaks a tie, so the
choice never depends on file order). Malformed rows are counted with their line numbers, not fatal.
"""

from __future__ import annotations

import codecs
import csv
import html
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from core.config import StackOverflowSource
from core.errors import UserError

QUESTION_COLUMNS = ("Id", "Score", "Title", "Body")
ANSWER_COLUMNS = ("Id", "ParentId", "Score", "Body")
TAG_COLUMNS = ("Id", "Tag")
FALLBACK_ERRORS = "utf8-else-cp1252"


def _decode_as_cp1252(error: UnicodeDecodeError) -> tuple[str, int]:
    """Decode the bytes that are not UTF-8 as cp1252 (latin-1 for the five bytes cp1252 leaves undefined)."""
    bad = error.object[error.start : error.end]
    return "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in bad), error.end


codecs.register_error(FALLBACK_ERRORS, _decode_as_cp1252)
csv.field_size_limit(sys.maxsize)  # post bodies can be far larger than csv's 128 KB default


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


def read_rows(
    path: Path, required: tuple[str, ...], encoding: str, stats: ReadStats
) -> Iterator[tuple[int, dict[str, str]]]:
    """Stream a CSV's rows as (first line number, row); rows with a wrong field count are counted, skipped."""
    if not path.is_file():
        raise UserError(f"Stack Overflow file not found: {path}")
    codec, errors = ("utf-8", FALLBACK_ERRORS) if encoding == "auto" else (encoding, "strict")
    line = 1
    try:
        with path.open(encoding=codec, errors=errors, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise UserError(f"{path} is empty: expected a header with columns {', '.join(required)}")
            missing = [column for column in required if column not in header]
            if missing:
                raise UserError(f"{path}: missing column {', '.join(missing)} (header: {', '.join(header)})")
            line = reader.line_num + 1
            for row in reader:
                if len(row) != len(header):
                    _count_malformed(stats, path, line)
                else:
                    yield line, dict(zip(header, row, strict=True))
                line = reader.line_num + 1
    except UnicodeDecodeError:
        raise UserError(
            f"{path}: not valid {encoding} at line {_first_undecodable_line(path, codec)}; set "
            "data.stackoverflow.encoding (auto reads UTF-8, and any bytes that are not UTF-8 as cp1252)"
        ) from None
    except csv.Error as error:
        raise UserError(f"{path}: unreadable CSV near line {line}: {error}") from None


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


def _integer(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


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
    for _, row in read_rows(source.tags, TAG_COLUMNS, source.encoding, stats):
        question_id, tag = _integer(row["Id"]), row["Tag"].strip().lower()
        if question_id is not None and tag in include:
            included.add(question_id)
        if question_id is not None and tag in exclude:
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
        next(read_rows(path, columns, source.encoding, ReadStats()), None)
    keep_tags = tag_filter(source, stats)
    best: dict[int, tuple[int, int, str]] = {}  # question id -> (score, answer id, body) of its best answer
    answer_counts: Counter[int] = Counter()  # question id -> its answers, to count those with no question
    for line, row in read_rows(source.answers, ANSWER_COLUMNS, source.encoding, stats):
        answer_id, parent_id, score = _integer(row["Id"]), _integer(row["ParentId"]), _integer(row["Score"])
        if answer_id is None or parent_id is None or score is None:
            _count_malformed(stats, source.answers, line)
            continue
        stats.answers_read += 1
        answer_counts[parent_id] += 1
        if score < source.min_answer_score:
            stats.low_score_answers += 1
            continue
        current = best.get(parent_id)
        if current is None or (score, -answer_id) > (current[0], -current[1]):
            best[parent_id] = (score, answer_id, row["Body"])
    return _join_questions(source, best, answer_counts, keep_tags, stats)


def _join_questions(
    source: StackOverflowSource,
    best: dict[int, tuple[int, int, str]],
    answer_counts: Counter[int],
    keep_tags: Callable[[int], bool],
    stats: ReadStats,
) -> Iterator[Pair]:
    for line, row in read_rows(source.questions, QUESTION_COLUMNS, source.encoding, stats):
        question_id, score = _integer(row["Id"]), _integer(row["Score"])
        if question_id is None or score is None:
            _count_malformed(stats, source.questions, line)
            continue
        stats.questions_read += 1
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
            title = html.unescape(row["Title"]).strip()
            yield Pair(question_id, title, row["Body"], score, answer_id, answer_body, answer_score)
    stats.orphan_answers = sum(answer_counts.values())
