"""Every place this project reaches into a library's internals, in one module.

Each entry names the library version it was written against, why no public API does the job, and the test
in tests/test_patches.py that fails when the library changes what it relies on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

log = logging.getLogger(__name__)

# bitsandbytes' 4-bit CPU kernel for AVX-512 BF16 (written against 0.50.2): the layout it repacks a weight
# into puts 32 output rows side by side and keeps one scale per 64 inputs.
CPU_REPACK_ROWS = 32
CPU_REPACK_BLOCK = 64


def cpu_repack_fits(out_features: int, in_features: int) -> bool:
    """Whether bitsandbytes' AVX-512 BF16 kernel can repack a 4-bit layer of this shape."""
    return out_features % CPU_REPACK_ROWS == 0 and in_features % CPU_REPACK_BLOCK == 0


def control_cpu_repack(model: Any, training: bool) -> int:
    """Decide, for every 4-bit layer of `model`, whether bitsandbytes may repack it for its bfloat16 CPU
    kernel; returns how many layers may.

    bitsandbytes 0.50 repacks a `Linear4bit` on the first forward pass without gradients on a CPU with
    AVX-512 BF16 (`support_avx512bf16_for_cpu and not self.training`), and never unpacks it. In training
    that pass is the first evaluation, and from then on the layer computes through the inference kernel:
    with bfloat16 scales and no gradient to its input, so a run that evaluates learns other weights than
    one that does not. And the repack fails with a traceback on a layer whose sizes do not fit the kernel.
    So training never repacks, and inference repacks exactly the layers that fit (the others keep the
    path every CPU has)."""
    from bitsandbytes.nn import Linear4bit

    repacked = 0
    for module in model.modules():
        if not isinstance(module, Linear4bit):
            continue
        allowed = (
            not training
            and module.support_avx512bf16_for_cpu
            and cpu_repack_fits(module.out_features, module.in_features)
        )
        module.support_avx512bf16_for_cpu = allowed
        repacked += allowed
    return repacked


@contextmanager
def score_supervised_positions_only() -> Iterator[None]:
    """While training runs, make TRL's fused LM head score only the positions that have a label, on a CPU too.

    TRL (written against 1.16) does so on Triton devices only (elsewhere a varying number of positions
    would recompile the tiles) and has no public switch: `trl.trainer.utils._use_triton` decides. Eager CPU
    training compiles nothing, and for a small model the LM head and its log-softmax over the vocabulary
    cost as much as the decoder layers: scoring the prompt positions too took 35.1 s for a tiny epoch
    instead of 25.6 s. The loss and the gradients are the same (a test checks). The library's own function
    is put back on exit."""
    import trl.trainer.utils as trl_utils

    on_triton = getattr(trl_utils, "_use_triton", None)
    if on_triton is None:  # another TRL: training stays correct, only slower on a CPU (a test notices)
        log.warning("this TRL has no trl.trainer.utils._use_triton: the LM head scores every position")
        yield
        return

    def compact(device: torch.device) -> bool:
        return device.type == "cpu" or on_triton(device)

    trl_utils._use_triton = compact
    try:
        yield
    finally:
        trl_utils._use_triton = on_triton


def sft_training_rows(dataset: Any, tokenizer: Any, args: Any) -> Any:
    """The training split as SFTTrainer prepares it (labels from the completion mask, packed or truncated),
    without building a trainer, hence without a model.

    TRL (written against 1.16) does this in `SFTTrainer._prepare_dataset`, a method with no public
    equivalent; it reads only `_tokenizer`, `chat_template` (None unless assistant_only_loss) and
    `completion_only_loss` of the trainer. `make inspect` calls it on a stand-in with those three, and a
    test checks its rows against a real trainer's."""
    from types import SimpleNamespace

    from trl import SFTTrainer

    completion_only = True if args.completion_only_loss is None else args.completion_only_loss
    stand_in = SimpleNamespace(_tokenizer=tokenizer, chat_template=None, completion_only_loss=completion_only)
    return SFTTrainer._prepare_dataset(stand_in, dataset, tokenizer, args, args.packing, None, "train")


def sft_collator(tokenizer: Any, args: Any) -> Any:
    """The data collator SFTTrainer builds for text rows (TRL 1.16: padding-free when packing with BFD)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    padding_free = args.padding_free or (args.packing and args.packing_strategy in {"bfd", "bfd_split"})
    return DataCollatorForLanguageModeling(
        pad_token_id=tokenizer.pad_token_id,
        padding_free=padding_free,
        pad_to_multiple_of=args.pad_to_multiple_of,
    )


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Intel Sapphire Rapids and later); torch 2.13's probe, no public one."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


@contextmanager
def llama_cpp_without_amx() -> Iterator[None]:
    """While a llama-cpp-python model loads on a CPU with AMX: no extra buffer types (llama.cpp's AMX kernels
    and weight repacking), everywhere else llama.cpp's defaults.

    llama-cpp-python 0.3.36 (llama.cpp as its sdist vendors it, built for the native CPU) crashes with a
    segmentation fault in its AMX int8 kernels on the embedded base's Q8_0 and Q4_K_M files (128 wide).
    `Llama` takes no option for `llama_model_params.use_extra_bufts`; it builds its parameters from
    `llama_cpp.llama_cpp.llama_model_default_params`, which this swaps for the load."""
    import llama_cpp.llama_cpp as low_level

    if not cpu_has_amx():
        yield
        return
    default = low_level.llama_model_default_params

    def without_extra_buffers() -> Any:
        params = default()
        params.use_extra_bufts = False
        return params

    low_level.llama_model_default_params = without_extra_buffers
    try:
        yield
    finally:
        low_level.llama_model_default_params = default


# transformers' Trainer (written against 5.23; 5.17 on the GPU images): resuming on another number of
# processes (fine_tune/scale.py: plan_resume) must set the epoch and the batches to skip, and the step count,
# that `_inner_training_loop` takes from `_init_training_state` and `set_initial_training_values`. No argument
# or callback sets them: the subclass overrides the two. tests/test_patches.py checks their signatures and
# that the loop still calls them.
def resumable_trainer(base: type) -> type:
    """`base` (SFTTrainer) that resumes where a plan says (`trainer.resume_plan`, fine_tune/scale.py's
    ResumePlan: num_train_epochs, max_steps, epoch, skip_batches), and as `base` without one."""

    class ResumableTrainer(base):
        resume_plan: Any = None

        def set_initial_training_values(self, args, dataloader):
            values = super().set_initial_training_values(args, dataloader)
            plan = self.resume_plan
            if plan is None:
                return values
            epochs, *middle, _max_steps = values
            return (max(epochs, plan.num_train_epochs), *middle, plan.max_steps)

        def _init_training_state(
            self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        ):
            epoch, skip = super()._init_training_state(
                max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
            )
            plan = self.resume_plan
            if plan is None or resume_from_checkpoint is None or self.args.ignore_data_skip:
                return epoch, skip
            return plan.epoch, plan.skip_batches

    return ResumableTrainer


# datasets (written against 5.2): whether a process computed a step of the dataset's preparation or read it
# from the cache another process wrote is said only in its log messages (no return value or event says it),
# so they are counted by their opening words. tests/test_patches.py checks that datasets still logs them.
CACHE_WRITTEN = "Caching processed dataset at"
CACHE_READ = "Loading cached processed dataset at"


class DatasetSteps(logging.Handler):
    """Counts the `datasets` steps computed and written to the cache, and those read from it."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.computed = 0
        self.read = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(CACHE_WRITTEN):
            self.computed += 1
        elif message.startswith(CACHE_READ):
            self.read += 1


@contextmanager
def counting_dataset_steps() -> Iterator[DatasetSteps]:
    """While the trainer prepares the dataset: how many steps this process computed and how many it read."""
    logger = logging.getLogger("datasets.arrow_dataset")
    saved = logger.level, logger.propagate
    steps = DatasetSteps()
    logger.addHandler(steps)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the library's own handler would print them
    try:
        yield steps
    finally:
        logger.removeHandler(steps)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
