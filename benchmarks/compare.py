"""compare_seconds: answering 32 validation prompts with the base and the fine-tuned model.

Ours: `inference.generate`, batched with left padding. The notebook recipe's way: a transformers
text-generation `pipeline` per model, called once per prompt. Both run in the same process on the same loaded
models with the same decoding options (greedy, the same `max_new_tokens`), and the benchmark checks that they
give the same text for the same prompt. The models are the tiny profile's, built through the real
stages into runs/bench/compare when missing (the base is cached in .cache/base, as for `make base`).
"""

from __future__ import annotations

import time

from benchmarks.results import record
from core.config import Config, load_config
from core.runs import RunPaths
from inference.generate import decoding_options, generate
from inference.loading import load_model
from inference.models import resolve_model
from synthetic.stages import run_stage

PROFILE = "configs/tiny.yaml"
OVERRIDES = ["run.output_dir=runs/bench", "run.name=compare", "data.validation_size=32"]
PROMPTS = 32


def build_missing(config: Config) -> None:
    """Run the stages whose artifacts are missing, as `make` would, into the benchmark's run folder."""
    paths = RunPaths.of(config)
    artifacts = {
        "fine_tune.base": None,  # a no-op when the base is cached
        "data_prep": paths.dataset / "data",
        "fine_tune.train": paths.adapter / "adapter_config.json",
        "fine_tune.merge": paths.merged / "config.json",
    }
    for module, artifact in artifacts.items():
        if artifact is None or not artifact.exists():
            run_stage(module, PROFILE, OVERRIDES, capture=False)


def notebook_way(model, tokenizer, prompts: list[str], options: dict) -> list[str]:
    """One text-generation pipeline for the model, one call per prompt."""
    from transformers import pipeline

    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    # add_special_tokens: the BOS our tokenizer adds, which the pipeline leaves out by default
    outputs = [generator(p, return_full_text=False, add_special_tokens=True, **options) for p in prompts]
    return [output[0]["generated_text"].strip() for output in outputs]


def measure(config: Config, count: int = PROMPTS) -> dict:
    from datasets import load_from_disk

    validation = load_from_disk(str(RunPaths.of(config).dataset / "data"))["validation"]
    prompts = validation.select(range(min(count, len(validation))))["prompt"]
    settings = config.inference.model_copy(update={"do_sample": False})
    models = {name: load_model(resolve_model(config, name), config) for name in ("base", "new_model")}
    for model, tokenizer in models.values():  # warm up both ways' first-call costs before timing
        generate(model, tokenizer, prompts[:2], settings.model_copy(update={"max_new_tokens": 4}))

    ours_seconds = baseline_seconds = 0.0
    mismatches, new_tokens = [], 0
    for name, (model, tokenizer) in models.items():
        started = time.perf_counter()
        answers = generate(model, tokenizer, prompts, settings)
        ours_seconds += time.perf_counter() - started
        started = time.perf_counter()
        texts = notebook_way(model, tokenizer, prompts, decoding_options(settings, tokenizer))
        baseline_seconds += time.perf_counter() - started
        new_tokens += sum(answer.new_tokens for answer in answers)
        mismatches += [
            {"model": name, "prompt": index, "ours": answer.text, "notebook_way": text}
            for index, (answer, text) in enumerate(zip(answers, texts, strict=True))
            if answer.text != text
        ]
    return {
        "ours": round(ours_seconds, 2),
        "baseline": round(baseline_seconds, 2),
        "prompts": len(prompts),
        "models": len(models),
        "new_tokens": new_tokens,
        "max_new_tokens": settings.max_new_tokens,
        "batch_size": settings.batch_size,
        "mismatches": len(mismatches),
        "mismatched": mismatches[:5],
    }


def run() -> None:
    config = load_config(PROFILE, OVERRIDES)
    build_missing(config)
    result = measure(config)
    if result["mismatches"]:
        print(f"compare: {result['mismatches']} answers differ between the two ways (see results.json)")
    record("compare_seconds", result.pop("ours"), result.pop("baseline"), "s", "lower", **result)
