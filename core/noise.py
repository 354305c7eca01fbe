"""Library messages that tell a user of this tool nothing: silenced, so that what a stage prints is its own.

Each entry names a message a library prints on every run of a stage that works as intended.
"""

from __future__ import annotations

import logging
import re
import warnings

# (warning category, start of the message, why it says nothing here)
IGNORED_WARNINGS = [
    # bitsandbytes on a CPU: the paged optimizer runs unpaged, which is what a CPU run wants.
    (UserWarning, "Paged optimizers are not supported on CPU"),
    # A deprecation inside PEFT's prepare_model_for_kbit_training, raised by its own call to transformers.
    (FutureWarning, "`is_gradient_checkpointing` is deprecated"),
]
# (logger, start of the message): library log lines about the library's own internals.
IGNORED_LOG_LINES = [
    # Checkpoint rotation on filesystems with coarse timestamps: it orders by step number instead.
    ("transformers.trainer_utils", "mtime may not be reliable"),
    # quant.bits 8: LLM.int8 casts every layer's input to float16, as it is meant to, and says so on every
    # matrix product in any other compute dtype (float32 on a CPU, bfloat16 on most GPUs).
    ("bitsandbytes.autograd._functions", "MatMul8bitLt: inputs will be cast"),
    # On a CPU with AVX-512 BF16 only: bitsandbytes would fetch a faster inference kernel from the Hub with
    # the `kernels` package, and uses its own built-in one without (training uses neither: core/patches.py).
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
    # The Hub client's "'<network error>' thrown while requesting HEAD <url>" and "Retrying in 4s [Retry
    # 3/5]", twice a try: the stage says that it asks the Hub, then in one line what could not be had.
    ("huggingface_hub.utils._http", "'"),
    ("huggingface_hub.utils._http", "Retrying in "),
]


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: list[str]) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def silence_library_noise() -> None:
    for category, message in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)
    by_logger: dict[str, list[str]] = {}
    for name, message in IGNORED_LOG_LINES:
        by_logger.setdefault(name, []).append(message)
    for name, prefixes in by_logger.items():
        logging.getLogger(name).addFilter(_DropMessages(prefixes))
