"""Loading the model a ModelSource names (inference/models.py), for generation.

A failure to load says in one line what is damaged and what to do. Before any weights are loaded, the
model's context is read from its config and every prompt checked to leave room for the answer. A model of
a few million parameters, like the embedded default, is loaded with a note that its answers are noise.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from core.config import Config, InferenceConfig
from core.errors import UserError, shortened
from core.hub import offline_variable
from core.model import (
    chat_format,
    device_map,
    embedded_base_dir,
    load_causal_lm,
    load_tokenizer,
    prompt_ids,
    quantization_config,
)
from core.patches import control_cpu_repack
from core.prompts import ChatFormat
from core.runs import RunPaths
from inference.models import ModelSource

log = logging.getLogger(__name__)

# A model's context when its config states none (Llama-2's).
DEFAULT_CONTEXT = 4096
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")  # a fast tokenizer, or a SentencePiece model
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# Below this many parameters a model shows the pipeline's mechanics, not useful answers: the embedded
# default has about 5 million, the smallest models that answer sensibly a few hundred million.
SMALL_MODEL_PARAMETERS = 50_000_000
SMALL_MODEL_NOTE = (
    f"note: this model has fewer than {SMALL_MODEL_PARAMETERS // 10**6} million parameters, like the "
    "embedded default (a few million): it shows how the pipeline works, and its answers are expected to be "
    "noise. For real answers, fine-tune a real base on a GPU (make all CONFIG=configs/llama2-7b-python.yaml) "
    "or ask a Hub model (MODEL=org/name)"
)


def repair_hint(config: Config, location: str) -> str:
    """What to do when the model files at `location` (a local folder or a Hub id) cannot be loaded."""
    local = Path(location)
    if not local.is_dir():
        offline = offline_variable()
        if offline:
            return f"{offline} is set: unset it so that missing files are downloaded"
        return f"remove the downloaded copy (`hf cache rm model/{location}`) and try again"
    paths = RunPaths.of(config)
    hints = {
        paths.merged.resolve(): "run `make merge` again",
        paths.adapter.resolve(): "run `make train` again (it rewrites a damaged adapter from its checkpoint)",
    }
    if config.model.name_or_path == "embedded":
        hints[embedded_base_dir(config.model.embedded)] = f"delete {local} and run `make base`"
    return hints.get(
        local.resolve(),
        f"replace the damaged files in {local} (run what wrote them again, or copy them again)",
    )


def damage(error: BaseException) -> str:
    """What a loading error says is wrong with the files, in one line."""
    from safetensors import SafetensorError

    if isinstance(error, SafetensorError):
        return f"a safetensors weights file is cut short or not safetensors ({error})"
    if isinstance(error, json.JSONDecodeError):
        return f"a JSON file is cut short or not JSON ({error.msg} at line {error.lineno})"
    return shortened(" ".join(str(error).split()), 240)


def require_file(config: Config, what: str, location: str, names: Sequence[str]) -> None:
    """A UserError when `location` is a folder that holds none of the files `names` (the loaders would
    take the folder for a Hub id, or say something obscure)."""
    folder = Path(location)
    if folder.is_dir() and not any((folder / name).is_file() for name in names):
        raise UserError(
            f"cannot load {what} from {location}: no {' or '.join(names)}; {repair_hint(config, location)}"
        )


@contextmanager
def loading(config: Config, what: str, location: str) -> Iterator[None]:
    """Turns a failure to load `what` from `location` into one line: what is wrong and what to do.

    The loaders raise OSError for missing files and configs that are not JSON, ValueError (JSONDecodeError
    among them) for damaged tokenizer or adapter files, and SafetensorError for weights cut short or garbage.
    """
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, ValueError, SafetensorError) as error:
        raise UserError(
            f"cannot load {what} from {location}: {damage(error)}; {repair_hint(config, location)}"
        ) from None


def adapter_base(config: Config, source: ModelSource) -> tuple[str, str | None]:
    """The base an adapter names in its adapter_config.json, and the revision to load it at."""
    from peft import PeftConfig

    with loading(config, "the adapter config", source.path):
        adapter_config = PeftConfig.from_pretrained(source.path)
    return adapter_config.base_model_name_or_path, adapter_config.revision


def context_length(config: Config, source: ModelSource) -> int:
    """The model's context in tokens (`max_position_embeddings`), read from its config, not its weights."""
    from transformers import AutoConfig

    location = adapter_base(config, source)[0] if source.is_adapter else source.path
    with loading(config, "the model config", location):
        model_config = AutoConfig.from_pretrained(location)
    return getattr(model_config, "max_position_embeddings", DEFAULT_CONTEXT)


def load_model_tokenizer(config: Config, source: ModelSource):
    """The tokenizer, set for batched generation (left padding, a pad token that is not EOS)."""
    require_file(config, "the tokenizer", source.path, TOKENIZER_FILES)
    with loading(config, "the tokenizer", source.path):
        return load_tokenizer(source.path, padding_side="left", prompt_format=config.data.prompt_format)


def model_chat_format(config: Config, source: ModelSource) -> ChatFormat:
    """The chat format prompts to this model are rendered in: the run's, as its tokenizer carries it."""
    context_length(config, source)  # first: a damaged config.json is named as such, not as the tokenizer's
    return chat_format(load_model_tokenizer(config, source))


def too_long(where: str | None, tokens: int, context: int, settings: InferenceConfig) -> UserError:
    """The error for a prompt whose `tokens` leave no room for the answer in the model's context."""
    room = max(context - settings.max_new_tokens, 0)
    prefix = f"{where}: " if where else ""
    return UserError(
        f"{prefix}the prompt is {tokens:,} tokens, more than the {room:,} that fit: the model's context of "
        f"{context:,} tokens (max_position_embeddings) minus inference.max_new_tokens "
        f"{settings.max_new_tokens:,}; shorten it, or lower inference.max_new_tokens"
    )


def check_prompts_fit(config: Config, source: ModelSource, prompts: Sequence[tuple[str | None, str]]) -> None:
    """Every (where, rendered prompt) leaves room for the answer in the model's context; checked before the
    weights are loaded, from the tokenizer and the config alone."""
    context = context_length(config, source)
    tokenizer = load_model_tokenizer(config, source)
    for where, prompt in prompts:
        tokens = len(prompt_ids(tokenizer, prompt))
        if tokens > context - config.inference.max_new_tokens:
            raise too_long(where, tokens, context, config.inference)


def load_model(source: ModelSource, config: Config):
    """The model in eval mode and its tokenizer, set for batched generation (left padding, a pad != EOS).

    The weights are in model_dtype's choice for this machine (bf16 or fp16 on a GPU, float32 on a CPU), not
    in training's `quant.compute_dtype`. With `inference.quantize` they are quantized on load as `quant.bits`
    and `quant.*` say (4-bit NF4 by default, or 8-bit LLM.int8), so that a 7B model answers on a small GPU;
    bitsandbytes also runs both on a CPU, slowly. An adapter's base is loaded first, on its own, so that a
    damaged base and a damaged adapter are told apart.
    """
    tokenizer = load_model_tokenizer(config, source)
    devices = device_map(launched=False)  # one process: the current GPU, never a launcher's rank
    # The config refuses inference.quantize with quant.bits 16, which has no quantization config.
    quantization = quantization_config(config) if config.inference.quantize else None
    if source.is_adapter:
        from peft import PeftModel

        base, revision = adapter_base(config, source)
        with loading(config, "the base model the adapter names", base):
            model = load_causal_lm(base, "auto", devices, revision, quantization)
        require_file(config, "the adapter", source.path, ADAPTER_WEIGHTS)
        with loading(config, "the adapter", source.path):
            model = PeftModel.from_pretrained(model, source.path)
    else:
        with loading(config, "the model", source.path):
            model = load_causal_lm(source.path, "auto", devices, quantization=quantization)
    if config.inference.quantize:  # a layer bitsandbytes' bf16 CPU kernel cannot take keeps its own
        control_cpu_repack(model, training=False)
    if model.num_parameters() < SMALL_MODEL_PARAMETERS:
        note_small_model()
    return model.eval(), tokenizer


@cache  # once per process: compare and chat load several models
def note_small_model() -> None:
    log.info(SMALL_MODEL_NOTE)
