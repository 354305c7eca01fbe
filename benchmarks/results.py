"""runs/bench/results.json: a list of {name, ours, baseline, unit, ratio, better}, one entry per metric."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from core.runs import write_json_atomic

RESULTS = Path("runs/bench/results.json")


def record(
    name: str,
    ours: float,
    baseline: float,
    unit: str,
    better: Literal["lower", "higher"] = "lower",
    **details: Any,
) -> dict[str, Any]:
    """Store one measurement (replacing an earlier one of the same name) and return it."""
    entry = {
        "name": name,
        "ours": ours,
        "baseline": baseline,
        "unit": unit,
        "ratio": round(ours / baseline, 4) if baseline else None,
        "better": better,
        **details,
    }
    entries = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    entries = [existing for existing in entries if existing["name"] != name] + [entry]
    write_json_atomic(RESULTS, entries)
    print(f"{name}: ours {ours} {unit}, baseline {baseline} {unit}, ratio {entry['ratio']} ({better} better)")
    return entry
