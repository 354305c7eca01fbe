"""`make merge`: merge the LoRA adapter into a 16-bit copy of the base, never into 4-bit weights.

The base is loaded unquantized in `merge.dtype` (bf16 by default; float32 where a CPU check needs
exact logits), the adapter applied and merged in place with `merge_and_unload`, and the result saved as
safetensors shards (`merge.max_shard_size`) with the tokenizer (the run's chat template), a generation
config (EOS and pad ids, and the profile's decoding: what `vllm serve` and `generate` default to) and a
model card. A self-check then reloads the saved model and compares its
logits with those of base + adapter computed before the merge; the result is printed and written to
runs/<run>/reports/merge_check.json, and a merge that fails it is never moved into place.

Memory: the weights are held once. A base stored in merge.dtype is read lazily from its safetensors
files, merging rewrites each adapted matrix in place, saving writes shard by shard, and the check
reloads only after the merged model is freed: peak RSS is the 16-bit model's size plus the interpreter
(`make bench` measures it). A base stored in another dtype costs one more copy while it is converted.
"""

from __future__ import annotations

import argparse
import gc
import logging
import shutil
from pathlib import Path

import torch

from core.cli import run_stage, stage_parser
from core.config import Config, InferenceConfig
from core.errors import UserError
from core.model import (
    answer_ids_batch,
    chat_format,
    load_causal_lm,
    load_model_config,
    load_tokenizer,
    model_dtype,
    resolve_base,
)
from core.prompts import curated_row
from core.runs import RunPaths, atomic_dir, require, run_folder_lock, write_json_atomic
from fine_tune.card import base_hub_id, model_card
from fine_tune.report import peak_rss_mb
from fine_tune.resume import UnreadableCheckpoint, check_weights

log = logging.getLogger(__name__)

# Largest |logit difference| allowed between the merged model and base + adapter: merging changes only the
# rounding of W + BA, at the dtype's precision. That is TOLERANCE for the dtype, or a tenth of the adapter's
# own effect on the logits when larger: rounding errors grow with the logits (a bfloat16 logit of 12 is
# already +-0.03), and a well-trained adapter moves them by several units. A wrong merge (the adapter
# dropped, applied twice, scaled wrongly) is off by about the adapter's whole effect and fails either way.
TOLERANCE = {torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 2.5e-1}
ADAPTER_EFFECT_SHARE = 0.1


def merge_tolerance(dtype: torch.dtype, adapter_effect: float) -> float:
    """The largest |logit difference| the merge check allows, given the adapter's max |logit change|."""
    return max(TOLERANCE[dtype], ADAPTER_EFFECT_SHARE * adapter_effect)


def check_inputs(config: Config, tokenizer, count: int = 4) -> dict[str, torch.Tensor]:
    """A few validation examples (prompt + completion), right-padded, as the self-check's inputs."""
    dataset_dir = RunPaths.of(config).dataset / "data"
    if dataset_dir.is_dir():
        from datasets import load_from_disk

        rows = load_from_disk(str(dataset_dir))["validation"].select(range(count))
        pairs = [curated_row(row["prompt"], row["completion"], row.get("controls")) for row in rows]
    else:
        chat = chat_format(tokenizer)
        pairs = [
            (chat.rendered_prompt("How do I reverse a list?"), chat.rendered_completion("Use `items[::-1]`."))
        ]
    ids = [row_ids[:256] for row_ids, _ in answer_ids_batch(tokenizer, pairs)]
    return tokenizer.pad({"input_ids": ids}, return_tensors="pt")


@torch.no_grad()
def masked_logits(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(**inputs).logits.float()
    return logits[inputs["attention_mask"].bool()]


def profile_decoding(generation, settings: InferenceConfig) -> None:
    """The profile's decoding as the model's defaults: greedy, or sampling at its temperature and top_p (a
    greedy config may hold neither: transformers refuses to save one that does)."""
    generation.do_sample = settings.do_sample
    generation.temperature = settings.temperature if settings.do_sample else None
    generation.top_p = settings.top_p if settings.do_sample else None
    generation.repetition_penalty = settings.repetition_penalty
    generation.max_new_tokens = settings.max_new_tokens


def refuse_quantized_base(base: str, revision: str | None) -> None:
    """Merging into 4-bit weights loses the adapter's precision: the base must be stored unquantized."""
    if getattr(load_model_config(base, revision), "quantization_config", None):
        raise UserError(
            f"the base {base} is stored quantized; merging needs its unquantized 16-bit weights: "
            "set model.name_or_path to the unquantized base"
        )


def main(config: Config, args: argparse.Namespace) -> None:
    paths = RunPaths.of(config)
    adapter = require(paths.adapter / "adapter_config.json", "trained adapter", "make train").parent
    try:
        check_weights(adapter)
    except UnreadableCheckpoint as problem:
        raise UserError(
            f"the adapter in {adapter} is damaged: {problem}; run `make train` again, which writes it anew "
            "from the run's last checkpoint"
        ) from None
    with run_folder_lock(paths, "make merge"):
        if not merges_into_weights(adapter):
            return
        merge(config, paths, adapter)


def merges_into_weights(adapter: Path) -> bool:
    """False, saying so in one line, for a prompt-learning adapter (prompt or prefix tuning, P-tuning): its
    virtual tokens are inputs, not a change of weights. A merged folder left by an earlier adapter of this
    run is removed: it is not this adapter's model, and infer would take it for the fine-tuned one."""
    from peft import PeftConfig

    method = PeftConfig.from_pretrained(str(adapter))
    if not method.is_prompt_learning:
        return True
    stale = adapter.parent / "merged"
    if stale.exists():
        shutil.rmtree(stale)
    log.info(
        "nothing to merge: a %s adapter learns virtual tokens, which no weight can hold; infer, chat, "
        "compare, eval and push use the base with the adapter (%s)", method.peft_type.value.lower(), adapter,
    )  # fmt: skip
    return False


def merge(config: Config, paths: RunPaths, adapter: Path) -> None:
    from peft import PeftModel

    dtype = model_dtype(config.merge.dtype)
    base_path = resolve_base(config)
    refuse_quantized_base(base_path, config.model.revision)
    tokenizer = load_tokenizer(str(adapter), prompt_format=config.data.prompt_format)  # pad never EOS
    inputs = check_inputs(config, tokenizer)

    # Unquantized in merge.dtype, never 4-bit; no device map, so in CPU memory, as the docstring counts it.
    base = load_causal_lm(base_path, config.merge.dtype, revision=config.model.revision)
    model = PeftModel.from_pretrained(base, adapter)
    model.eval()
    reference = masked_logits(model, inputs)
    with model.disable_adapter():
        adapter_effect = (masked_logits(model, inputs) - reference).abs().max().item()
    tolerance = merge_tolerance(dtype, adapter_effect)
    merged = model.merge_and_unload()
    generation = merged.generation_config
    generation.bos_token_id, generation.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    profile_decoding(generation, config.inference)
    merged.config.use_cache = True

    with atomic_dir(paths.merged) as staging:
        merged.save_pretrained(staging, max_shard_size=config.merge.max_shard_size)
        tokenizer.save_pretrained(staging)
        del merged, model, base
        gc.collect()
        reloaded = load_causal_lm(staging, config.merge.dtype)
        reloaded.eval()
        difference = (masked_logits(reloaded, inputs) - reference).abs().max().item()
        del reloaded
        weight_files = sorted(staging.glob("*.safetensors"))
        check = {
            "dtype": config.merge.dtype,
            "max_abs_logit_difference": difference,
            "tolerance": round(tolerance, 4),
            "adapter_effect": adapter_effect,
            "passed": difference <= tolerance,
            "tokens_compared": int(inputs["attention_mask"].sum()),
            "weight_files": [path.name for path in weight_files],
            "weights_mb": round(sum(path.stat().st_size for path in weight_files) / 2**20, 1),
            "peak_rss_mb": peak_rss_mb(),
        }
        write_json_atomic(paths.reports / "merge_check.json", check)
        log.info(
            "merge self-check %s: max |logit difference| %.3g, tolerance %g (%s, %d tokens); "
            "peak RSS %.0f MB for %.3g MB of weights",
            "passed" if check["passed"] else "FAILED", difference, check["tolerance"], check["dtype"],
            check["tokens_compared"], check["peak_rss_mb"], check["weights_mb"],
        )  # fmt: skip
        if not check["passed"]:
            raise UserError(
                f"merged model differs from base + adapter by {difference:.4g} > {tolerance:.4g} in logits"
            )
        if any(staging.glob("*.bin")):
            raise UserError("merge wrote pickled .bin weights; expected safetensors only")
        card = model_card(
            config, "merged", str(paths.merged), base_hub_id(config, config.hub.model_repo), None
        )
        (staging / "README.md").write_text(card, encoding="utf-8")
    log.info("merged model: %s", paths.merged)


if __name__ == "__main__":
    run_stage(main, stage_parser(__doc__.splitlines()[0]))
