"""Loading a model by name and generating answers in batches: left padding, KV cache, stop at EOS.

What the inference commands share: the `--model` option and what it names, loading with one-line errors
that say what is damaged and what to do, the check that every prompt fits the model's context, the
decoding settings and their description, and the note that a model of a few million parameters
answers with noise.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from core.config import HUB_REPO_ID, Config, InferenceConfig
from core.errors import UserError, shortened
from core.hub import REPO_ID_RULES, failure_reason, offline_variable
from core.model import (
    chat_format,
    embedded_base_dir,
    load_tokenizer,
    model_dtype,
    prompt_ids,
    quantization_config,
    resolve_base,
)
from core.patches import control_cpu_repack
from core.prompts import ChatFormat, Rendered
from core.runs import RunPaths

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

# How much of a model name an error repeats: a name as long as a path is shown whole.
NAME_SHOWN = 400


@dataclass(frozen=True)
class ModelSource:
    label: str  # what the user asked for: new_model, base, a path or a Hub id
    path: str  # a local folder or a Hub id
    is_adapter: bool


def add_model_option(parser: argparse.ArgumentParser, role: str = "the model") -> None:
    """The `--model` option of infer, chat and compare (make's MODEL=)."""
    parser.add_argument(
        "--model",
        default="new_model",
        help=f"{role}: new_model, base, a local folder or a Hub id (user/name)",
    )


def resolve_model(config: Config, name: str) -> ModelSource:
    """`new_model` (this run's merged model, else base + adapter), `base`, a local folder or a Hub id."""
    if name == "new_model":
        paths = RunPaths.of(config)
        if (paths.merged / "config.json").is_file():
            return ModelSource(name, str(paths.merged), is_adapter=False)
        if (paths.adapter / "adapter_config.json").is_file():
            return ModelSource(name, str(paths.adapter), is_adapter=True)
        raise UserError(f"no fine-tuned model in {paths.root}: run `make train` (and `make merge`) first")
    if name == "base":
        return ModelSource(name, resolve_base(config), is_adapter=False)
    local = Path(name)
    if local.is_dir():
        if (local / "adapter_config.json").is_file():
            return ModelSource(name, str(local), is_adapter=True)
        if (local / "config.json").is_file():
            return ModelSource(name, str(local), is_adapter=False)
        raise UserError(f"{local} holds neither a model (config.json) nor an adapter (adapter_config.json)")
    if re.fullmatch(HUB_REPO_ID, name) and not local.exists():
        return hub_model(name)
    raise UserError(
        f"unknown model {shortened(name, NAME_SHOWN)!r}: use new_model, base, a local model folder or a Hub "
        "id (user/name)"
    )


def hub_model(repo_id: str) -> ModelSource:
    """A model or adapter on the Hub; offline, one that the local Hub cache holds."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise UserError(
            f"unknown model {shortened(repo_id, NAME_SHOWN)!r}: not a local folder, nor a valid Hub id "
            f"({REPO_ID_RULES})"
        ) from None
    offline = offline_variable()
    if offline:
        cached = {
            name
            for name in ("adapter_config.json", "config.json")
            if isinstance(try_to_load_from_cache(repo_id, name), str)
        }
        if not cached:
            raise UserError(
                f"cannot reach model {repo_id} on the Hub: {offline} is set (the Hub client is offline) "
                f"and the local Hub cache does not hold it; unset {offline} to download it, or pass a local "
                "model folder (MODEL=path/to/model)"
            )
        return ModelSource(repo_id, repo_id, is_adapter="adapter_config.json" in cached)
    try:
        files = {sibling.rfilename for sibling in HfApi().model_info(repo_id).siblings or []}
    except RepositoryNotFoundError:
        raise UserError(
            f"model {repo_id} not found on the Hub ({constants.ENDPOINT}): check the id, and for a private "
            "repo, the token (HF_TOKEN or `hf auth login`)"
        ) from None
    except (HfHubHTTPError, OSError) as error:  # OSError: the client's network errors are ConnectionErrors
        raise UserError(f"cannot reach model {repo_id} on the Hub: {failure_reason(error)}") from None
    return ModelSource(repo_id, repo_id, is_adapter="adapter_config.json" in files)


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

    With `inference.quantize` the weights are quantized on load as `quant.bits` and `quant.*` say (4-bit
    NF4 by default, or 8-bit LLM.int8), so that a 7B model answers on a small GPU; bitsandbytes also runs
    both on a CPU, slowly. An adapter's base is loaded first, on its own, so that a damaged base and a
    damaged adapter are told apart.
    """
    from transformers import AutoModelForCausalLM

    tokenizer = load_model_tokenizer(config, source)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    options: dict[str, Any] = {"dtype": model_dtype(), "device_map": {"": device}}
    if config.inference.quantize:  # the config refuses it with quant.bits 16
        options["quantization_config"] = quantization_config(config)
    if source.is_adapter:
        from peft import PeftModel

        base, revision = adapter_base(config, source)
        with loading(config, "the base model the adapter names", base):
            model = AutoModelForCausalLM.from_pretrained(base, revision=revision, **options)
        require_file(config, "the adapter", source.path, ADAPTER_WEIGHTS)
        with loading(config, "the adapter", source.path):
            model = PeftModel.from_pretrained(model, source.path)
    else:
        with loading(config, "the model", source.path):
            model = AutoModelForCausalLM.from_pretrained(source.path, **options)
    if config.inference.quantize:
        control_cpu_repack(
            model, training=False
        )  # a layer bitsandbytes' bf16 CPU kernel cannot take keeps its own
    if model.num_parameters() < SMALL_MODEL_PARAMETERS:
        note_small_model()
    return model.eval(), tokenizer


@cache  # once per process: compare and chat load several models
def note_small_model() -> None:
    log.info(SMALL_MODEL_NOTE)


def decoding_settings(settings: InferenceConfig) -> dict[str, Any]:
    """Every setting that decides the answers: max_new_tokens, do_sample and repetition_penalty, and when
    sampling, temperature, top_p and seed."""
    names = {"max_new_tokens", "do_sample", "repetition_penalty"}
    if settings.do_sample:
        names |= {"temperature", "top_p", "seed"}
    return settings.model_dump(include=names)


def describe_decoding(decoding: dict[str, Any]) -> str:
    """The decoding settings in words, for reports and closing lines."""
    mode = "greedy (do_sample false)"
    if decoding["do_sample"]:
        mode = f"sampling (do_sample true, temperature {decoding['temperature']}, top_p {decoding['top_p']}, "
        mode += f"seed {decoding['seed']})"
    return (
        f"{mode}, repetition_penalty {decoding['repetition_penalty']}, "
        f"max_new_tokens {decoding['max_new_tokens']}"
    )


def decoding_options(settings: InferenceConfig, tokenizer) -> dict[str, Any]:
    """The `generate` keyword arguments for the configured decoding: greedy unless `do_sample`.

    `max_new_tokens` counts the answer only, never the prompt. Every way of generating here (batched,
    streamed, and the benchmark's pipeline baseline) decodes with exactly these options.
    """
    options = decoding_settings(settings)
    options.pop("seed", None)  # set once before generating, not an option of `generate`
    options.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, use_cache=True)
    return options


@dataclass
class Answer:
    text: str
    new_tokens: int
    stopped: bool  # ended with EOS before the token limit


def answer_from_tokens(tokenizer, new_tokens: list[int]) -> Answer:
    """The answer in the generated ids: up to the first EOS, decoded without special tokens."""
    stopped = tokenizer.eos_token_id in new_tokens
    tokens = new_tokens[: new_tokens.index(tokenizer.eos_token_id)] if stopped else new_tokens
    return Answer(tokenizer.decode(tokens, skip_special_tokens=True).strip(), len(tokens), stopped)


@torch.no_grad()
def generate_ids(
    model,
    tokenizer,
    prompts: Sequence[Rendered | str],
    settings: InferenceConfig,
    streamer: Any = None,
    progress: Callable[[int, int], None] | None = None,
    stop_strings: Sequence[str] = (),
) -> list[tuple[list[int], list[int]]]:
    """Each rendered prompt's ids and the ids generated after them, batched; in the prompts' order.

    Prompts are batched by length so that little padding is computed. A `streamer` (which transformers
    allows only for a batch of one) receives the tokens as they come; `progress` is called after each
    batch with the number of prompts answered and the total; a row also ends at any of `stop_strings`.
    """
    if settings.do_sample:
        from transformers import set_seed

        set_seed(settings.seed)
    options = decoding_options(settings, tokenizer)
    if stop_strings:
        options.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
    encoded = [prompt_ids(tokenizer, prompt) for prompt in prompts]
    order = sorted(range(len(prompts)), key=lambda index: len(encoded[index]))
    generated: dict[int, list[int]] = {}
    for start in range(0, len(order), settings.batch_size):
        indices = order[start : start + settings.batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in indices]}, return_tensors="pt")
        batch = batch.to(model.device)
        output = model.generate(**batch, streamer=streamer, **options)
        for index, row in zip(indices, output[:, batch["input_ids"].shape[1] :].tolist(), strict=True):
            generated[index] = row
        if progress is not None:
            progress(len(generated), len(prompts))
    return [(encoded[index], generated[index]) for index in range(len(prompts))]


def generate(
    model,
    tokenizer,
    prompts: Sequence[Rendered | str],
    settings: InferenceConfig,
    streamer: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Answer]:
    """Answer rendered prompts in batches (see generate_ids); only the answer is returned, not the prompt."""
    rows = generate_ids(model, tokenizer, prompts, settings, streamer, progress)
    return [answer_from_tokens(tokenizer, new_tokens) for _, new_tokens in rows]


def continuation(tokenizer, prompt_ids: list[int], new_tokens: list[int]) -> Answer:
    """The generated text exactly as it continues the prompt, its leading spaces kept (the indentation of a
    function body), up to the first EOS.

    The text is the decoded prompt + continuation minus the decoded prompt: decoding the new ids alone
    would drop the space a Llama tokenizer's first piece opens with.
    """
    eos = tokenizer.eos_token_id
    stopped = eos in new_tokens
    tokens = new_tokens[: new_tokens.index(eos)] if stopped else new_tokens
    tokens = [token for token in tokens if token != tokenizer.pad_token_id]
    head = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    whole = tokenizer.decode(prompt_ids + tokens, skip_special_tokens=True)
    text = (
        whole[len(head) :] if whole.startswith(head) else tokenizer.decode(tokens, skip_special_tokens=True)
    )
    return Answer(text, len(tokens), stopped)


def stream_answer(model, tokenizer, prompt: Rendered | str, settings: InferenceConfig) -> Answer:
    """Answer one rendered prompt, printing the answer to stdout as it is generated."""
    (answer,) = generate(model, tokenizer, [prompt], settings, streamer=AnswerStreamer(tokenizer))
    return answer


class AnswerStreamer:
    """Prints the answer to stdout as `generate` produces it (a transformers streamer: `put`, `end`).

    It decodes all the answer's tokens so far and prints what is new, rather than decoding pieces the
    way transformers' TextStreamer does, which drops the space that opens a piece: the indentation of
    a code line would come out one space short.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.printed = 0
        self.prompt_done = False

    def _text(self) -> str:
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True).lstrip()

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_done:  # generate passes the prompt first
            self.prompt_done = True
            return
        self.tokens += value.flatten().tolist()
        text = self._text()
        if not text.endswith("\ufffd"):  # else wait: a character's bytes are still coming
            print(text[self.printed :], end="", flush=True)
            self.printed = len(text)

    def end(self) -> None:
        print(self._text()[self.printed :], flush=True)
        self.tokens, self.printed, self.prompt_done = [], 0, False
