"""llama.cpp's own tools, as `make export` installs them into the virtual environment.

The converter, `convert_hf_to_gguf.py` with its `conversion/` package and `gguf-py`, is unpacked from the
llama-cpp-python sdist into `<venv>/llama.cpp/`, so it matches the llama.cpp that pip built from that same
sdist, and nothing is fetched once it is installed. The quantizer is `llama_model_quantize` from that
build's library, called through llama-cpp-python.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from core.errors import UserError, shortened

CONVERTER = Path(sys.prefix) / "llama.cpp" / "convert_hf_to_gguf.py"
INSTALL_HINT = "run `make export`, which installs llama.cpp's tools (requirements-export.txt) into .venv"
# The 16-bit file keeps the merged weights' own type where it can: bf16 stays bf16 (lossless), float16 and
# float32 become f16, as the converter's `auto` does.
SIXTEEN_BIT = {"bfloat16": "BF16", "float16": "F16", "float32": "F16"}
# llama.cpp's file types (enum llama_ftype); Q4_K_M falls back to Q5_0 or Q8_0 for a tensor whose rows are
# not a multiple of 256 values, as in the embedded base.
QUANTIZED = {"Q8_0": 7, "Q4_K_M": 15}


def require_tools() -> None:
    """One line when llama-cpp-python or the converter is missing from this environment.

    Also sets llama.cpp's OpenMP threads to wait passively, before its runtime starts: by default they spin
    between the steps of a graph, and on a machine whose cores are busy each spinning thread waits for a
    time slice, so that decoding one token of the embedded base took half a second instead of a millisecond.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise UserError(f"llama-cpp-python is not installed in {sys.prefix}: {INSTALL_HINT}") from None
    if not CONVERTER.is_file():
        raise UserError(f"llama.cpp's converter is not at {CONVERTER}: {INSTALL_HINT}")


def converter_failure(folder: Path, output: str) -> str:
    """One line from the converter's traceback: its last error line, and whether it was the tokenizer."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b", line)]
    reason = shortened((errors or lines or ["no output"])[-1], 300)
    if re.search(r"set_vocab|vocab\.py|_create_vocab|get_vocab_base", output):
        return f"llama.cpp's converter cannot convert the tokenizer of {folder}: {reason}"
    return f"llama.cpp's converter failed on {folder}: {reason}"


def convert(folder: Path, output: Path, kind: str) -> None:
    """The model folder as one GGUF file of `kind` (F16 or BF16), with its tokenizer and chat template
    (llama.cpp's converter, through export/converter.py)."""
    command = [sys.executable, "-m", "export.converter", str(folder), "--outfile", str(output), "--outtype"]
    result = subprocess.run([*command, kind.lower()], capture_output=True, text=True)
    if result.returncode != 0 or not output.is_file():
        raise UserError(converter_failure(folder, result.stdout + result.stderr))


def quantize(source: Path, output: Path, kind: str) -> None:
    """llama.cpp's quantizer, as `llama-quantize source output kind` runs it."""
    import llama_cpp

    # llama.cpp's per-tensor lines and fallback warnings; llama-cpp-python 0.3.36 maps ggml's warning level to
    # logging.ERROR, so only CRITICAL keeps them out. A failure still shows: as the status.
    logging.getLogger("llama-cpp-python").setLevel(logging.CRITICAL)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTIZED[kind]
    params.nthread = os.cpu_count() or 1
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(output).encode(), ctypes.byref(params))
    if status != 0 or not output.is_file():
        raise UserError(f"llama.cpp could not quantize {source} to {kind} (status {status})")
