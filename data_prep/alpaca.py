"""Alpaca-style instruction data: a JSON list or JSONL of {instruction, input (optional), output}."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError
from data_prep.inputs import marked_encoding, open_input


@dataclass
class AlpacaStats:
    records_read: int = 0
    malformed: int = 0
    malformed_positions: list[int] = field(default_factory=list)


def user_message(instruction: str, input_text: str) -> str:
    """The instruction, then the input after a blank line when there is one."""
    instruction, input_text = instruction.strip(), input_text.strip()
    return f"{instruction}\n\n{input_text}" if input_text else instruction


def load_records(path: Path) -> list:
    """The file's records, a JSON list or one JSON value per line (None for a line that is not JSON).
    The file is UTF-8, or UTF-16/32 with a byte-order mark."""
    with open_input(path, "Alpaca file") as handle:
        data = handle.read()
    codec = marked_encoding(data[:4]) or "utf-8"
    try:
        text = data.decode(codec).removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        line = data[: error.start].decode(codec).count("\n") + 1
        raise UserError(
            f"{path}: not valid {codec.upper()} at line {line}: save it as UTF-8, the encoding of JSON"
        ) from None
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: not valid JSON at line {error.lineno}: {error.msg}") from None
    records = []
    for line in text.splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                records.append(None)  # counted as malformed at this position
    return records


def read_examples(path: Path, stats: AlpacaStats) -> list[tuple[int, str, str]]:
    """(position, user message, answer) per well-formed record; positions count from 1."""
    examples = []
    for position, record in enumerate(load_records(path), start=1):
        stats.records_read += 1
        if not _well_formed(record):
            stats.malformed += 1
            if len(stats.malformed_positions) < 10:
                stats.malformed_positions.append(position)
            continue
        examples.append(
            (position, user_message(record["instruction"], record.get("input") or ""), record["output"])
        )
    return examples


def _well_formed(record: object) -> bool:
    return (
        isinstance(record, dict)
        and isinstance(record.get("instruction"), str)
        and isinstance(record.get("output"), str)
        and isinstance(record.get("input", ""), str | None)
    )
