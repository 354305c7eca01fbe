"""runs/bench/results.json: a list of {name, ours, baseline, unit, ratio, better, machine}, one entry per
metric; `machine` says which CPU measured it, since bitsandbytes and torch take other kernels on each kind."""

from __future__ import annotations

import json
import os
import platform
from functools import cache
from pathlib import Path
from typing import Any, Literal

from core.runs import write_json_atomic

RESULTS = Path("runs/bench/results.json")
# CPU features that change a code path: bitsandbytes' 4-bit kernels and torch's bfloat16 arithmetic.
CPU_FEATURES = ("avx512_bf16", "amx_bf16", "avx512f", "avx2")


@cache
def machine() -> dict[str, Any]:
    """The CPU a figure was measured on: its model, cores, and which of CPU_FEATURES it has (Linux)."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    features = [feature for feature in CPU_FEATURES if feature in flags]
    kind = "AVX-512 BF16" if "avx512_bf16" in flags else "AVX2" if "avx2" in flags else "other"
    return {"cpu": model, "cores": os.cpu_count(), "cpu_kind": kind, "cpu_features": features}


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
        "machine": machine(),
    }
    entries = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    entries = [existing for existing in entries if existing["name"] != name] + [entry]
    write_json_atomic(RESULTS, entries)
    print(f"{name}: ours {ours} {unit}, baseline {baseline} {unit}, ratio {entry['ratio']} ({better} better)")
    return entry
