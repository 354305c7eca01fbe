"""Alpaca-style instruction data: a JSON list or JSONL of {instruction, input (optional), output}."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data_prep.inputs import json_records


@dataclass
class AlpacaStats:
    records_read: int = 0
    malformed: int = 0
    malformed_positions: list[int] = field(default_factory=list)


def user_message(instruction: str, input_text: str) -> str:
    """The instruction, then the input after a blank line when there is one."""
    instruction, input_text = instruction.strip(), input_text.strip()
    return f"{instruction}\n\n{input_text}" if input_text else instruction


def read_examples(path: Path, stats: AlpacaStats) -> list[tuple[int, str, str]]:
    """(position, user message, answer) per well-formed record; positions count from 1."""
    examples = []
    for position, record in enumerate(json_records(path, "Alpaca file"), start=1):
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
