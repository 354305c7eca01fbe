"""peft_<method>: every `peft.method` on the tiny profile, the same data and the same budget, side by side.

Each method trains on the same curated rows (curated once) for STEPS optimizer steps (one epoch: 4 rows a
step, unpacked, since the prompt-learning methods cannot pack) at the profile's learning rate, from the
same embedded base, through the real stage (`python -m fine_tune.train`). Then its adapter, loaded on the
base as `make compare` loads it, answers the profile's 16 validation prompts greedily. Per method: trainable
parameters, adapter size on disk, peak memory and seconds per step (the train report), validation loss,
and the comparison's answer metrics (stop rate, empty answers, ROUGE-L against the reference answers).

Written to runs/bench/results.json (one entry per method; `ours` is its validation loss, `baseline` LoRA's)
and as one table to runs/bench/peft.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.results import record
from core.config import load_config
from core.runs import RunPaths
from synthetic.stages import run_stage

PROFILE = "configs/tiny.yaml"
METHODS = ["lora", "dora", "rslora", "olora", "adalora", "ia3", "prompt_tuning", "prefix_tuning", "p_tuning"]
STEPS = 65
TABLE = Path("runs/bench/peft.md")


def overrides(run_name: str, method: str = "lora") -> list[str]:
    return [
        "run.output_dir=runs/bench", f"run.name={run_name}", f"peft.method={method}", "train.packing=false",
        f"train.max_steps={STEPS}", "train.early_stopping_patience=null", "train.resume=never",
        "eval.with_compare=false",
    ]  # fmt: skip


def stage(module: str, run_name: str, method: str) -> None:
    run_stage(module, PROFILE, overrides(run_name, method), capture=False)


def answer_metrics(config, rows: list[dict], model: str = "new_model") -> dict:
    """The comparison's numbers for the run's adapter on the base (or the base alone), as `make compare`
    computes them."""
    from core.prompts import curated_row
    from inference.compare import evaluate_model
    from inference.metrics import rouge_l, summarize
    from inference.models import resolve_model

    prompts = [curated_row(row["prompt"], row["completion"], row.get("controls"))[0] for row in rows]
    references = [row["completion"].strip() for row in rows]
    loss, answers, seconds, _ = evaluate_model(config, model, resolve_model(config, model), rows, prompts, [])
    scores = [rouge_l(answer.text, reference) for answer, reference in zip(answers, references, strict=True)]
    return summarize(loss, answers, references, scores, seconds)


def measure(method: str, data_run: str, rows: list[dict]) -> dict:
    run_name = f"peft-{method}"
    config = load_config(PROFILE, overrides(run_name, method))
    paths = RunPaths.of(config)
    paths.root.mkdir(parents=True, exist_ok=True)
    if not paths.dataset.exists():
        paths.dataset.symlink_to(Path(data_run).resolve())
    stage("fine_tune.train", run_name, method)
    report = json.loads((paths.reports / "train_report.json").read_text())
    answers = answer_metrics(config, rows)
    return {
        "method": method,
        "trainable_parameters": report["trainable_parameters"],
        "adapter_kb": round((paths.adapter / "adapter_model.safetensors").stat().st_size / 1024, 1),
        "peak_rss_mb": round(report["peak_rss_mb"]),
        "seconds_per_step": round(report["wall_seconds"] / report["steps_this_run"], 3),
        "validation_loss": answers["validation_loss"],
        "stop_rate": answers["stop_rate"],
        "empty_answers": answers["empty_answers"],
        "rouge_l": answers["rouge_l"],
    }


def markdown(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = [f"| {' | '.join(columns)} |", f"|{' --- |' * len(columns)}"]
    lines += ["| " + " | ".join(f"{row[name]:,}" if isinstance(row[name], int) else str(row[name])
                                 for name in columns) + " |" for row in rows]  # fmt: skip
    return "\n".join(lines) + "\n"


def run() -> None:
    from datasets import load_from_disk

    data_run = "peft-data"
    stage("fine_tune.base", data_run, "lora")
    stage("data_prep", data_run, "lora")
    dataset = RunPaths.of(load_config(PROFILE, overrides(data_run))).dataset
    validation = load_from_disk(str(dataset / "data"))["validation"]
    count = load_config(PROFILE, []).inference.compare_examples
    rows = validation.select(range(min(count, len(validation)))).to_list()
    results = [measure(method, str(dataset), rows) for method in METHODS]
    base = answer_metrics(load_config(PROFILE, overrides(data_run)), rows, "base")
    untrained = {"method": "none (the base)", "trainable_parameters": 0, "adapter_kb": 0, "peak_rss_mb": "",
                 "seconds_per_step": ""}  # fmt: skip
    untrained.update({key: base[key] for key in ("validation_loss", "stop_rate", "empty_answers", "rouge_l")})
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    TABLE.write_text(
        f"`make bench BENCH=peft`: tiny profile, {STEPS} steps of 4 unpacked rows each, the profile's "
        f"learning rate; answers to {len(rows)} validation prompts, greedy.\n\n"
        + markdown([untrained, *results]),
        encoding="utf-8",
    )
    lora = results[0]["validation_loss"]
    for result in results:
        details = {key: value for key, value in result.items() if key != "method"}
        record(
            f"peft_{result['method']}", result["validation_loss"], lora, "validation loss", "lower", **details
        )
    print(TABLE.read_text())
