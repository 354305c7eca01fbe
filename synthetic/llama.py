"""Random Llama models shaped like Meta's, without a download: Llama-2-7B's configuration, the small shape
the tests train in seconds, Meta's Llama-2 tokenizer (rebuilt offline in data/tokenizers), and the one
function that writes such a model as a user's local base folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from synthetic import REPO

if TYPE_CHECKING:
    import torch
    from transformers import GenerationConfig, LlamaConfig

LLAMA2_TOKENIZER = REPO / "data" / "tokenizers" / "llama-2"  # Meta's, rebuilt offline: see README.md there
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
LLAMA2_7B = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
}
# Llama-2-7B's configuration shrunk to a model the tests train in seconds: everything the pipeline can
# tell (vocabulary, special tokens, positions) stays Llama-2's.
LLAMA2_SMALL = {**LLAMA2_7B, "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 4}  # fmt: skip
SHARD_BYTES = 2 * 10**9  # a shard at a time in memory: about 2 GB for a 7B model


def write_random_llama(
    folder: Path,
    config: LlamaConfig,
    dtype: torch.dtype,
    *,
    tokenizer: Path | None = None,
    generation: GenerationConfig | None = None,
    shard_bytes: int | None = None,
    device: str = "cpu",
) -> int:
    """A LlamaForCausalLM of `config` with random weights stored in `dtype`, in `folder` as a user's local
    base: its config, its generation config (`generation`, else the config's BOS and EOS) and, given a
    tokenizer folder, Meta's tokenizer files from it. Its parameter count.

    Without `shard_bytes`, transformers builds and initializes the whole model under seed 0, so that the
    tests' small models are the same weights run after run. With it, each weight is drawn as transformers
    draws it (normal with the config's initializer_range, norms one) on `device` and written shard by shard:
    a 7B model never whole in memory, 13.5 GB of disk and about 2 GB of memory."""
    if shard_bytes is None:
        total = _built_whole(folder, config, dtype, generation)
    else:
        total = _written_in_shards(folder, config, dtype, generation, shard_bytes, device)
    if tokenizer is not None:
        for name in TOKENIZER_FILES:
            shutil.copy(tokenizer / name, folder)
    return total


def _built_whole(
    folder: Path, config: LlamaConfig, dtype: torch.dtype, generation: GenerationConfig | None
) -> int:
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    if generation is not None:
        model.generation_config = generation
    model.to(dtype).save_pretrained(folder)
    return model.num_parameters()


def _written_in_shards(
    folder: Path,
    config: LlamaConfig,
    dtype: torch.dtype,
    generation: GenerationConfig | None,
    shard_bytes: int,
    device: str,
) -> int:
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, LlamaForCausalLM

    with torch.device("meta"):
        shapes = {name: parameter.shape for name, parameter in LlamaForCausalLM(config).named_parameters()}
    groups: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        if groups[-1] and size + dtype.itemsize * shape.numel() > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += dtype.itemsize * shape.numel()
    generator = torch.Generator(device).manual_seed(0)
    single = len(groups) == 1  # then named as transformers names a checkpoint that needs no index
    folder.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for number, names in enumerate(groups, 1):
        shard = {}
        for name in names:
            tensor = torch.empty(shapes[name], dtype=dtype, device=device)
            if name.endswith("norm.weight"):
                tensor.fill_(1.0)
            else:
                tensor.normal_(0.0, config.initializer_range, generator=generator)
            shard[name] = tensor.cpu()
        file = "model.safetensors" if single else f"model-{number:05d}-of-{len(groups):05d}.safetensors"
        save_file(shard, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
    total = sum(shape.numel() for shape in shapes.values())
    if not single:
        index = {"metadata": {"total_size": dtype.itemsize * total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.dtype = dtype
    config.save_pretrained(folder)
    if generation is None:
        generation = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id)
    generation.save_pretrained(folder)
    return total
