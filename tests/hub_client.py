"""The download side of the Hub round trips, run in a subprocess: the client reads HF_ENDPOINT at import.

    python -m tests.hub_client OUT ADAPTER_REPO MERGED_REPO DATASET_REPO

snapshot_download of the adapter, its base (named in the pushed adapter_config.json) and the merged
model into OUT/snapshots/<repo>; logits of PeftModel.from_pretrained(base from the Hub, adapter repo)
and of the merged repo into OUT/logits.pt; load_dataset's rows into OUT/rows.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

CHECK_TEXTS = [
    "[INST] How do I reverse a list in Python? [/INST] Use slicing: `items[::-1]`.",
    "[INST] What does `yield` do? [/INST] It makes a generator.",
]


@torch.no_grad()
def check_logits(model, tokenizer) -> torch.Tensor:
    """Logits of the check texts at their real (not padding) positions."""
    tokenizer.padding_side = "right"
    inputs = tokenizer(CHECK_TEXTS, return_tensors="pt", padding=True)
    return model.eval()(**inputs).logits[inputs["attention_mask"].bool()]


def main(out: Path, adapter_repo: str, merged_repo: str, dataset_repo: str) -> None:
    from datasets import load_dataset
    from huggingface_hub import snapshot_download
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_repo = PeftConfig.from_pretrained(adapter_repo).base_model_name_or_path
    for repo in (adapter_repo, base_repo, merged_repo):
        snapshot_download(repo, local_dir=out / "snapshots" / repo)
    tokenizer = AutoTokenizer.from_pretrained(adapter_repo)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_repo), adapter_repo)
    merged = AutoModelForCausalLM.from_pretrained(merged_repo)
    logits = {"adapter": check_logits(adapted, tokenizer), "merged": check_logits(merged, tokenizer)}
    torch.save({**logits, "base_repo": base_repo}, out / "logits.pt")
    dataset = load_dataset(dataset_repo)
    rows = {split: dataset[split].to_list() for split in dataset}
    (out / "rows.json").write_text(json.dumps(rows), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:5])
