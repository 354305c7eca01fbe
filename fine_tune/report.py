"""What a training run reports: token and padding counts, memory, and the loss curve."""

from __future__ import annotations

import resource
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch


def peak_rss_mb() -> float:
    """Peak resident memory of this process: Linux's VmHWM, in KiB. Not ru_maxrss, which a process started
    by a larger one inherits (Linux keeps it across exec): `make bench BENCH=peft` reported its own growing
    size as each training stage's peak."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # where there is no /proc


def peak_cuda_mb() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None


def batch_statistics(batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Token positions, padding and supervised tokens over the batches of one epoch, as the model sees them.

    A position is padding when the attention mask is 0; padding-free (packed) batches carry no mask
    and no padding. A supervised token is one whose label is not -100.
    """
    positions = padding = supervised = count = 0
    for batch in batches:
        count += 1
        positions += batch["input_ids"].numel()
        if "attention_mask" in batch:
            padding += int((batch["attention_mask"] == 0).sum())
        supervised += int((batch["labels"] != -100).sum())
    return {
        "batches_per_epoch": count,
        "positions_per_epoch": positions,
        "supervised_tokens_per_epoch": supervised,
        "padding_fraction": round(padding / positions, 4) if positions else 0.0,
    }


def plot_loss_curve(log_history: list[dict[str, Any]], path: Path) -> None:
    """Train and eval loss against the step, from the trainer's log history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for key, label in (("loss", "train"), ("eval_loss", "eval")):
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry]
        if points:
            steps, values = zip(*points, strict=True)
            axes.plot(steps, values, marker="o" if label == "eval" else None, label=label)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title("training and validation loss")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
