"""Plain text documents, for training on prose rather than on conversations:

- a `.jsonl` or `.json` file: a JSONL or JSON list of {"text": str}, one document a record;
- any other file: UTF-8 text (UTF-16/32 with a byte-order mark), documents separated by one or more
  blank lines (empty or only whitespace).

Texts are kept exactly as written (a text file's lines joined with "\\n"). Blank and malformed records are
counted, not fatal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.inputs import input_text, numbered_json_records

JSON_SUFFIXES = (".jsonl", ".json")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what editors number lines by (str.splitlines also splits on \f)
_POSITIONS_KEPT = 10


@dataclass
class TextStats:
    documents_read: int = 0  # every document or record, the empty and malformed ones included
    empty: int = 0  # blank documents / JSONL records whose text is blank
    malformed: int = 0  # JSONL lines that are not JSON objects with a string "text"
    malformed_lines: list[int] = field(default_factory=list)  # first 10


def read_documents(path: Path, stats: TextStats) -> list[tuple[int, str]]:
    """(line where the document starts, text) per non-blank document, in file order (for a JSON list, the
    record's index from 1 in place of the line)."""
    if path.suffix.lower() in JSON_SUFFIXES:
        return _json_documents(path, stats)
    documents = []
    start, lines = 0, []
    for number, line in enumerate(_LINE_BREAK.split(input_text(path, "text file")), start=1):
        if line.strip():
            start = start or number
            lines.append(line)
        elif lines:
            documents.append((start, "\n".join(lines)))
            start, lines = 0, []
    if lines:
        documents.append((start, "\n".join(lines)))
    stats.documents_read += len(documents)
    return documents


def _json_documents(path: Path, stats: TextStats) -> list[tuple[int, str]]:
    documents = []
    for position, record in numbered_json_records(path, "text file")[1]:
        stats.documents_read += 1
        if not (isinstance(record, dict) and isinstance(record.get("text"), str)):
            stats.malformed += 1
            if len(stats.malformed_lines) < _POSITIONS_KEPT:
                stats.malformed_lines.append(position)
        elif not record["text"].strip():
            stats.empty += 1
        else:
            documents.append((position, record["text"]))
    return documents
