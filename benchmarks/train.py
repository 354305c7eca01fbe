"""`train_epoch_seconds`: one epoch of our default recipe against one epoch of the notebook recipe.

Both run the real `fine_tune.train` stage on the tiny profile's embedded base and curated sample data,
with the same LoRA rank and targets, one after the other in this run. The notebook recipe: no packing,
loss on the whole text, batch 4, length-grouped batches, gradient checkpointing on (as
`prepare_model_for_kbit_training` leaves it), LoRA dropout 0.1. Evaluation and checkpoints are off for
both, so the time is training alone (the stage times `trainer.train()`, not loading).
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.results import record
from synthetic.stages import run_stage

PROFILE = "configs/tiny.yaml"
OUTPUT = Path("runs/bench/train")
ONE_EPOCH = [
    "train.epochs=1", "train.max_steps=-1", "train.eval_steps=100000", "train.save_steps=100000",
    "train.early_stopping_patience=null", "train.load_best_model_at_end=false", "train.resume=never",
]  # fmt: skip
NOTEBOOK_RECIPE = [
    "train.packing=false", "train.completion_only_loss=false", "train.batch_size=4",
    "train.group_by_length=true", "train.gradient_checkpointing=true", "train.gradient_accumulation_steps=1",
    "lora.dropout=0.1",
]  # fmt: skip


def stage(module: str, run_name: str, overrides: list[str]) -> None:
    settings = [f"run.output_dir={OUTPUT}", f"run.name={run_name}", *overrides]
    run_stage(module, PROFILE, settings, capture=False)


def train_one_epoch(run_name: str, overrides: list[str]) -> dict:
    dataset = OUTPUT / "shared" / "dataset"
    run = OUTPUT / run_name
    run.mkdir(parents=True, exist_ok=True)
    if not (run / "dataset").exists():
        (run / "dataset").symlink_to(dataset.resolve())
    stage("fine_tune.train", run_name, [*ONE_EPOCH, *overrides])
    return json.loads((run / "reports" / "train_report.json").read_text())


def run() -> None:
    stage("fine_tune.base", "shared", [])
    stage("data_prep", "shared", [])
    notebook = train_one_epoch("notebook-recipe", NOTEBOOK_RECIPE)
    ours = train_one_epoch("our-recipe", [])
    compared = ("padding_fraction", "tokens_per_second", "supervised_tokens_per_second", "steps", "packing")
    details = {key: {"ours": ours[key], "baseline": notebook[key]} for key in compared}
    record("train_epoch_seconds", ours["wall_seconds"], notebook["wall_seconds"], "s", "lower", **details)
