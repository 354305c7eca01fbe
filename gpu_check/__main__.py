"""`python -m gpu_check` (make gpu-check, make gpu-check-wheels): the command, its printed table and
runs/gpu-check/results.json. What it checks: gpu_check/__init__.py."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gpu_check
from gpu_check import CheckFailed
from gpu_check.bundle import BUNDLE_LIMIT, WHEELS, download_wheels, with_dependencies
from gpu_check.runs import BITS, PROFILE_7B, qlora_runs, tiny_pipeline
from synthetic import REPO
from synthetic.llama import LLAMA2_7B
from synthetic.stages import StageFailed

RESULTS = REPO / "runs" / "gpu-check"
# The notebook recipe's reported QLoRA figures for Llama-2-7B (4-bit, gradient checkpointing, batch 2)
NOTEBOOK = {"batch": 2, "loaded_gb": 6.1, "peak_gb": 8.1}


def seven_b_table(results: dict[str, Any]) -> str:
    """The 7B-shaped runs' figures, one column per quant.bits, beside the notebook recipe's (4-bit)."""
    runs = {key.removeprefix("bits_"): run for key, run in results.items() if key.startswith("bits_")}

    def cell(run: dict[str, Any], figure: str) -> str:
        if "out_of_memory" in run:
            return "out of memory"
        if figure == "loaded":
            return f"{run['loaded_gb']:.1f} GB"
        if figure == "peak":
            return f"{run['peak_gb']:.1f} GB ({run['peak_reserved_gb']:.1f})"
        return f"{run['tokens_per_second']:,.0f}"

    rows = [
        ("memory after loading", "loaded", f"{NOTEBOOK['loaded_gb']} GB"),
        ("peak memory (reserved)", "peak", f"{NOTEBOOK['peak_gb']} GB"),
        ("tokens/s (after the first step)", "speed", "not given"),
    ]
    header = "".join(f"{'bits ' + bits:22}" for bits in runs)
    lines = [f"      {'':32} {header}the notebook recipe (bits 4, batch {NOTEBOOK['batch']})"]
    for name, figure, reported in rows:
        ours = "".join(f"{cell(run, figure):22}" for run in runs.values())
        lines.append(f"      {name:32} {ours}{reported}")
    return "\n".join(lines)


def check(steps: int, bits: tuple[int, ...] = BITS) -> dict[str, Any]:
    """Both checks on this GPU, printed as they finish; their results."""
    import torch
    from transformers import LlamaConfig

    from core.model import model_dtype

    results: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                               "cuda": torch.version.cuda}  # fmt: skip
    print(f"gpu-check: {results['device']}, torch {results['torch']}, CUDA {results['cuda']}", flush=True)
    print(f"[1/2] Llama-2-7B-shaped LoRA with quant.bits {', '.join(map(str, bits))} ({PROFILE_7B}: bits "
          f"4 is its QLoRA, nf4; float16 compute, paged_adamw_32bit, gradient checkpointing, LoRA r 64 on "
          f"q/v), random weights, Meta's tokenizer, {steps} steps of batch {NOTEBOOK['batch']} each",
          flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gpu-check-7b-") as work:
        results["llama2_7b_shaped"] = qlora_runs(
            LlamaConfig(**LLAMA2_7B), Path(work), steps, NOTEBOOK["batch"], bits
        )
    print(seven_b_table(results["llama2_7b_shaped"]), flush=True)
    torch.cuda.empty_cache()
    print(
        f"[2/2] the tiny profile end to end (compute dtype {str(model_dtype()).removeprefix('torch.')})",
        flush=True,
    )
    shutil.rmtree(RESULTS / "tiny", ignore_errors=True)
    tiny = results["tiny"] = tiny_pipeline(RESULTS / "tiny")
    merge = f"{tiny['merge_dtype']}, max |logit difference| {tiny['merge_max_abs_logit_difference']:.2e}"
    print(
        f"      train {tiny['train_tokens_per_second']:,.0f} tokens/s, peak "
        f"{tiny['train_peak_cuda_mb']:,.0f} MB; merge self-check passed ({merge}); validation loss "
        f"{tiny['validation_loss']}",
        flush=True,
    )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gpu_check", description=gpu_check.__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--steps", type=int, default=6, help="training steps of each 7B-shaped run (default 6)"
    )
    parser.add_argument("--bits", type=int, nargs="+", choices=BITS, default=list(BITS),
                        help="the quant.bits of the 7B-shaped runs (default: 4 8 16)")  # fmt: skip
    parser.add_argument("--download-wheels", action="store_true", help=f"download the bundle into {WHEELS}")
    parser.add_argument("--python-version", default="3.12", help="of the GPU machine, for --download-wheels")
    args = parser.parse_args()
    if args.download_wheels:
        size = download_wheels(WHEELS, args.python_version)
        print(f"gpu-check wheels: {len(list(WHEELS.glob('*.whl')))} in {WHEELS}, {size / 2**20:.1f} MiB "
              f"(at most {BUNDLE_LIMIT / 2**20:.0f} MiB)")  # fmt: skip
        return 0 if size <= BUNDLE_LIMIT else 1
    try:
        import torch
    except ImportError:
        print(f"gpu-check: {sys.executable} has no PyTorch: name a Python that has it (make gpu-check "
              "PYTHON=/path/to/python) or run `make install`")  # fmt: skip
        return 1
    if not torch.cuda.is_available():
        print(f"gpu-check: needs a CUDA GPU, and torch {torch.__version__} sees none here: nothing checked")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; a machine without network never waits
    started = time.perf_counter()
    try:
        with_dependencies(sys.argv[1:])
        results = check(args.steps, tuple(dict.fromkeys(args.bits)))
    except (CheckFailed, StageFailed) as error:
        print(f"gpu-check: FAILED: {error}")
        return 1
    results["seconds"] = round(time.perf_counter() - started)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"gpu-check: passed in {results['seconds']} s; {RESULTS / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
