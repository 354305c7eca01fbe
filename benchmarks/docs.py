"""`make bench-docs`: write runs/bench/results.json as the table between docs/benchmarks.md's markers.

Only the text between `<!-- results:start -->` and `<!-- results:end -->` is replaced; the rest of the page
is kept as written. Stdlib only. (No `run()`: `make bench` skips this module.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path("runs/bench/results.json")
PAGE = Path("docs/benchmarks.md")
START, END = "<!-- results:start -->", "<!-- results:end -->"
COLUMNS = ("benchmark", "ours", "baseline", "unit", "ratio", "better", "machine")


def number(value: Any) -> str:
    """A figure as people read it: thousands separated, at most four significant digits below 1,000."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "n/a" if value is None else str(value)
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def machine(entry: dict[str, Any]) -> str:
    """The CPU that measured an entry: its kind, model and cores, or "not recorded" (older entries)."""
    cpu = entry.get("machine")
    if not cpu:
        return "not recorded"
    return f"{cpu.get('cpu_kind', '?')}: {cpu.get('cpu', '?')}, {cpu.get('cores', '?')} cores"


def table(entries: list[dict[str, Any]]) -> str:
    """The Markdown table of every entry, sorted by name so that the page changes only when a figure does."""
    lines = [f"| {' | '.join(COLUMNS)} |", f"|{' --- |' * len(COLUMNS)}"]
    for entry in sorted(entries, key=lambda entry: str(entry.get("name"))):
        cells = [
            f"`{entry.get('name')}`",
            number(entry.get("ours")),
            number(entry.get("baseline")),
            str(entry.get("unit", "")),
            number(entry.get("ratio")),
            str(entry.get("better", "")),
            machine(entry),
        ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def rewrite(page: str, entries: list[dict[str, Any]]) -> str:
    """`page` with the text between the markers replaced by the table; ValueError without both markers."""
    start, end = page.find(START), page.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{PAGE} has no {START} ... {END} markers")
    note = f"Written by `make bench-docs` from `{RESULTS}`; edits here are overwritten."
    return f"{page[: start + len(START)]}\n{note}\n\n{table(entries)}\n{page[end:]}"


def main() -> int:
    if not RESULTS.is_file():
        print(f"error: {RESULTS} not found: run `make bench` first", file=sys.stderr)
        return 1
    try:
        entries = json.loads(RESULTS.read_text(encoding="utf-8"))
        if not isinstance(entries, list):
            raise ValueError(f"{RESULTS} is not a list of results")
        page = rewrite(PAGE.read_text(encoding="utf-8"), entries)
    except (OSError, ValueError) as error:  # json.JSONDecodeError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 1
    PAGE.write_text(page, encoding="utf-8")
    print(f"{PAGE}: {len(entries)} results from {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
