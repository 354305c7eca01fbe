"""`make train`: QLoRA supervised fine-tuning with TRL's SFTTrainer on the curated dataset.

4-bit NF4 base (bitsandbytes), `prepare_model_for_kbit_training`, LoRA adapters (PEFT), loss on the
completion only, evaluation on the validation split. Checkpoints go to runs/<run>/checkpoints and the
run resumes from the newest one; the final adapter is written atomically to runs/<run>/adapter.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from core.cli import run_stage, stage_parser
from core.config import Config
from core.errors import UserError
from core.model import compute_dtype, device_map, load_tokenizer, quantization_config, resolve_base
from core.runs import RunPaths, atomic_dir, require, write_json_atomic
from fine_tune.report import batch_statistics, peak_cuda_mb, peak_rss_mb, plot_loss_curve

log = logging.getLogger(__name__)


def load_quantized_model(config: Config, base: str):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    dtype = compute_dtype(config)
    model = AutoModelForCausalLM.from_pretrained(
        base,
        revision=config.model.revision,
        quantization_config=quantization_config(config) if config.quant.load_in_4bit else None,
        dtype=dtype,
        device_map=device_map(),
    )
    model.config.use_cache = False  # the cache is useless in training and breaks packed-sequence isolation
    if config.quant.load_in_4bit:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.train.gradient_checkpointing
        )
    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        bias=config.lora.bias,
        target_modules=config.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def sft_config(config: Config, output_dir: Path):
    from trl import SFTConfig

    train = config.train
    on_gpu = torch.cuda.is_available()
    dtype = compute_dtype(config)
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
        gradient_checkpointing=train.gradient_checkpointing,
        max_length=train.max_length,
        packing=train.packing,
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
        seed=config.run.seed,
        data_seed=config.run.seed,
        dataloader_num_workers=0,
    )


def score_supervised_positions_only() -> None:
    """Make TRL's fused LM head score only the positions that have a label, on a CPU too.

    TRL does so on Triton devices only (elsewhere a varying number of positions would recompile the tiles).
    Eager CPU training compiles nothing, and for a small model the LM head and its log-softmax over the
    vocabulary cost as much as the decoder layers: scoring the prompt positions too took 35.1 s for a
    tiny epoch instead of 25.6 s. The loss and the gradients are the same (a test checks)."""
    import trl.trainer.utils as trl_utils

    on_triton = getattr(trl_utils, "_use_triton", None)
    if on_triton is None:  # another TRL: training stays correct, only slower on a CPU (a test notices)
        log.warning("this TRL has no trl.trainer.utils._use_triton: the LM head scores every position")
        return
    if getattr(on_triton, "scores_supervised_positions_only", False):
        return

    def compact(device: torch.device) -> bool:
        return device.type == "cpu" or on_triton(device)

    compact.scores_supervised_positions_only = True
    trl_utils._use_triton = compact


def latest_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest checkpoint whose save finished: the trainer writes trainer_state.json last."""
    complete = [path for path in checkpoints.glob("checkpoint-*") if (path / "trainer_state.json").is_file()]
    return max(complete, key=lambda path: int(path.name.rpartition("-")[2]), default=None)


def checkpoint_to_resume(config: Config, checkpoints: Path) -> str | None:
    if config.train.resume == "never":
        return None
    if config.train.resume == "auto":
        latest = latest_complete_checkpoint(checkpoints)
        return str(latest) if latest else None
    path = Path(config.train.resume)
    if not (path / "trainer_state.json").is_file():
        raise UserError(f"train.resume: {path} is not a complete checkpoint (no trainer_state.json)")
    return str(path)


def build_trainer(config: Config, paths: RunPaths):
    """The SFTTrainer of this run: QLoRA model, curated dataset, callbacks for stopping and TensorBoard."""
    from datasets import disable_caching, load_from_disk
    from torch.utils.tensorboard import SummaryWriter
    from transformers import EarlyStoppingCallback, set_seed
    from transformers.integrations import TensorBoardCallback
    from trl import SFTTrainer

    # Tokenized copies go to temporary files, never into the curated dataset's folder.
    disable_caching()
    dataset = load_from_disk(str(require(paths.dataset / "data", "curated dataset", "make data")))
    set_seed(config.run.seed)
    base = resolve_base(config)
    tokenizer = load_tokenizer(base, config.model.revision)
    model = load_quantized_model(config, base)
    callbacks = [TensorBoardCallback(SummaryWriter(log_dir=str(paths.logs)))]
    score_supervised_positions_only()
    if config.train.early_stopping_patience and config.train.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.train.early_stopping_patience))
    return SFTTrainer(
        model=model,
        args=sft_config(config, paths.checkpoints),
        train_dataset=dataset["train"],
        eval_dataset=dataset["validation"],
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def main(config: Config, args: argparse.Namespace) -> None:
    paths = RunPaths.of(config)
    trainer = build_trainer(config, paths)
    trainable, total = trainer.model.get_nb_trainable_parameters()
    log.info("trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / total)
    epoch = batch_statistics(trainer.get_train_dataloader())
    resume_from = checkpoint_to_resume(config, paths.checkpoints)
    if resume_from:
        log.info("resuming from %s (train.resume=never starts over)", resume_from)

    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    wall_seconds = time.perf_counter() - started
    evaluation = trainer.evaluate()
    if not trainer.is_world_process_zero():
        return

    with atomic_dir(paths.adapter) as staging:
        trainer.model.save_pretrained(staging)
        trainer.processing_class.save_pretrained(staging)
    # The statistics are of this process's share of an epoch; scale them to the whole run.
    batches_run = trainer.state.global_step * config.train.gradient_accumulation_steps
    epochs_run = batches_run / epoch["batches_per_epoch"]
    supervised_tokens = epoch["supervised_tokens_per_epoch"] * trainer.args.world_size * epochs_run
    report = {
        "wall_seconds": round(wall_seconds, 2),
        "steps": trainer.state.global_step,
        "world_size": trainer.args.world_size,
        "resumed_from": resume_from,
        "packing": config.train.packing,
        "input_tokens_seen": trainer.state.num_input_tokens_seen,
        "tokens_per_second": round(trainer.state.num_input_tokens_seen / wall_seconds, 1),
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
    summary = {key: value for key, value in report.items() if key != "log_history"}
    log.info("train report: %s", summary)
    log.info("adapter: %s; loss curve: %s", paths.adapter, paths.reports / "loss_curve.png")


if __name__ == "__main__":
    run_stage(main, stage_parser(__doc__.splitlines()[0]))
