"""What make gpu-check runs: the llama2-7b-python profile's training of a random Llama-2-7B-shaped base at
each quant.bits, and the tiny profile's stages end to end, each as a user runs it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from gpu_check import CheckFailed
from synthetic import REPO
from synthetic.llama import LLAMA2_TOKENIZER, SHARD_BYTES, write_random_llama
from synthetic.stages import run_stage

PROFILE_7B = "configs/llama2-7b-python.yaml"
TINY = "configs/tiny.yaml"
BITS = (4, 8, 16)  # the quant.bits the 7B-shaped run trains with: the profile's QLoRA first


def qlora_runs(
    model_config, work: Path, steps: int, batch_size: int, bits: tuple[int, ...] = BITS
) -> dict[str, Any]:
    """The llama2-7b-python profile's training of a random base shaped by `model_config`, with Meta's
    tokenizer, on the Stack Overflow sample curated at the profile's length (512), for `steps` steps of
    `batch_size`, once per `quant.bits` in `bits` (the profile's 4: QLoRA; 8: LLM.int8; 16: unquantized
    float16) on the same base and data: each run's memory after loading and at its peak (on a GPU), and
    tokens/s after the first step. A run other than bits 4 that runs out of GPU memory says so in its
    result; bits 4 running out fails the check."""
    import gc

    import torch

    overrides, parameters = prepare_7b_run(model_config, work, steps, batch_size)
    results: dict[str, Any] = {"parameters": parameters}
    for count in bits:
        try:
            results[f"bits_{count}"] = qlora_run(overrides, count)
        except torch.cuda.OutOfMemoryError as error:
            if count == 4:
                raise CheckFailed(f"the 7B profile's QLoRA run ran out of GPU memory: {error}") from None
            results[f"bits_{count}"] = {"out_of_memory": str(error).splitlines()[0]}
        gc.collect()  # the trainer and its model, before the next run measures
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return results


def prepare_7b_run(model_config, work: Path, steps: int, batch_size: int) -> tuple[list[str], int]:
    """A random float16 base shaped by `model_config` with Meta's tokenizer in work/base, and the Stack
    Overflow sample curated for `steps` steps of `batch_size`: the llama2-7b-python profile's overrides for
    them, and the base's parameter count."""
    import torch

    base = work / "base"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    parameters = write_random_llama(
        base, model_config, torch.float16, tokenizer=LLAMA2_TOKENIZER, shard_bytes=SHARD_BYTES, device=device
    )
    samples = REPO / "data" / "samples" / "stackoverflow"
    sample = [
        f"data.stackoverflow.{part}={samples / (part.title() + '.csv')}"
        for part in ("questions", "answers", "tags")
    ]
    overrides = [f"model.name_or_path={base}", f"run.output_dir={work / 'runs'}", *sample,
                 f"data.stackoverflow.limit={steps * batch_size + 4}", "data.validation_size=4",
                 f"train.max_steps={steps}", f"train.batch_size={batch_size}", "train.logging_steps=1",
                 "train.save_steps=1000", "train.eval_steps=1000"]  # fmt: skip
    run_stage("data_prep", PROFILE_7B, overrides)
    return overrides, parameters


def qlora_run(overrides: list[str], bits: int) -> dict[str, Any]:
    """One training run of the prepared base and data (`prepare_7b_run`'s overrides) with `quant.bits`
    `bits`: its memory after loading and at its peak (on a GPU), and tokens/s after the first step."""
    import torch
    from transformers import TrainerCallback

    from core.config import load_config
    from core.runs import RunPaths
    from fine_tune.resume import training_fingerprint
    from fine_tune.train import build_trainer

    config = load_config(REPO / PROFILE_7B, [*overrides, f"quant.bits={bits}"])
    paths = RunPaths.of(config)
    on_gpu = torch.cuda.is_available()

    class Clock(TrainerCallback):
        """The time and the tokens seen at the end of each step."""

        def __init__(self) -> None:
            self.marks: list[tuple[float, int]] = []

        def on_step_end(self, args, state, control, **kwargs) -> None:
            if on_gpu:
                torch.cuda.synchronize()
            self.marks.append((time.perf_counter(), state.num_input_tokens_seen))

    if on_gpu:  # the figures count the training alone, not the writing of the checkpoint
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = build_trainer(config, paths, training_fingerprint(config, paths.dataset / "data"))
    loaded = torch.cuda.memory_allocated() if on_gpu else 0
    clock = Clock()
    trainer.add_callback(clock)
    trainer.train()
    (first_time, first_tokens), (last_time, last_tokens) = clock.marks[0], clock.marks[-1]
    result = {
        "bits": bits,
        "steps": trainer.state.global_step,
        "batch_size": config.train.batch_size,
        "max_length": config.train.max_length,
        "tokens": last_tokens,
        "tokens_per_second": round((last_tokens - first_tokens) / (last_time - first_time), 1),
    }
    if on_gpu:
        result["loaded_gb"] = round(loaded / 1e9, 2)
        result["peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        result["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 1e9, 2)
    return result


def tiny_pipeline(work: Path) -> dict[str, Any]:
    """The tiny profile's stages on this machine, each as a user runs it: what train, merge and compare
    report. Compare leaves out make eval's HumanEval run (164 problems, each program run in a sandbox): it
    would take longer than the rest together, and it checks the sandbox rather than the GPU."""
    overrides = [f"run.output_dir={work / 'runs'}", f"model.embedded.cache_dir={work / 'base'}",
                 "eval.with_compare=false"]  # fmt: skip
    for module in ("fine_tune.base", "data_prep", "fine_tune.train", "fine_tune.merge", "inference.compare"):
        started = time.perf_counter()
        run_stage(module, TINY, overrides)
        print(f"      {module}: {time.perf_counter() - started:.0f} s", flush=True)
    reports = work / "runs" / "tiny" / "reports"
    train, merge, compare = (json.loads((reports / name).read_text()) for name in
                             ("train_report.json", "merge_check.json", "compare.json"))  # fmt: skip
    if not merge["passed"]:
        raise CheckFailed(f"the merge self-check failed: {merge}")
    return {
        "train_tokens_per_second": train["tokens_per_second"],
        "train_peak_cuda_mb": train["peak_cuda_mb"],
        "eval_loss": train["eval_loss"],
        "merge_max_abs_logit_difference": merge["max_abs_logit_difference"],
        "merge_dtype": merge["dtype"],
        "validation_loss": {model: values["validation_loss"] for model, values in compare["summary"].items()},
    }
