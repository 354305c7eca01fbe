"""`make merge`: merge the LoRA adapter into a 16-bit copy of the base, never into 4-bit weights.

The base is loaded unquantized in `merge.dtype`, the adapter applied and merged in place with
`merge_and_unload`, and the result saved as safetensors with the tokenizer (Llama-2 chat template) and
a generation config. A self-check then reloads the saved model and compares its logits with those of
base + adapter computed before the merge; the result goes to runs/<run>/reports/merge_check.json.
"""

from __future__ import annotations

import argparse
import logging

import torch

from core.cli import run_stage, stage_parser
from core.config import Config
from core.errors import UserError
from core.runs import RunPaths, atomic_dir, require, write_json_atomic
from fine_tune.base import resolve_base

log = logging.getLogger(__name__)

# Largest |logit difference| allowed between the merged model and base + adapter, per dtype:
# merging changes only the rounding of W + BA, which is at the dtype's precision.
TOLERANCE = {torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 2.5e-1}


def check_inputs(config: Config, tokenizer, count: int = 4) -> dict[str, torch.Tensor]:
    """A few validation examples (prompt + completion), right-padded, as the self-check's inputs."""
    from datasets import load_from_disk

    dataset_dir = RunPaths.of(config).dataset / "data"
    if dataset_dir.is_dir():
        rows = load_from_disk(str(dataset_dir))["validation"].select(range(count))
        texts = [row["prompt"] + row["completion"] for row in rows]
    else:
        texts = ["[INST] How do I reverse a list in Python? [/INST] Use slicing: `items[::-1]`."]
    return tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=256)


@torch.no_grad()
def masked_logits(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(**inputs).logits.float()
    return logits[inputs["attention_mask"].bool()]


def main(config: Config, args: argparse.Namespace) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    paths = RunPaths.of(config)
    adapter = require(paths.adapter / "adapter_config.json", "trained adapter", "make train").parent
    dtype = getattr(torch, config.merge.dtype)
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    inputs = check_inputs(config, tokenizer)

    base = AutoModelForCausalLM.from_pretrained(
        resolve_base(config), revision=config.model.revision, dtype=dtype
    )
    model = PeftModel.from_pretrained(base, adapter)
    model.eval()
    reference = masked_logits(model, inputs)
    merged = model.merge_and_unload()
    merged.generation_config.eos_token_id = tokenizer.eos_token_id
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    merged.config.use_cache = True

    # The check reads the saved files back, so a merge that fails it is never moved into place.
    with atomic_dir(paths.merged) as staging:
        merged.save_pretrained(staging, max_shard_size=config.merge.max_shard_size)
        tokenizer.save_pretrained(staging)
        del merged, model, base
        reloaded = AutoModelForCausalLM.from_pretrained(staging, dtype=dtype)
        reloaded.eval()
        difference = (masked_logits(reloaded, inputs) - reference).abs().max().item()
        check = {
            "dtype": config.merge.dtype,
            "max_abs_logit_difference": difference,
            "tolerance": TOLERANCE[dtype],
            "passed": difference <= TOLERANCE[dtype],
            "tokens_compared": int(inputs["attention_mask"].sum()),
            "weight_files": sorted(path.name for path in staging.iterdir() if "safetensors" in path.name),
        }
        write_json_atomic(paths.reports / "merge_check.json", check)
        log.info("merge self-check: %s", check)
        if not check["passed"]:
            raise UserError(
                f"merged model differs from base + adapter by {difference:.4g} > {TOLERANCE[dtype]} in logits"
            )
        if any(staging.glob("*.bin")):
            raise UserError("merge wrote pickled .bin weights; expected safetensors only")
    log.info("merged model: %s", paths.merged)


if __name__ == "__main__":
    run_stage(main, stage_parser(__doc__.splitlines()[0]))
