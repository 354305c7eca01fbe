"""`make gpu-check`: is this CUDA GPU ready for the 7B profile? Two checks in one run of a few minutes.

1. A Llama-2-7B-shaped QLoRA run: random float16 weights of Llama-2-7B's shape with Meta's tokenizer
   (tests/fixtures/llama2-tokenizer), the Stack Overflow sample curated at length 512, and the
   llama2-7b-python profile's training (NF4 base, float16 compute, paged_adamw_32bit, gradient
   checkpointing, LoRA r 64 on q/v) for a few steps, built by the training stage's own build_trainer;
   then the same with quant.bits 8 (LLM.int8) and 16 (the unquantized float16 base). It prints each
   one's memory after loading, peak memory and tokens/s beside the notebook recipe's (4-bit) figures.
2. The tiny profile end to end on the GPU, each stage as a user runs it: base, data, train (bf16 where
   the GPU has it, else fp16), merge and its self-check, compare.

Without a CUDA GPU it says so and exits 0. A GPU machine that reaches no package registry may lack this
project's dependencies (trl, bitsandbytes, datasets, pydantic...): `make gpu-check-wheels`, where PyPI is
reachable, downloads their wheels into .cache/gpu-wheels (the versions installed here, for Python 3.12 on
x86-64 Linux, at most 64 MiB); bring that folder along, and the check installs those that are missing or
older than the bundled ones into .cache/gpu-site and runs with them.

    python -m benchmarks.gpu_check [--steps 6] [--bits 4 8 16]
    python -m benchmarks.gpu_check --download-wheels [--python-version 3.12]

Results also go to runs/gpu-check/results.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WHEELS = REPO / ".cache" / "gpu-wheels"
SITE = REPO / ".cache" / "gpu-site"
RESULTS = REPO / "runs" / "gpu-check"
LLAMA2_TOKENIZER = REPO / "tests" / "fixtures" / "llama2-tokenizer"
PROFILE_7B = "configs/llama2-7b-python.yaml"
TINY = "configs/tiny.yaml"
# The distributions the training, merge and compare stages need beyond what a PyTorch machine usually has
# (torch, transformers, accelerate, numpy, pyarrow, pandas, PyYAML, lxml, matplotlib, tensorboard,
# safetensors, tokenizers, huggingface_hub, psutil), with their own requirements that such a machine lacks.
# peft and typing-extensions come along in case the machine's are older than this project's.
BUNDLE = ("bitsandbytes", "trl", "peft", "datasets", "dill", "multiprocess", "pydantic", "pydantic-core",
          "annotated-types", "typing-inspection", "typing-extensions", "rouge-score", "nltk")  # fmt: skip
SOURCE_ONLY = {"rouge-score"}  # no wheel on PyPI: built here (pure Python, so it installs anywhere)
BUNDLE_LIMIT = 64 * 2**20  # what travels with the repository to a machine without a registry
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)
RESTARTED = "GPU_CHECK_SITE"  # set in the process that runs with the installed wheels
# The notebook recipe's reported QLoRA figures for Llama-2-7B (4-bit, gradient checkpointing, batch 2)
NOTEBOOK = {"batch": 2, "loaded_gb": 6.1, "peak_gb": 8.1}
BITS = (4, 8, 16)  # the quant.bits the 7B-shaped run trains with: the profile's QLoRA first


class CheckFailed(Exception):
    """A part of the check failed; the message says which and why."""


def download_wheels(folder: Path, python_version: str) -> int:
    """The bundle's wheels, at the versions installed in this environment, for `python_version` on x86-64
    Linux, into `folder` (emptied first); its size in bytes, which must stay within BUNDLE_LIMIT."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in BUNDLE]
    binary = [pin for pin in pins if pin.split("==")[0] not in SOURCE_ONLY]
    targets = [f"--platform={platform}" for platform in PLATFORMS]
    options = [
        "--no-deps",
        "--only-binary=:all:",
        "--implementation=cp",
        f"--python-version={python_version}",
    ]
    subprocess.run([*pip, "download", *options, *targets, f"--dest={folder}", *binary], check=True)
    built = [pin for pin in pins if pin.split("==")[0] in SOURCE_ONLY]
    subprocess.run([*pip, "wheel", "--no-deps", f"--wheel-dir={folder}", *built], check=True)
    return sum(path.stat().st_size for path in folder.glob("*.whl"))


def wheels_to_install(folder: Path) -> list[Path]:
    """The wheels in `folder` whose distribution this Python lacks or has at an older version."""
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import Version

    needed = []
    for wheel in sorted(folder.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        try:
            installed = importlib.metadata.version(canonicalize_name(name))
        except importlib.metadata.PackageNotFoundError:
            needed.append(wheel)
            continue
        if Version(installed) < version:
            needed.append(wheel)
    return needed


def install_wheels(wheels: list[Path], site: Path) -> None:
    """Install `wheels` (no dependencies, no index) into the folder `site`, replacing what it held."""
    shutil.rmtree(site, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
               "--no-deps", "--no-compile", f"--target={site}", *map(str, wheels)]  # fmt: skip
    subprocess.run(command, check=True)


def with_dependencies(argv: list[str]) -> None:
    """Make sure this process can import what the stages need: install the bundled wheels that are missing
    or older here into SITE, then restart with SITE first on the path. Returns when nothing is missing."""
    needed = wheels_to_install(WHEELS) if WHEELS.is_dir() else []
    if not needed:
        missing = [name for name in ("trl", "bitsandbytes", "peft", "datasets", "pydantic", "rouge_score")
                   if importlib.util.find_spec(name) is None]  # fmt: skip
        if missing:
            raise CheckFailed(
                f"this Python lacks {', '.join(missing)} and {WHEELS} holds no wheels for them: run `make "
                "gpu-check-wheels` where PyPI is reachable and bring that folder along, or `make install`"
            )
        return
    if os.environ.get(RESTARTED):
        raise CheckFailed(f"{', '.join(w.name for w in needed)} still missing after installing into {SITE}")
    print(f"gpu-check: installing {len(needed)} bundled wheels into {SITE}", flush=True)
    install_wheels(needed, SITE)
    path = os.pathsep.join(filter(None, [str(SITE), os.environ.get("PYTHONPATH")]))
    os.environ.update({"PYTHONPATH": path, RESTARTED: "1"})
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.gpu_check", *argv])


def write_random_checkpoint(
    model_config, folder: Path, device: str = "cpu", shard_bytes: int = 2 * 10**9
) -> int:
    """A float16 checkpoint of `model_config` with random weights, as transformers initializes a Llama
    (normal with the config's initializer_range; norms one), written shard by shard so that never more than
    one shard is in memory: a 7B model needs 13.5 GB of disk and about 2 GB of memory. Its parameter count."""
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, LlamaForCausalLM

    with torch.device("meta"):
        shapes = {
            name: parameter.shape for name, parameter in LlamaForCausalLM(model_config).named_parameters()
        }
    groups: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        if groups[-1] and size + 2 * shape.numel() > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += 2 * shape.numel()
    generator = torch.Generator(device).manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for number, names in enumerate(groups, 1):
        shard = {}
        for name in names:
            tensor = torch.empty(shapes[name], dtype=torch.float16, device=device)
            if name.endswith("norm.weight"):
                tensor.fill_(1.0)
            else:
                tensor.normal_(0.0, model_config.initializer_range, generator=generator)
            shard[name] = tensor.cpu()
        file = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
        save_file(shard, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
    total = sum(shape.numel() for shape in shapes.values())
    index = {"metadata": {"total_size": 2 * total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    model_config.dtype = torch.float16
    model_config.save_pretrained(folder)
    GenerationConfig(
        bos_token_id=model_config.bos_token_id, eos_token_id=model_config.eos_token_id
    ).save_pretrained(folder)
    return total


def stage(module: str, profile: str, overrides: list[str]) -> subprocess.CompletedProcess:
    """A stage as a user runs it (`python -m module --config profile --set ...`); CheckFailed if it fails."""
    command = [
        sys.executable,
        "-m",
        module,
        f"--config={profile}",
        *(f"--set={value}" for value in overrides),
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise CheckFailed(f"{' '.join(command[1:])} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


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
    parameters = write_random_checkpoint(model_config, base, "cuda" if torch.cuda.is_available() else "cpu")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(LLAMA2_TOKENIZER / name, base)
    samples = REPO / "data" / "samples" / "stackoverflow"
    sample = [
        f"data.stackoverflow.{part}={samples / (part.title() + '.csv')}"
        for part in ("questions", "answers", "tags")
    ]
    overrides = [f"model.name_or_path={base}", f"run.output_dir={work / 'runs'}", *sample,
                 f"data.stackoverflow.limit={steps * batch_size + 4}", "data.validation_size=4",
                 f"train.max_steps={steps}", f"train.batch_size={batch_size}", "train.logging_steps=1",
                 "train.save_steps=1000", "train.eval_steps=1000"]  # fmt: skip
    stage("data_prep", PROFILE_7B, overrides)
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
        stage(module, TINY, overrides)
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

    from benchmarks.gpu_memory import LLAMA2_7B
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    except CheckFailed as error:
        print(f"gpu-check: FAILED: {error}")
        return 1
    results["seconds"] = round(time.perf_counter() - started)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"gpu-check: passed in {results['seconds']} s; {RESULTS / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
