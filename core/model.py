"""What a base model is, for every stage: where it lives, its tokenizer and pad rule, its dtype, how it is
quantized and on which device it sits. Stages import this module; none imports another stage's code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import Config, EmbeddedBaseConfig
from core.errors import UserError
from core.prompts import (
    FIREFLY_CHAT_TEMPLATE,
    LLAMA2_CHAT_TEMPLATE,
    PLAIN_TEXT_TEMPLATE,
    ChatFormat,
    Llama2Format,
    PlainTextFormat,
    Rendered,
    TrainingRow,
    as_rendered,
    template_format,
)
from core.tokens import encode, encode_batch

if TYPE_CHECKING:  # torch is imported where it is used: curation resolves the base without it
    import torch

log = logging.getLogger(__name__)

# Part of the embedded base's cache key: bump it whenever fine_tune/base.py's recipe changes what a spec
# builds.
EMBEDDED_RECIPE_VERSION = 5


def embedded_base_dir(spec: EmbeddedBaseConfig) -> Path:
    """The cache folder of the base this spec builds; the stdlib it learns from is part of the key.

    Absolute, so that an adapter trained on it names a base that loads from any working directory."""
    fields = spec.model_dump(mode="json", exclude={"cache_dir"})
    fields["python"] = sys.version_info[:2]
    fields["recipe"] = EMBEDDED_RECIPE_VERSION
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    return spec.cache_dir.resolve() / f"llama-{spec.hidden_size}h{spec.num_layers}l-{key}"


def resolve_base(config: Config) -> str:
    """The base model's local folder (absolute) or Hub id; the embedded base must have been built."""
    name = config.model.name_or_path
    if name != "embedded":
        local = Path(name).expanduser()
        if local.exists():
            return str(local.resolve())
        if name.startswith(("/", "./", "../", "~")):
            raise UserError(f"model.name_or_path: the folder {name} does not exist")
        return name
    path = embedded_base_dir(config.model.embedded)
    if not (path / "config.json").is_file():
        raise UserError(f"embedded base model not built at {path}: run `make base` first")
    return str(path)


def model_dtype(choice: str = "auto") -> torch.dtype:
    """The dtype a model computes in: bf16 where the GPU supports it, else fp16; float32 on a CPU, unless
    `choice` names one."""
    import torch

    if choice != "auto":
        return getattr(torch, choice)
    if not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def compute_dtype(config: Config) -> torch.dtype:
    """The run's compute dtype (`quant.compute_dtype`): auto is model_dtype's choice, float32 on every CPU.

    Not bfloat16 on a CPU that has AVX-512 BF16: there one epoch of the tiny profile trained at 4,633
    tokens/s in float32 and 3,785 in bfloat16 (a 2-core Xeon with AMX; docs/cpus.md), and float32 keeps a
    run's numbers the same on every CPU."""
    return model_dtype(config.quant.compute_dtype)


def device_map(launched: bool = True) -> dict[str, Any] | None:
    """The whole model on one device: a GPU when there is one, else the CPU.

    `launched` reads what accelerate/torchrun tell a process, as training (one process per GPU) must: the
    GPU is this process's (LOCAL_RANK), and under FSDP there is no device map, for the launcher to shard the
    model. Without it (inference) the current GPU, whatever those variables say."""
    import torch

    if not launched:
        return {"": "cuda" if torch.cuda.is_available() else "cpu"}
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return None
    if torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK", 0))}
    return {"": "cpu"}


def load_causal_lm(
    name_or_path: str | Path,
    dtype: str = "auto",
    devices: dict[str, Any] | None = None,
    revision: str | None = "main",
    quantization: Any = None,
):
    """A causal LM's weights, the way every stage loads them: in model_dtype(`dtype`) ("auto", or a dtype the
    config names), quantized on load when `quantization` (quantization_config's) is given, on `devices`
    (device_map's; None: no device map, so the CPU). "main" is transformers' own default `revision`."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        name_or_path,
        revision=revision,
        dtype=model_dtype(dtype),
        device_map=devices,
        quantization_config=quantization,
    )


# The formats this project writes, as the chat template each saves with the tokenizer.
FORMAT_TEMPLATES = {
    "llama2": LLAMA2_CHAT_TEMPLATE,
    "firefly": FIREFLY_CHAT_TEMPLATE,
    "text": PLAIN_TEXT_TEMPLATE,
}


def load_tokenizer(
    path: str, revision: str | None = None, padding_side: str = "right", prompt_format: str = "llama2"
):
    """The tokenizer with the run's chat format and a pad token that is never EOS (Llama-2 has none).

    With `prompt_format` llama2, firefly or text its chat template becomes that format's (core/prompts.py);
    with chat_template it keeps its own, and its EOS becomes the token that template ends an answer with
    (Llama-3's `<|eot_id|>`), so that the trainer appends it, generation stops on it and the saved tokenizer
    says so to every server.
    `unk` pads, as Llama-2 recipes do, so the embeddings never need resizing under QLoRA and the real
    EOS at the end of every completion keeps its label; without one, a reserved special token pads.
    Training pads on the right; batched generation on the left, so that every prompt ends where its
    answer starts.
    """
    from transformers import AutoTokenizer

    from core.hub import offline_variable

    local = Path(path).exists()
    if not local and offline_variable() is None:
        log.info("asking the Hub for %s (when it cannot be reached, retries take about a minute)", path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    except OSError:
        offline = None if local else offline_variable()
        if offline:  # offline, a Hub model loads from the local cache only
            raise UserError(
                f"{path} is neither a local folder nor in the Hub cache, and {offline} is set, so the Hub "
                f"cannot be asked for it: unset {offline}, or give a local model folder"
            ) from None
        raise
    if getattr(tokenizer, "legacy", None) is False:
        # transformers' Llama tokenizer with `legacy: false`, as Meta publishes Llama-2's config, drops the
        # `▁` that SentencePiece puts before text written right after `<s>` or `</s>`: a chat history and
        # the chat template would tokenize unlike Meta's reference encoding and unlike training. With
        # `legacy: true` they match (tests check it on Meta's tokenizer); it is saved with the tokenizer.
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, legacy=True)
    if getattr(tokenizer, "legacy", None) is not None:
        tokenizer.init_kwargs["legacy"] = tokenizer.legacy  # transformers saves it only from here
    if prompt_format in FORMAT_TEMPLATES:
        tokenizer.chat_template = FORMAT_TEMPLATES[prompt_format]  # the format trained travels with the model
    elif not tokenizer.chat_template:
        raise UserError(
            f"data.prompt_format is chat_template, but the tokenizer of {path} has none: use llama2"
        )
    else:
        tokenizer.eos_token = chat_format(tokenizer).end_of_answer
    tokenizer.pad_token = pad_token(tokenizer, path)
    tokenizer.padding_side = padding_side
    return tokenizer


def prompt_ids(tokenizer, prompt: Rendered | str) -> list[int]:
    """The ids a prompt reaches a model as (infer, chat, compare, eval, make inspect PROMPT=): BOS, then the
    prompt with only its format's control tokens as controls (core/tokens.py); a plain string is all text."""
    return encode(tokenizer, prompt)


def answer_ids(tokenizer, prompt: Rendered | str, completion: Rendered | str) -> tuple[list[int], int]:
    """BOS + prompt + completion + EOS as training sees a row, and where the answer starts: where the ids of
    the prompt alone and of prompt + completion part (a piece may span the boundary), as TRL counts it."""
    return answer_ids_batch(tokenizer, [(prompt, completion)])[0]


def answer_ids_batch(
    tokenizer, rows: list[tuple[Rendered | str, Rendered | str]]
) -> list[tuple[list[int], int]]:
    """answer_ids of many rows, encoded in one batch."""
    items = [item for prompt, completion in rows for item in (prompt, as_rendered(prompt) + completion)]
    encoded = encode_batch(tokenizer, items)
    result = []
    for alone, whole in zip(encoded[::2], encoded[1::2], strict=True):
        result.append(([*whole, tokenizer.eos_token_id], min(first_difference(alone, whole), len(whole))))
    return result


def first_difference(part: list[int], whole: list[int]) -> int:
    """Where the ids of a text's beginning and of the whole text part (a piece may span the boundary)."""
    return next((i for i, (a, b) in enumerate(zip(part, whole, strict=False)) if a != b), len(part))


def training_ids_batch(tokenizer, rows: list[TrainingRow]) -> list[tuple[list[int], list[int]]]:
    """Each row's ids as training sees them (answer_ids) and its loss mask: 1 on the completion and EOS, and
    on each earlier answer of a conversation with its closing token. An earlier answer begins where the ids
    of the prompt up to it and of the whole row part, and ends with its closing token, a control: the ids of
    the prompt up to there are exactly the row's first ids."""
    encoded = answer_ids_batch(tokenizer, [(row.prompt, row.completion) for row in rows])
    edges = [
        piece
        for row in rows
        for start, end in row.earlier_answers
        for piece in (row.prompt.sliced(0, start), row.prompt.sliced(0, end))
    ]
    edge_ids = iter(encode_batch(tokenizer, edges))
    result = []
    for row, (ids, start) in zip(rows, encoded, strict=True):
        mask = [0] * start + [1] * (len(ids) - start)
        for _ in row.earlier_answers:
            before, through = next(edge_ids), next(edge_ids)
            first = first_difference(before, ids)
            mask[first : len(through)] = [1] * (len(through) - first)
        result.append((ids, mask))
    return result


def base_tokenizer(config: Config):
    """The run's base tokenizer in the run's chat format, as training sees it."""
    base, revision = resolve_base(config), config.model.revision
    return load_tokenizer(base, revision, prompt_format=config.data.prompt_format)


def pad_token(tokenizer, path: str) -> str:
    """Its pad token when that is not EOS; else unk; else a reserved special token (Llama-3 has neither)."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return tokenizer.pad_token
    if tokenizer.unk_token is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
        return tokenizer.unk_token
    taken = {tokenizer.bos_token, tokenizer.eos_token, *tokenizer.all_special_tokens}
    for _, token in sorted(tokenizer.added_tokens_decoder.items()):
        if (
            token.special
            and token.content not in taken
            and ("pad" in token.content or "reserved" in token.content)
        ):
            return token.content
    raise UserError(f"tokenizer of {path} has no pad, unk or reserved special token to pad with")


def chat_format(tokenizer) -> ChatFormat:
    """The chat format of a tokenizer load_tokenizer gave: Llama-2's, plain text, or its template's (Firefly's
    is one)."""
    if tokenizer.chat_template == LLAMA2_CHAT_TEMPLATE:
        return Llama2Format(tokenizer.bos_token, tokenizer.eos_token)
    if tokenizer.chat_template == PLAIN_TEXT_TEMPLATE:
        return PlainTextFormat(tokenizer.eos_token)
    specials = [token.content for token in tokenizer.added_tokens_decoder.values() if token.special]
    ids = tokenizer("a")["input_ids"]
    adds_bos = tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id]
    return template_format(
        tokenizer.chat_template, tokenizer.bos_token, tokenizer.eos_token, specials, adds_bos
    )


def quantization_config(config: Config):
    """The bitsandbytes settings of `quant.*` (used by training, and by inference on request): NF4 (or FP4)
    for `quant.bits` 4, LLM.int8 for 8, None for 16 (the base unquantized, in the compute dtype).

    LLM.int8 multiplies in int8 with the outlier features in float16: bitsandbytes casts each layer's input
    to float16 whatever the compute dtype, and the rest of the model computes in the compute dtype."""
    import torch
    from transformers import BitsAndBytesConfig

    if config.quant.bits == 16:
        return None
    if config.quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=config.quant.quant_type,
        bnb_4bit_use_double_quant=config.quant.double_quant,
        bnb_4bit_compute_dtype=compute_dtype(config),
        bnb_4bit_quant_storage=getattr(torch, config.quant.quant_storage),
    )


def lora_targets(config: Config, model_type: str) -> list[str] | str:
    """What `lora.target_modules` adapts in a base whose config.json says `model_type`: the names given;
    all-linear, which PEFT reads as every linear layer but the output head; for auto, PEFT's choice for
    the architecture (Llama: q_proj and v_proj, as the QLoRA seed run; GPT-NeoX, Bloom and Falcon: their
    fused query_key_value), or all-linear where PEFT has none."""
    targets = config.lora.target_modules
    if targets != "auto":
        return targets
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as BY_ARCHITECTURE

    chosen = BY_ARCHITECTURE.get(model_type)
    return list(chosen) if chosen else "all-linear"


def require_reachable(name_or_path: str) -> None:
    """One line when a model is neither a local folder nor something the Hub may be asked for (offline)."""
    from core.hub import offline_variable

    offline = None if Path(name_or_path).exists() else offline_variable()
    if offline:
        raise UserError(
            f"{name_or_path} is not a local folder and {offline} is set, so the Hub cannot be asked for "
            f"it: unset {offline}, or give a local model folder"
        )


def load_model_config(name_or_path: str, revision: str | None = None):
    """A model's config.json (the base's, or a merged model's), or one line saying why it cannot be had."""
    from transformers import AutoConfig

    local = Path(name_or_path)
    require_reachable(name_or_path)
    try:
        return AutoConfig.from_pretrained(name_or_path, revision=revision)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = f"{local / 'config.json'}" if local.is_dir() else name_or_path
        raise UserError(f"cannot read the model config of {where}: {reason}") from None
