"""The user's input files: opened with one clear line when they cannot be, and their byte-order mark."""

from __future__ import annotations

import codecs
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
