"""`merge_peak_rss_mb`: peak memory of our merge stage against a notebook-style merge, on the same model.

The model: a randomly initialised Llama of about 0.94B parameters built from a config (no download),
stored in float16 as Llama-2-7b-hf is, and a random LoRA adapter on every projection. Ours is the real
stage, `python -m fine_tune.merge`, with the Llama-2 profile's merge.dtype (float16): the base loaded
lazily, merged in place, saved as safetensors shards, then the self-check. The notebook-style merge loads
the base in float16, merges and saves, then reloads the result in float32 and saves pickled .bin
shards, as the notebook recipe's push did. Each side runs in its own process, whose peak RSS comes from wait4.
About two minutes on 2 cores; the 7 GB of weights it writes are deleted at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.results import record
from synthetic.llama import SHARD_BYTES, write_random_llama
from synthetic.stages import stage_command

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "runs" / "bench" / "merge"
MODEL = {
    "vocab_size": 32000,
    "hidden_size": 2048,
    "intermediate_size": 5504,
    "num_hidden_layers": 16,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "tie_word_embeddings": False,
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_model(base: str, adapter: str) -> None:
    """A random float16 Llama (written as make gpu-check writes its 7B base: a shard at a time) and a random
    LoRA adapter on it, shaped by the model on the meta device."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from fine_tune.base import build_tokenizer, stdlib_corpus

    config = LlamaConfig(**MODEL, bos_token_id=1, eos_token_id=2)
    base, adapter = Path(base), Path(adapter)
    write_random_llama(base, config, torch.float16, shard_bytes=SHARD_BYTES)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)

    lora = LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    adapter_weights = {
        name: torch.randn(meta.shape) * 0.01 for name, meta in get_peft_model_state_dict(peft_model).items()
    }
    adapter.mkdir(parents=True)
    save_file(adapter_weights, adapter / "adapter_model.safetensors", metadata={"format": "pt"})
    lora.base_model_name_or_path = str(base)
    lora.save_pretrained(adapter)
    tokenizer = build_tokenizer(stdlib_corpus(0.2), 1024)
    tokenizer.pad_token = tokenizer.unk_token
    tokenizer.save_pretrained(adapter)


def notebook_style_merge(base: str, adapter: str, output: str) -> None:
    """The notebook recipe's merge and push, minus the upload: fp16 merge and save, fp32 reload, pickles."""
    import torch
    from huggingface_hub import split_torch_state_dict_into_shards
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float16)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.save_pretrained(f"{output}/merged")
    del model
    model = AutoModelForCausalLM.from_pretrained(f"{output}/merged", dtype=torch.float32)
    state = model.state_dict()
    # What transformers' save_pretrained(safe_serialization=False) did: shards of torch.save pickles.
    shards = split_torch_state_dict_into_shards(state, filename_pattern="pytorch_model{suffix}.bin")
    for filename, names in shards.filename_to_tensors.items():
        torch.save({name: state[name] for name in names}, f"{output}/{filename}")


def peak_rss_mb(command: list[str], log: Path) -> float:
    """Run `command` in its own process; its peak resident memory, from the kernel's account of it.

    The kernel carries a process's peak across exec, so the fork of a large parent would count: this
    parent keeps torch and the weights out of its own memory (the model is built in a subprocess too).
    """
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{command[2]} failed ({process.returncode}); see {log}")
    return round(usage.ru_maxrss / 1024, 1)  # Linux reports kilobytes


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def run() -> dict:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    base, adapter = WORK / "base", WORK / "ours" / "adapter"
    try:
        peak_rss_mb(
            python(f"from benchmarks.merge import build_model; build_model({str(base)!r}, {str(adapter)!r})"),
            WORK / "build.log",
        )
        weights_mb = round(sum(file.stat().st_size for file in base.glob("*.safetensors")) / 2**20, 1)
        overrides = [f"model.name_or_path={base}", f"run.output_dir={WORK}", "run.name=ours"]
        ours = peak_rss_mb(
            stage_command("fine_tune.merge", "configs/llama2-7b-python.yaml", overrides), WORK / "ours.log"
        )
        shutil.rmtree(WORK / "ours" / "merged")
        (WORK / "notebook").mkdir()
        notebook = peak_rss_mb(
            python(
                "from benchmarks.merge import notebook_style_merge; "
                f"notebook_style_merge({str(base)!r}, {str(adapter)!r}, {str(WORK / 'notebook')!r})"
            ),
            WORK / "notebook.log",
        )
    finally:
        for folder in (base, WORK / "ours", WORK / "notebook"):
            shutil.rmtree(folder, ignore_errors=True)
    return record(
        "merge_peak_rss_mb",
        ours,
        notebook,
        "MB",
        "lower",
        model=f"random Llama, {MODEL['hidden_size']} hidden, {MODEL['num_hidden_layers']} layers, float16",
        weights_16bit_mb=weights_mb,
        ours_over_weights=round(ours / weights_mb, 2),
        baseline_over_weights=round(notebook / weights_mb, 2),
        ours_method="python -m fine_tune.merge, llama2-7b-python profile (merge.dtype float16)",
        baseline_method="float16 merge and save, float32 reload, pickled .bin shards",
    )
