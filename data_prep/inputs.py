"""The user's input files: opened with one clear line when they cannot be, their byte-order mark, and
the JSON list or JSONL that several sources are read from."""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import BinaryIO

from core.errors import UserError

# UTF-32 LE's mark begins with UTF-16 LE's, so it is looked for first.
BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def open_input(path: Path, what: str) -> BinaryIO:
    """`path` opened for reading in binary; a missing file, a folder or a file without read permission
    is one line naming it (`what` says which input it is: "Alpaca file")."""
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except OSError as error:
        raise UserError(f"cannot read the {what} {path}: {error.strerror or error}") from None


def marked_encoding(start: bytes) -> str | None:
    """The encoding that the byte-order mark at the start of a file names (with its byte order), or None."""
    return next((codec for mark, codec in BYTE_ORDER_MARKS if start.startswith(mark)), None)


def input_text(path: Path, what: str, advice: str = "save it as UTF-8") -> str:
    """The whole file as text, without its byte-order mark. The file is UTF-8, or UTF-16/32 with a mark;
    bytes that are not are one line naming the file and the line, then `advice`."""
    with open_input(path, what) as handle:
        data = handle.read()
    codec = marked_encoding(data[:4]) or "utf-8"
    try:
        return data.decode(codec).removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        line = data[: error.start].decode(codec).count("\n") + 1
        raise UserError(f"{path}: not valid {codec.upper()} at line {line}: {advice}") from None


def json_records(path: Path, what: str) -> list:
    """The file's records, a JSON list or one JSON value per line (None for a line that is not JSON).
    The file is UTF-8, or UTF-16/32 with a byte-order mark."""
    return [record for _, record in numbered_json_records(path, what)[1]]


def numbered_json_records(path: Path, what: str) -> tuple[str, list[tuple[int, object]]]:
    """The records of `json_records`, each with where it is: its line in a JSONL file (blank lines
    skipped, but counted) or its index from 1 in a JSON list. The word for that place comes first,
    "line" or "record", so that a message can say "line 7" of one and "record 7" of the other."""
    text = input_text(path, what, "save it as UTF-8, the encoding of JSON")
    if text.lstrip().startswith("["):
        try:
            return "record", list(enumerate(json.loads(text), start=1))
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: not valid JSON at line {error.lineno}: {error.msg}") from None
    records: list[tuple[int, object]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError:
                records.append((number, None))  # a record that is not JSON: the caller counts it
    return "line", records
