"""Training on several processes and machines: where a resumed run continues in the data, whatever the number
of processes it was checkpointed under, and the tokenized dataset made once for every process.

**Resume on another world size.** The trainer's order of the training rows does not depend on the number of
processes: each epoch is one seeded permutation, cut into batches of `train.batch_size`, and process k of n
takes batches k, k + n, k + 2n, ... (the last round is filled with the epoch's first batches). So a global
step consumes the next n x accumulation batches of that one order, and the position reached in it is what a
checkpoint must hand on. transformers' Trainer recomputes the position from the step count at the new world
size (step x the new global batch): resumed on 2 processes, a checkpoint of 1 process skips twice the rows
it trained on; on 1, a checkpoint of 2 trains half of its rows again. `plan_resume` takes the position from
the checkpoint instead (its epoch progress and the world size it was saved under), so the run goes on with
the next row it had not trained on. Kept: the optimizer step count and state, the learning-rate schedule
(the same rate at the same step; the run's length in steps is the checkpoint's unless train.epochs or
train.max_steps changed) and the rows seen. The remaining steps take the new global batch.

**Tokenize once** (several processes only). TRL prepares (tokenizes, masks, packs) the dataset on the main
process first and then on the others; `datasets` caches each step next to the dataset's files, and those
others read the cache instead of preparing it again. The curated dataset's folder must stay as `make data`
wrote it (its digest is the run's fingerprint), so training reads a copy made of hard links in
`runs/<run>/tokenized/<digest>/`, and the cache lands there.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import Config
from core.errors import UserError
from core.patches import DatasetSteps
from fine_tune.resume import Checkpoint, training_length

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResumePlan:
    """Where a resumed run continues: in the Trainer's terms (the epoch, the batches each process skips in it,
    the run's length in steps, the epochs its loop runs) and in rows of the training set."""

    epoch: int
    skip_batches: int
    max_steps: int
    num_train_epochs: int
    rows_seen: int  # rows trained on before the checkpoint, counting each epoch's pass
    rows_again: int  # rows of the current epoch trained a second time: the position is not a whole new step
    rows_at_end: int  # rows trained on when the run reaches its last step
    old_world_size: int
    world_size: int
    old_global_batch: int
    global_batch: int


def batches_per_epoch(rows: int, batch_size: int) -> int:
    """Batches of the one seeded order, whatever the number of processes (the last one may be short)."""
    return math.ceil(rows / batch_size)


def epoch_position(progress: float, world_size: int, rows: int, batch_size: int) -> tuple[int, int]:
    """(epoch, batches of the seeded order consumed in it) from the Trainer's epoch progress, a float that it
    advances by 1 / (batches per process per epoch) at every batch."""
    total = batches_per_epoch(rows, batch_size)
    per_process = math.ceil(total / world_size)
    epoch = math.floor(progress)
    consumed = round((progress - epoch) * per_process)
    if consumed >= per_process:  # the float landed just below a whole epoch
        epoch, consumed = epoch + 1, 0
    return epoch, min(consumed * world_size, total)


def rows_seen(progress: float, world_size: int, rows: int, batch_size: int) -> int:
    """Rows trained on, counting each epoch's pass (the last round's fill-ins not counted)."""
    epoch, batches = epoch_position(progress, world_size, rows, batch_size)
    return epoch * rows + min(batches * batch_size, rows)


def plan_resume(
    *,
    step: int,
    progress: float,
    old_world_size: int,
    world_size: int,
    rows: int,
    batch_size: int,
    accumulation: int,
    checkpoint_max_steps: int,
    max_steps: int,
    epochs: float,
    length_changed: bool,
) -> ResumePlan:
    """Where the run continues from a checkpoint at `step` whose epoch progress is `progress` under
    `old_world_size` processes, now on `world_size`. Without a change of world size this is the Trainer's own
    arithmetic (step modulo the steps per epoch)."""
    total = batches_per_epoch(rows, batch_size)
    steps_per_epoch = max(math.ceil(math.ceil(total / world_size) / accumulation), 1)
    epoch, consumed = epoch_position(progress, old_world_size, rows, batch_size)
    per_step = world_size * accumulation  # batches of the order one step takes now
    skip_steps = consumed // per_step
    if skip_steps >= steps_per_epoch:
        epoch, consumed, skip_steps = epoch + 1, 0, 0
    if max_steps > 0:
        length = max_steps
    elif not length_changed:
        length = checkpoint_max_steps  # the run's length in steps, fixed when it started
    else:  # train.epochs changed: the steps that reach it from here
        length = step + max(math.ceil(epochs * steps_per_epoch) - (epoch * steps_per_epoch + skip_steps), 0)
    left = max(length - step, 0)
    first = steps_per_epoch - skip_steps  # the steps left in this epoch
    epochs_to_run = epoch + 1 + (math.ceil((left - first) / steps_per_epoch) if left > first else 0)
    if left < first:
        end_epoch, end_step = epoch, skip_steps + left
    else:
        end_epoch, end_step = epoch + 1 + (left - first) // steps_per_epoch, (left - first) % steps_per_epoch
    return ResumePlan(
        epoch=epoch,
        skip_batches=skip_steps * accumulation,
        max_steps=length,
        num_train_epochs=epochs_to_run,
        rows_seen=epoch * rows + min(consumed * batch_size, rows),
        rows_again=min(consumed * batch_size, rows) - min(skip_steps * per_step * batch_size, rows),
        rows_at_end=end_epoch * rows + min(end_step * per_step * batch_size, rows),
        old_world_size=old_world_size,
        world_size=world_size,
        old_global_batch=old_world_size * batch_size * accumulation,
        global_batch=world_size * batch_size * accumulation,
    )


def resume_plan(trainer: Any, checkpoint: Checkpoint, config: Config) -> ResumePlan:
    """`plan_resume` for this trainer (its prepared training set and world size) and checkpoint."""
    world_size = trainer.args.world_size
    return plan_resume(
        step=checkpoint.step,
        progress=checkpoint.progress,
        old_world_size=checkpoint.world_size or world_size,
        world_size=world_size,
        rows=len(trainer.train_dataset),
        batch_size=trainer.args.per_device_train_batch_size,
        accumulation=trainer.args.gradient_accumulation_steps,
        checkpoint_max_steps=checkpoint.max_steps,
        max_steps=config.train.max_steps,
        epochs=config.train.epochs,
        length_changed=checkpoint.length != training_length(config),
    )


def examples_seen(trainer: Any) -> int:
    """Rows of the training set the run has trained on, counting each epoch's pass."""
    args = trainer.args
    return rows_seen(
        trainer.state.epoch or 0.0,
        args.world_size,
        len(trainer.train_dataset),
        args.per_device_train_batch_size,
    )


def describe_resume(plan: ResumePlan, rows: int, config: Config) -> str:
    """What the line announcing a resume adds: the position in the data and, on another world size, what
    changes and what is not kept."""
    epoch_rows = plan.rows_seen - plan.epoch * rows
    where = f"row {epoch_rows} of {rows} in epoch {plan.epoch + 1}"
    if plan.world_size == plan.old_world_size:
        return f"; the data continues at {where}"
    text = (
        f"; checkpointed on {plan.old_world_size} process(es), now {plan.world_size}: "
        f"global batch {plan.old_global_batch} -> {plan.global_batch} rows per step"
    )
    if plan.rows_again:
        text += (
            f"; the data order is kept but not the exact position: {plan.rows_again} rows before {where} are "
            f"trained again ({epoch_rows} is not a multiple of {plan.global_batch})"
        )
    else:
        text += f"; the data continues in the same order at {where}"
    text += (
        f"; the run is {plan.max_steps} steps long (the learning-rate schedule with it) and ends after "
        f"{plan.rows_at_end} rows ({plan.rows_at_end / rows:.2f} epochs)"
    )
    if config.lora.dropout > 0:
        text += "; the random state is not carried across world sizes: dropout masks are drawn anew"
    return text


# Tokenize once.


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, destination)


def tokenization_source(dataset: Path, tokenized: Path, digest: str) -> Path:
    """The curated dataset as hard links in `tokenized/<digest>/`, made once, so that the cache of its
    tokenized and packed forms lands there. Every process may call it at the same time: each builds its own
    copy and the first renamed into place is kept. Copies of an older dataset are removed, and staging
    folders a killed process left (an hour old: one of another machine sharing the folder may be in the
    making)."""
    target = tokenized / digest[:16]
    if not target.is_dir():
        tokenized.mkdir(parents=True, exist_ok=True)
        staging = tokenized / f".{target.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
        shutil.copytree(dataset, staging, copy_function=_link_or_copy)
        try:
            staging.rename(target)
        except OSError:  # another process was first
            shutil.rmtree(staging, ignore_errors=True)
            if not target.is_dir():
                raise
    for other in tokenized.iterdir():
        if other.name == target.name:
            continue
        try:
            stale = not other.name.startswith(".") or time.time() - other.stat().st_mtime > 3600
        except FileNotFoundError:  # another process removed it
            continue
        if stale:
            shutil.rmtree(other, ignore_errors=True)
    return target


def report_preparation(steps: DatasetSteps, cache: Path, rank: int, world_size: int) -> None:
    """One line per process: whether it prepared the dataset or read what another process had prepared."""
    who = f"process {rank} of {world_size}: " if world_size > 1 else ""
    if steps.computed:
        log.info(
            "%stokenized the dataset into %s (%d steps computed, %d read)",
            who,
            cache,
            steps.computed,
            steps.read,
        )
    else:
        log.info("%sread the tokenized dataset from %s (%d steps, none computed)", who, cache, steps.read)


def global_batch(args: Any) -> int:
    """Rows per optimizer step over every process."""
    return args.world_size * args.per_device_train_batch_size * args.gradient_accumulation_steps


def end_process_group() -> None:
    """Leave the processes' group (torch.distributed's public teardown) before this process exits. A process
    left to tear it down at interpreter exit can abort there (SIGABRT, "terminate called without an active
    exception": seen once in tests/test_scale_out.py's two-machine run on a CPU), so that torchrun reports a
    run that trained to its end as failed."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def require_fsdp_device() -> None:
    """FSDP (configs/accelerate/fsdp_qlora.yaml) shards on GPUs only: accelerate 1.15 makes a run FSDP only
    on CUDA-like devices, and on CPUs would train with plain DDP (or, with fsdp_sync_module_states, stop in
    a traceback looking for a device). Refused in one line instead."""
    import torch

    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not torch.cuda.is_available():
        raise UserError(
            "FSDP (an accelerate config with distributed_type: FSDP) needs CUDA GPUs and this machine has "
            "none: accelerate shards a model only on GPUs. On CPUs train with NPROC=N (DDP over gloo), "
            "with or without ACCELERATE_CONFIG=configs/accelerate/ddp.yaml"
        )
