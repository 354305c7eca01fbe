"""`pretrain_tokens_per_second` and `pretrain_bits_per_byte`: the embedded base's recipe against base recipe
version 3's, and the held-out loss against wall time of every candidate recipe.

Each candidate pretrains through fine_tune/base.py's own pieces (the corpus, a tokenizer of its vocabulary
size, the held-out blocks, the Trainer) for about BUDGET_SECONDS: a short run first measures its seconds
per step, then it runs as many steps as fit, with its cosine schedule over them. Five times during the run
the held-out text's loss is measured in bits per byte (comparable between vocabulary sizes; the time spent
measuring is not counted). The curves go to runs/bench/pretrain_curves.json and are printed. The baseline
is base recipe version 3's shape (the base before this benchmark chose one), ours the tiny profile's.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from benchmarks.results import RESULTS, record
from core.config import EmbeddedBaseConfig, load_config
from core.runs import write_json_atomic
from fine_tune.base import (
    bits_per_byte,
    build_tokenizer,
    held_out_blocks,
    pretrain,
    pretrain_blocks,
    split_texts,
    stdlib_corpus,
    untrained_model,
)

PROFILE = "configs/tiny.yaml"
BUDGET_SECONDS = 90
CURVES = RESULTS.parent / "pretrain_curves.json"
BASE_RECIPE_V3 = {
    "vocab_size": 4096, "hidden_size": 256, "intermediate_size": 704, "num_layers": 4, "num_heads": 4,
    "pretrain_batch_size": 4, "pretrain_seq_len": 256, "pretrain_learning_rate": 3e-3,
}  # fmt: skip
SMALL = {"hidden_size": 128, "intermediate_size": 384, "pretrain_learning_rate": 5e-3}
CANDIDATES: dict[str, dict[str, Any]] = {
    "base recipe version 3 (baseline)": BASE_RECIPE_V3,
    "tiny profile (ours)": {},
    "h128 l4 v4096": {**BASE_RECIPE_V3, **SMALL},
    "h128 l4 v2048": {**BASE_RECIPE_V3, **SMALL, "vocab_size": 2048},
    "h192 l3 v4096": {**BASE_RECIPE_V3, "hidden_size": 192, "intermediate_size": 512, "num_layers": 3},
    "h256 l4 v4096 seq128 batch8": {**BASE_RECIPE_V3, "pretrain_seq_len": 128, "pretrain_batch_size": 8},
}


def held_out_curve(tokenizer: Any, held_out: list[list[int]], every: int, tokens_per_step: int):
    """A trainer callback measuring the held-out loss every `every` steps and at the end, against the
    training's own wall time."""
    from transformers import TrainerCallback

    class HeldOutCurve(TrainerCallback):
        def __init__(self) -> None:
            self.points: list[dict[str, float]] = []
            self.measuring = 0.0
            self.started = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every and state.global_step != state.max_steps:
                return
            began = time.perf_counter()
            point = {
                "step": state.global_step,
                "seconds": round(began - self.started - self.measuring, 1),
                "tokens": state.global_step * tokens_per_step,
                "bits_per_byte": round(bits_per_byte(model, tokenizer, held_out), 4),
            }
            self.points.append(point)
            self.measuring += time.perf_counter() - began

    return HeldOutCurve()


def seconds_per_step(spec: EmbeddedBaseConfig, tokenizer: Any, blocks: list[list[int]]) -> float:
    """Measured on a throwaway model: the steps after the first two (warm-up) of a short run."""
    from transformers import TrainerCallback

    times: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as scratch:
        short = spec.model_copy(update={"pretrain_steps": 10})
        pretrain(untrained_model(short, tokenizer), blocks, short, scratch, [StepTimes()])
    return (times[-1] - times[1]) / (len(times) - 2)


def run_candidate(name: str, spec: EmbeddedBaseConfig, corpus: list[str], tokenizers: dict) -> dict[str, Any]:
    from transformers import set_seed

    texts, held_out_texts = split_texts(corpus)
    if spec.vocab_size not in tokenizers:
        tokenizers[spec.vocab_size] = build_tokenizer(texts, spec.vocab_size)
    tokenizer = tokenizers[spec.vocab_size]
    training = pretrain_blocks(tokenizer, texts, spec.pretrain_seq_len)
    held_out = held_out_blocks(tokenizer, held_out_texts, spec.pretrain_seq_len)
    steps = max(int(BUDGET_SECONDS / seconds_per_step(spec, tokenizer, training)), 10)
    spec = spec.model_copy(update={"pretrain_steps": steps})
    set_seed(spec.seed)
    model = untrained_model(spec, tokenizer)
    tokens_per_step = spec.pretrain_batch_size * spec.pretrain_seq_len
    curve = held_out_curve(tokenizer, held_out, max(steps // 5, 1), tokens_per_step)
    with tempfile.TemporaryDirectory() as scratch:
        pretrain(model, training, spec, scratch, [curve])
    last = curve.points[-1]
    result = {
        "name": name,
        "parameters": model.num_parameters(),
        "spec": spec.model_dump(mode="json", exclude={"cache_dir"}),
        "tokens_per_second": round(last["tokens"] / last["seconds"], 1),
        "bits_per_byte": last["bits_per_byte"],
        "seconds": last["seconds"],
        "curve": curve.points,
    }
    points = ", ".join(f"{point['seconds']:.0f} s: {point['bits_per_byte']:.3f}" for point in curve.points)
    print(
        f"{name}: {result['parameters'] / 1e6:.2f}M parameters, {steps} steps, "
        f"{result['tokens_per_second']:.0f} tokens/s; held-out bits per byte {points}",
        flush=True,
    )
    return result


def run() -> None:
    profile = load_config(PROFILE, []).model.embedded
    corpus = stdlib_corpus(profile.corpus_megabytes)
    tokenizers: dict[int, Any] = {}
    results, by_spec = [], {}
    for name, overrides in CANDIDATES.items():
        spec = type(profile).model_validate({**profile.model_dump(), **overrides})  # the config's own rules
        key = spec.model_dump_json(exclude={"pretrain_steps"})
        if key not in by_spec:  # the tiny profile may be one of the candidates
            by_spec[key] = run_candidate(name, spec, corpus, tokenizers)
        results.append({**by_spec[key], "name": name})
    write_json_atomic(CURVES, results)
    baseline, ours = results[0], results[1]
    best = min(results, key=lambda result: result["bits_per_byte"])
    print(f"lowest held-out loss in {BUDGET_SECONDS} s: {best['name']}; curves in {CURVES}")
    record(
        "pretrain_tokens_per_second", ours["tokens_per_second"], baseline["tokens_per_second"], "tokens/s",
        "higher", budget_seconds=BUDGET_SECONDS,
    )  # fmt: skip
    record(
        "pretrain_bits_per_byte", ours["bits_per_byte"], baseline["bits_per_byte"], "bits/byte", "lower",
        budget_seconds=BUDGET_SECONDS, best_candidate=best["name"],
    )  # fmt: skip
