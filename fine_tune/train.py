"""`make train`: QLoRA supervised fine-tuning with TRL's SFTTrainer on the curated dataset.

The base as `quant.bits` says: 4-bit NF4 (QLoRA) or 8-bit LLM.int8 (bitsandbytes), each prepared by
`prepare_model_for_kbit_training`, or unquantized in the compute dtype; adapters of `peft.method`
(fine_tune/peft_methods.py): LoRA by default, on `lora.target_modules` (a list, all-linear, or auto: PEFT's
choice for the architecture), loss on the completion only, evaluation on the validation split.
Checkpoints go to runs/<run>/checkpoints and the run resumes from the newest one; the final adapter is
written atomically to runs/<run>/adapter.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from core.cli import run_stage, stage_parser
from core.config import Config
from core.errors import UserError
from core.model import (
    base_tokenizer,
    compute_dtype,
    device_map,
    load_causal_lm,
    load_model_config,
    lora_targets,
    quantization_config,
    resolve_base,
)
from core.patches import (
    control_cpu_repack,
    counting_dataset_steps,
    resumable_trainer,
    score_supervised_positions_only,
)
from core.prompts import training_row
from core.runs import RunPaths, atomic_dir, require, run_folder_lock, write_json_atomic
from fine_tune.peft_methods import (
    LORA_FAMILY,
    PROVISIONAL_ADALORA_STEPS,
    adalora_budget,
    olora_initial,
    peft_config,
    save_adapter,
    save_initial_olora,
    schedule_adalora,
)
from fine_tune.report import batch_statistics, peak_cuda_mb, peak_rss_mb, plot_loss_curve
from fine_tune.resume import (
    FINGERPRINT_FILE,
    START_OVER,
    Checkpoint,
    UnreadableCheckpoint,
    check_weights,
    checkpoint_to_resume,
    read_json,
    save_fingerprint_callback,
    training_fingerprint,
    training_length,
    write_fingerprint,
)
from fine_tune.scale import (
    describe_resume,
    end_process_group,
    examples_seen,
    global_batch,
    report_preparation,
    require_fsdp_device,
    resume_plan,
    tokenization_source,
)

log = logging.getLogger(__name__)


def check_before_work(config: Config) -> None:
    """Fail, before any data or weights are loaded, on what can be checked: the optimizer's name, the base
    model's config, and that every LoRA target named (or auto's choice) is a linear layer of the base (built
    on the meta device, which allocates nothing); all-linear finds them itself."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D
    from transformers.training_args import OptimizerNames

    optimizers = [name.value for name in OptimizerNames]
    if config.train.optim not in optimizers:
        close = difflib.get_close_matches(config.train.optim, optimizers, n=3)
        raise UserError(
            f"train.optim: unknown optimizer {config.train.optim!r}"
            + (f" (did you mean {', '.join(close)}?)" if close else f" (one of {', '.join(optimizers)})")
        )
    model_config = load_model_config(resolve_base(config), config.model.revision)
    if config.peft.method == "ia3":
        from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as IA3_DEFAULTS

        if model_config.model_type not in IA3_DEFAULTS:
            raise UserError(
                f"peft.method ia3: PEFT has no default modules for a {model_config.model_type} model; use a "
                "LoRA-family method"
            )
    if config.peft.method not in LORA_FAMILY:
        return
    targets = lora_targets(config, model_config.model_type)
    if targets == "all-linear":
        return
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(model_config)
    linear = sorted(
        {
            name.rpartition(".")[2]
            for name, module in skeleton.named_modules()
            if isinstance(module, (torch.nn.Linear, Conv1D))  # Conv1D: GPT-2's linear layers
        }
    )
    unknown = [name for name in targets if name not in linear]
    if unknown:
        raise UserError(
            f"lora.target_modules: {', '.join(unknown)} not in the base model "
            f"(its linear layers: {', '.join(linear)}; or all-linear)"
        )


def load_quantized_model(config: Config, base: str):
    """The base as `quant.bits` says (4-bit, 8-bit, or unquantized in the compute dtype) with fresh adapters
    of `peft.method` (LoRA on `lora.target_modules` by default)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    model = load_causal_lm(
        base, config.quant.compute_dtype, device_map(), config.model.revision, quantization_config(config)
    )
    model.config.use_cache = False  # the cache is useless in training and breaks packed-sequence isolation
    control_cpu_repack(model, training=True)  # evaluations must not change how training computes
    if config.quant.bits in (4, 8):
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.train.gradient_checkpointing
        )
    # AdaLoRA's schedule is set to the run's real length once the trainer has counted it (schedule_adalora).
    return get_peft_model(
        model, peft_config(config, model.config.model_type, base, PROVISIONAL_ADALORA_STEPS)
    )


def sft_config(config: Config, output_dir: Path):
    from dataclasses import fields

    from trl import SFTConfig

    train = config.train
    on_gpu = torch.cuda.is_available()
    dtype = compute_dtype(config)
    # transformers 5.23 names it activation_checkpointing (gradient_checkpointing is its deprecated alias);
    # 5.17, which GPU images ship (make gpu-check runs there), knows only gradient_checkpointing.
    checkpointing = "activation_checkpointing"
    if checkpointing not in {field.name for field in fields(SFTConfig)}:
        checkpointing = "gradient_checkpointing"
    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.eval_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        learning_rate=train.learning_rate,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,
        optim=train.optim,
        bf16=on_gpu and dtype == torch.bfloat16,
        fp16=on_gpu and dtype == torch.float16,
        use_cpu=not on_gpu,
        **{checkpointing: train.gradient_checkpointing},
        max_length=train.max_length,
        packing=train.packing,
        # A document longer than a row goes on in the next (plain text); other rows were cut to fit.
        packing_strategy="bfd_split" if config.data.text else "bfd",
        completion_only_loss=train.completion_only_loss,
        train_sampling_strategy="group_by_length" if train.group_by_length else "random",
        logging_steps=train.logging_steps,
        eval_strategy="steps",
        eval_steps=train.eval_steps,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        load_best_model_at_end=train.load_best_model_at_end,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        # Every LoRA weight takes part in every forward pass: DDP need not search the graph for unused ones.
        ddp_find_unused_parameters=False,
        seed=config.run.seed,
        data_seed=config.run.seed,
        dataloader_num_workers=0,
    )


def build_trainer(config: Config, paths: RunPaths, fingerprint: dict[str, Any]):
    """The SFTTrainer of this run: QLoRA model, curated dataset, callbacks for stopping, TensorBoard and the
    run's fingerprint in every checkpoint."""
    from datasets import disable_caching, enable_caching, load_from_disk
    from transformers import EarlyStoppingCallback, set_seed
    from transformers.integrations import TensorBoardCallback
    from trl import SFTTrainer

    several_processes = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if several_processes:
        # Tokenized and packed once: TRL prepares the dataset on the main process first, and the others
        # read the cache it left, beside a copy of hard links, never in the curated dataset's folder.
        enable_caching()
        source = tokenization_source(paths.dataset / "data", paths.root / "tokenized", fingerprint["dataset"])
    else:
        # One process has nobody to share with: tokenized copies go to temporary files.
        disable_caching()
        source = paths.dataset / "data"
    set_seed(config.run.seed)
    base = resolve_base(config)
    tokenizer = base_tokenizer(config)
    args = sft_config(config, paths.checkpoints)
    # The main process tokenizes first, then each machine's (as TRL prepares): the others read their cache.
    with (
        counting_dataset_steps() as steps,
        args.main_process_first(local=False, desc="tokenizing"),
        args.main_process_first(local=True, desc="tokenizing"),
    ):
        key = hashlib.sha256(
            json.dumps([fingerprint["dataset"], fingerprint["settings"]]).encode()
        ).hexdigest()
        curated = load_from_disk(str(source))
        if "controls" not in curated["train"].column_names and config.data.prompt_format != "llama2":
            raise UserError(
                f"{paths.dataset} was curated by an earlier version, which did not record where the chat "
                "template wrote its control tokens: run make data again"
            )
        dataset = tokenized_rows(curated, tokenizer, key[:16])
    model = load_quantized_model(config, base)
    tensorboard = TensorBoardCallback()
    tensorboard.logging_dir = str(paths.logs)  # else the evaluation after training logs to checkpoints/runs
    callbacks = [tensorboard, save_fingerprint_callback(fingerprint)]
    if config.peft.method == "adalora":
        callbacks.append(adalora_budget())
    if config.peft.method == "olora" and args.process_index == 0:  # only the main process writes adapters
        save_initial_olora(model, olora_initial(paths))
    if config.train.early_stopping_patience and config.train.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.train.early_stopping_patience))
    with counting_dataset_steps() as preparing:
        trainer = resumable_trainer(SFTTrainer)(
            model=model,
            args=args,
            train_dataset=dataset["train"],
            eval_dataset=dataset["validation"],
            processing_class=tokenizer,
            callbacks=callbacks,
        )
    adapters_in_compute_precision(trainer.model, compute_dtype(config))
    if several_processes:
        steps.computed, steps.read = steps.computed + preparing.computed, steps.read + preparing.read
        report_preparation(steps, source, args.process_index, args.world_size)
    return trainer


def tokenized_rows(dataset: Any, tokenizer: Any, cache_key: str | None = None) -> Any:
    """Each split's rows as ids: BOS, prompt, completion and EOS (core/model.training_ids_batch: the data's
    text stays text, only the format's control tokens are controls) and `completion_mask` (the completion,
    EOS and a conversation's earlier answers), which SFTTrainer takes as they are: it tokenizes text itself
    with special-token matching on, turning an answer's `</s>` into EOS.
    `cache_key` names the result in the datasets cache, the same in every process of a run, so that the
    others read what the main process wrote (a fingerprint of the function would hash the tokenizer)."""
    from datasets import DatasetDict

    from core.model import training_ids_batch

    def encode(batch: dict[str, list]) -> dict[str, list]:
        rows = [
            training_row({name: batch[name][index] for name in batch})
            for index in range(len(batch["prompt"]))
        ]
        encoded = training_ids_batch(tokenizer, rows)
        return {"input_ids": [ids for ids, _ in encoded], "completion_mask": [mask for _, mask in encoded]}

    def mapped(split: Any, name: str) -> Any:
        fingerprint = f"tokenized-{cache_key}-{name}" if cache_key else None
        return split.map(
            encode,
            batched=True,
            remove_columns=split.column_names,
            new_fingerprint=fingerprint,
            desc="Tokenizing",
        )

    if isinstance(dataset, DatasetDict):
        return DatasetDict({name: mapped(split, name) for name, split in dataset.items()})
    return mapped(dataset, "rows")


def adapters_in_compute_precision(model: Any, dtype: torch.dtype) -> None:
    """Trainable weights in bf16 only where the model computes in bf16, else in float32.

    SFTTrainer casts a quantized model's LoRA weights to bf16, QLoRA's recipe for a bf16 GPU. Computing in
    float32 (a CPU) or fp16 (a GPU without bf16), they are kept in float32: on a CPU without bf16 units the
    bf16 matmuls made a tiny-profile step 3x slower, and a bf16 weight loses every update smaller than
    1/256 of itself; fp16 training needs float32 weights for its gradient scaler."""
    if dtype == torch.bfloat16:
        return
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()


def write_adapter_from_checkpoint(
    config: Config, checkpoint: Checkpoint, paths: RunPaths, fingerprint: dict[str, Any]
) -> None:
    """The adapter of a run that finished but was stopped before writing it (or whose adapter was damaged):
    the best checkpoint's adapter when the run keeps the best, else the last one's."""
    source = checkpoint.path
    best = checkpoint.best_checkpoint
    if config.train.load_best_model_at_end and best is not None and best.is_dir():
        source = best
    with atomic_dir(paths.adapter) as staging:
        if config.peft.method == "olora":  # its checkpoints fit only the base OLoRA mutated: converted here
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            model = load_quantized_model(config, resolve_base(config))  # mutates the base as training did
            save_initial_olora(model, olora_initial(paths))
            set_peft_model_state_dict(model, load_file(source / "adapter_model.safetensors"))
            save_adapter(model, staging, config, olora_initial(paths))
        else:
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copy2(source / name, staging / name)
        # This run's fingerprint, not the checkpoint's: a best checkpoint saved before the run was lengthened
        # holds the old length, and the adapter would then never count as this run's.
        write_fingerprint(staging, fingerprint)
        base_tokenizer(config).save_pretrained(staging)
    log.info("adapter written from %s: %s", source, paths.adapter)


def adapter_matches(paths: RunPaths, fingerprint: dict[str, Any]) -> bool:
    """The adapter folder holds a whole adapter trained on this fingerprint."""
    try:
        check_weights(paths.adapter)
        return read_json(paths.adapter / FINGERPRINT_FILE) == fingerprint
    except UnreadableCheckpoint:
        return False


def report_summary(report: dict[str, Any]) -> str:
    """The train report as a few readable lines (the JSON file has everything)."""
    resumed = f"resumed from step {report['resumed_at_step']}, " if report["resumed_from"] else ""
    return "\n".join(
        [
            f"trained    {report['steps_this_run']} steps in {report['wall_seconds']:.0f} s ({resumed}"
            f"step {report['steps']} of the run, {report['world_size']} process(es))",
            f"loss       train {report['final_train_loss']}, validation {report['eval_loss']}",
            f"speed      {report['tokens_per_second']:,.0f} tokens/s, "
            f"{report['supervised_tokens_per_second']:,.0f} supervised tokens/s, "
            f"padding {report['padding_fraction']:.1%}",
            f"memory     peak RSS {report['peak_rss_mb']:,.0f} MB"
            + (f", peak CUDA {report['peak_cuda_mb']:,.0f} MB" if report["peak_cuda_mb"] else ""),
            f"parameters {report['trainable_parameters']:,} trainable of {report['total_parameters']:,}",
        ]
    )


def main(config: Config, args: argparse.Namespace) -> None:
    paths = RunPaths.of(config)
    require_fsdp_device()
    check_before_work(config)
    with run_folder_lock(paths, "make train"):
        try:
            train(config, paths)
        finally:
            end_process_group()


def train(config: Config, paths: RunPaths) -> None:
    require(paths.dataset / "data", "curated dataset", "make data")
    fingerprint = training_fingerprint(config, paths.dataset / "data")
    if config.train.resume == "never" and paths.checkpoints.exists():
        log.info("train.resume=never: deleting the checkpoints in %s to start over", paths.checkpoints)
        shutil.rmtree(paths.checkpoints)
    resume = checkpoint_to_resume(config, paths.checkpoints, fingerprint)
    if resume is not None and resume.stopped and resume.length == training_length(config):
        if adapter_matches(paths, fingerprint):
            log.info(
                "this run is complete (step %d, %s): nothing to train. Raise train.epochs or train.max_steps "
                "to continue it; train.resume=never starts over",
                resume.step, paths.adapter,
            )  # fmt: skip
            return
        write_adapter_from_checkpoint(config, resume, paths, fingerprint)
        return

    trainer = build_trainer(config, paths, fingerprint)
    trainable, total = trainer.model.get_nb_trainable_parameters()
    log.info("trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / total)
    dataloader = trainer.get_train_dataloader()
    epoch = batch_statistics(dataloader)
    if resume is not None:  # where in the data, on any number of processes (fine_tune/scale.py)
        trainer.resume_plan = resume_plan(trainer, resume, config)
    planned_steps = trainer.set_initial_training_values(trainer.args, dataloader)[-1]
    if config.peft.method == "adalora":
        schedule_adalora(trainer.model, planned_steps)
    if resume is not None:
        if planned_steps <= resume.step:
            raise UserError(
                f"{resume.path} is already at step {resume.step}, and this run's length is {planned_steps} "
                f"steps: raise train.epochs or train.max_steps to continue it, or {START_OVER}"
            )
        log.info(
            "resuming from %s: step %d of %d%s%s (train.resume=never starts over)",
            resume.path, resume.step, planned_steps,
            "" if resume.length == training_length(config) else ", continuing to the new length",
            describe_resume(trainer.resume_plan, len(trainer.train_dataset), config),
        )  # fmt: skip

    started = time.perf_counter()
    with score_supervised_positions_only():
        result = trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
        wall_seconds = time.perf_counter() - started
        evaluation = trainer.evaluate()
    if not trainer.is_world_process_zero():
        return

    with atomic_dir(paths.adapter) as staging:
        save_adapter(trainer.model, staging, config, olora_initial(paths))
        trainer.processing_class.save_pretrained(staging)
        write_fingerprint(staging, fingerprint)
    # Figures are of this process's work only: the steps, tokens and time since it started or resumed.
    # The batch statistics are of this process's share of an epoch; scale them to the world size.
    resumed_at = resume.step if resume else 0
    steps_this_run = trainer.state.global_step - resumed_at
    epochs_this_run = steps_this_run * config.train.gradient_accumulation_steps / epoch["batches_per_epoch"]
    supervised_tokens = epoch["supervised_tokens_per_epoch"] * trainer.args.world_size * epochs_this_run
    tokens_this_run = trainer.state.num_input_tokens_seen - (resume.tokens_seen if resume else 0)
    report = {
        "wall_seconds": round(wall_seconds, 2),
        "steps": trainer.state.global_step,
        "steps_this_run": steps_this_run,
        "world_size": trainer.args.world_size,
        "global_batch": global_batch(trainer.args),
        "examples_seen": examples_seen(trainer),
        "resumed_from": str(resume.path) if resume else None,
        "resumed_from_world_size": resume.world_size if resume else None,
        "resumed_at_step": resumed_at,
        "packing": config.train.packing,
        "input_tokens_seen": trainer.state.num_input_tokens_seen,
        "input_tokens_this_run": tokens_this_run,
        "tokens_per_second": round(tokens_this_run / wall_seconds, 1),
        "supervised_tokens_per_second": round(supervised_tokens / wall_seconds, 1),
        **epoch,
        "peak_rss_mb": peak_rss_mb(),
        "peak_cuda_mb": peak_cuda_mb(),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "final_train_loss": round(result.training_loss, 4),
        "eval_loss": round(evaluation["eval_loss"], 4),
        "log_history": trainer.state.log_history,
    }
    write_json_atomic(paths.reports / "train_report.json", report)
    plot_loss_curve(trainer.state.log_history, paths.reports / "loss_curve.png")
    log.info("%s", report_summary(report))
    log.info(
        "adapter: %s; report: %s; loss curve: %s",
        paths.adapter, paths.reports / "train_report.json", paths.reports / "loss_curve.png",
    )  # fmt: skip


if __name__ == "__main__":
    run_stage(main, stage_parser(__doc__.splitlines()[0]))
