"""`make gpu-check`: is this CUDA GPU ready for the 7B profile? Two checks in one run of a few minutes.

1. A Llama-2-7B-shaped QLoRA run: random float16 weights of Llama-2-7B's shape with Meta's tokenizer
   (data/tokenizers/llama-2), the Stack Overflow sample curated at length 512, and the
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

    python -m gpu_check [--steps 6] [--bits 4 8 16]
    python -m gpu_check --download-wheels [--python-version 3.12]

Results also go to runs/gpu-check/results.json. The parts: bundle.py (the wheels for a machine without a
registry), runs.py (the 7B-shaped runs and the tiny pipeline), __main__.py (the command and its table).
Each module imports only the standard library at the top: the check must start on a Python that lacks
this project's libraries, to say what is missing or install it.
"""


class CheckFailed(Exception):
    """A part of the check failed; the message says which and why."""
