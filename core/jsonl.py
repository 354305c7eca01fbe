"""Files of one JSON object per line, read with errors that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from core.errors import UserError


def json_objects(text: str, source: str, expected: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, object) for each non-blank line: `where` names the line ("p.jsonl line 3"). A line that is
    not JSON, or not an object, is a UserError; `expected` says what an object is ("an object with a prompt").
    """
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{where}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected {expected}, got {type(record).__name__}")
        yield where, record
