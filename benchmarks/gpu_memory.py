"""Peak GPU memory and tokens/s of QLoRA training on a Llama-2-7B-shaped model, without a download.

Writes a model of Llama-2-7B's configuration with random float16 weights, shard by shard on the GPU
(synthetic/llama.py, as make gpu-check does), loads it back through the training stage's own 4-bit
loading path (`fine_tune.train.load_quantized_model` with the llama2-7b-python profile), and runs a few
training steps at sequence length 512 and the profile's batch with its optimizer. Without a CUDA GPU it
says so and skips.

    python -m benchmarks.gpu_memory [--steps 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from core.config import load_config
from synthetic.llama import LLAMA2_7B, SHARD_BYTES, write_random_llama

PROFILE = "configs/llama2-7b-python.yaml"


def measure(steps: int = 5) -> dict | None:
    if not torch.cuda.is_available():
        print("gpu_memory: skipped, no CUDA GPU on this machine")
        return None
    import bitsandbytes as bnb
    from transformers import LlamaConfig

    from fine_tune.train import load_quantized_model

    with tempfile.TemporaryDirectory() as folder:
        write_random_llama(
            Path(folder), LlamaConfig(**LLAMA2_7B), torch.float16, shard_bytes=SHARD_BYTES, device="cuda"
        )
        torch.cuda.empty_cache()
        config = load_config(PROFILE, [f"model.name_or_path={folder}"])
        torch.cuda.reset_peak_memory_stats()
        model = load_quantized_model(config, folder)
        loaded_mb = torch.cuda.memory_allocated() / 2**20

    model.train()
    optimizer = bnb.optim.PagedAdamW32bit(
        [p for p in model.parameters() if p.requires_grad], lr=config.train.learning_rate
    )
    batch, length = config.train.batch_size, config.train.max_length
    generator = torch.Generator(device="cuda").manual_seed(0)
    started = None
    for step in range(steps + 1):
        if step == 1:  # the first step allocates and warms up; time the rest
            torch.cuda.synchronize()
            started = time.perf_counter()
        ids = torch.randint(0, LLAMA2_7B["vocab_size"], (batch, length), device="cuda", generator=generator)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    result = {
        "device": torch.cuda.get_device_name(),
        "batch": batch,
        "sequence_length": length,
        "gradient_checkpointing": config.train.gradient_checkpointing,
        "memory_after_loading_mb": round(loaded_mb, 1),
        "peak_training_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
        "tokens_per_second": round(steps * batch * length / seconds, 1),
    }
    print(f"gpu_memory: {result}")
    return result


def run() -> None:
    measure()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    measure(parser.parse_args().steps)
