"""The parameter-efficient method a run trains (`peft.method`), as the PEFT config that builds it, and what
each method needs beyond `get_peft_model`.

- lora: LoRA on `lora.target_modules` (r, alpha, dropout, bias), the default.
- dora: weight-decomposed LoRA (magnitude and direction); rslora: LoRA scaled by alpha / sqrt(r), which
  keeps large ranks learning; olora: LoRA initialised from an orthonormal (QR) basis of each weight, which
  moves that part out of the base. An OLoRA adapter only fits the base it mutated, so the adapter a run
  writes is converted to plain LoRA against the untouched base (PEFT's own conversion, rank 2r).
- adalora: LoRA whose rank budget moves between matrices while training, from peft.init_r down to lora.r;
  it reallocates after each backward pass (adalora_budget), which the Trainer does not call by itself. A
  pruned rank keeps its place with a zero singular value, in checkpoints and in the adapter, so that a run
  resumes from any checkpoint into the same shapes.
- ia3: learned scaling vectors on PEFT's default modules of the architecture (Llama: k_proj, v_proj and
  the feed-forward down_proj): the fewest parameters.
- prompt_tuning, prefix_tuning (per-layer key/value prefixes), p_tuning (virtual tokens from a small
  encoder): peft.num_virtual_tokens learned tokens before every input; no layer of the base changes, so
  they cannot be merged: infer, chat, compare, eval and push load base + adapter.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from core.config import PROMPT_LEARNING_METHODS, Config
from core.model import lora_targets
from core.runs import RunPaths

LORA_FAMILY = ("lora", "dora", "rslora", "olora", "adalora")
# AdaLoRA's config needs a length before the trainer has counted the run's steps; schedule_adalora then
# sets the real one, before the first step.
PROVISIONAL_ADALORA_STEPS = 1000


def mergeable(config: Config) -> bool:
    return config.peft.method not in PROMPT_LEARNING_METHODS


def peft_config(config: Config, model_type: str, base: str, total_steps: int):
    """PEFT's config for the run's method on a base whose config.json says `model_type`."""
    from peft import (
        AdaLoraConfig,
        IA3Config,
        LoraConfig,
        PrefixTuningConfig,
        PromptEncoderConfig,
        PromptTuningConfig,
        PromptTuningInit,
    )

    method, lora, settings = config.peft.method, config.lora, config.peft
    virtual = {"task_type": "CAUSAL_LM", "num_virtual_tokens": settings.num_virtual_tokens}
    if method == "prompt_tuning":
        if settings.prompt_init_text is None:
            return PromptTuningConfig(**virtual, prompt_tuning_init=PromptTuningInit.RANDOM)
        return PromptTuningConfig(
            **virtual, prompt_tuning_init=PromptTuningInit.TEXT, tokenizer_name_or_path=base,
            prompt_tuning_init_text=settings.prompt_init_text,
        )  # fmt: skip
    if method == "prefix_tuning":
        return PrefixTuningConfig(**virtual)
    if method == "p_tuning":
        return PromptEncoderConfig(**virtual, encoder_hidden_size=settings.encoder_hidden_size)
    if method == "ia3":
        return IA3Config(task_type="CAUSAL_LM")
    shared = {"lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "bias": lora.bias,
              "target_modules": lora_targets(config, model_type), "task_type": "CAUSAL_LM"}  # fmt: skip
    if method == "adalora":
        return AdaLoraConfig(
            **shared, init_r=settings.init_r or math.ceil(1.5 * lora.r), target_r=lora.r,
            total_step=total_steps, tinit=total_steps // 10, tfinal=0,
        )  # fmt: skip
    return LoraConfig(
        **shared, r=lora.r, use_dora=method == "dora", use_rslora=method == "rslora",
        init_lora_weights="olora" if method == "olora" else True,
    )  # fmt: skip


def schedule_adalora(model: Any, total_steps: int) -> None:
    """AdaLoRA's pruning schedule over the run's real length: a tenth of the steps at the initial rank, then
    the budget shrinks to lora.r by the last step (tfinal 0: PEFT's final phase would shrink the saved
    tensors, and a checkpoint saved then could not be resumed into the model's shapes)."""
    adapter = model.peft_config["default"]
    adapter.total_step, adapter.tinit, adapter.tfinal = total_steps, total_steps // 10, 0


def adalora_budget():
    """The callback that lets AdaLoRA move its rank budget at each step: after the optimizer's step (which
    would otherwise move the singular values it zeroes) and before the gradients it scores are cleared."""
    from transformers import TrainerCallback

    class AdaLoraBudget(TrainerCallback):
        def on_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any):
            model.base_model.update_and_allocate(state.global_step)
            # The pattern it records only makes saving cut the pruned ranks out (see schedule_adalora).
            model.peft_config["default"].rank_pattern = None

    return AdaLoraBudget()


def olora_initial(paths: RunPaths) -> Path:
    return paths.checkpoints / "olora-initial"


def save_initial_olora(model: Any, folder: Path) -> None:
    """OLoRA's initial adapter, which converts what training learned into LoRA on the untouched base. Saved
    as plain LoRA (PEFT's recipe), so that loading it never initialises OLoRA again."""
    adapter = model.peft_config["default"]
    adapter.init_lora_weights = True
    model.save_pretrained(folder)


def save_adapter(model: Any, folder: Path, config: Config, initial: Path | None) -> None:
    """The trained adapter as it loads on the untouched base: OLoRA's converted to LoRA (rank 2 x r)."""
    if config.peft.method == "olora":
        model.save_pretrained(folder, path_initial_model_for_weight_conversion=str(initial))
    else:
        model.save_pretrained(folder)
