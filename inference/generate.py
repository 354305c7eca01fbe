"""Loading a model by name and generating answers in batches: left padding, KV cache, stop at EOS."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.config import Config, InferenceConfig
from core.errors import UserError
from core.model import load_tokenizer, model_dtype, quantization_config, resolve_base
from core.runs import RunPaths

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    label: str  # what the user asked for: new_model, base, a path or a Hub id
    path: str  # a local folder or a Hub id
    is_adapter: bool


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
    if HUB_ID.match(name) and not local.exists():
        import httpx2
        from huggingface_hub import HfApi, constants
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

        from core.hub import failure_reason

        try:
            files = {sibling.rfilename for sibling in HfApi().model_info(name).siblings or []}
        except RepositoryNotFoundError:
            raise UserError(
                f"model {name} not found on the Hub ({constants.ENDPOINT}): check the id, and for a private "
                "repo, the token (HF_TOKEN or `hf auth login`)"
            ) from None
        except (HfHubHTTPError, OfflineModeIsEnabled, httpx2.TransportError, OSError) as error:
            raise UserError(f"cannot reach model {name} on the Hub: {failure_reason(error)}") from None
        return ModelSource(name, name, is_adapter="adapter_config.json" in files)
    raise UserError(
        f"unknown model {name!r}: use new_model, base, a local model folder or a Hub id (user/name)"
    )


def load_model(source: ModelSource, config: Config):
    """The model in eval mode and its tokenizer, set for batched generation (left padding, a pad != EOS).

    With `inference.load_in_4bit` the weights are quantized on load as `quant.*` says (NF4 by default),
    so that a 7B model answers on a small GPU; bitsandbytes also runs it on a CPU, slowly.
    """
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    options: dict[str, Any] = {"dtype": model_dtype(), "device_map": {"": device}}
    if config.inference.load_in_4bit:
        options["quantization_config"] = quantization_config(config)
    if source.is_adapter:
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(source.path, **options)
    else:
        model = AutoModelForCausalLM.from_pretrained(source.path, **options)
    tokenizer = load_tokenizer(source.path, padding_side="left")
    return model.eval(), tokenizer


def decoding_options(settings: InferenceConfig, tokenizer) -> dict[str, Any]:
    """The `generate` keyword arguments for the configured decoding: greedy unless `do_sample`.

    `max_new_tokens` counts the answer only, never the prompt. Every way of generating here (batched,
    streamed, and the benchmark's pipeline baseline) decodes with exactly these options.
    """
    options: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "do_sample": settings.do_sample,
        "repetition_penalty": settings.repetition_penalty,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "use_cache": True,
    }
    if settings.do_sample:
        options.update(temperature=settings.temperature, top_p=settings.top_p)
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
def generate(
    model, tokenizer, prompts: list[str], settings: InferenceConfig, streamer: Any = None
) -> list[Answer]:
    """Answer rendered prompts in batches; only the generated answer is returned, never the prompt.

    Prompts are batched by length so that little padding is computed, and answered in their own order.
    A `streamer` (which transformers allows only for a batch of one) receives the tokens as they come.
    """
    if settings.do_sample:
        from transformers import set_seed

        set_seed(settings.seed)
    options = decoding_options(settings, tokenizer)
    encoded = [tokenizer(prompt)["input_ids"] for prompt in prompts]
    order = sorted(range(len(prompts)), key=lambda index: len(encoded[index]))
    answers: dict[int, Answer] = {}
    for start in range(0, len(order), settings.batch_size):
        indices = order[start : start + settings.batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in indices]}, return_tensors="pt")
        batch = batch.to(model.device)
        output = model.generate(**batch, streamer=streamer, **options)
        for index, row in zip(indices, output[:, batch["input_ids"].shape[1] :].tolist(), strict=True):
            answers[index] = answer_from_tokens(tokenizer, row)
    return [answers[index] for index in range(len(prompts))]


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
