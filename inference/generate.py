"""Loading a model by name and generating answers in batches: left padding, KV cache, stop at EOS."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from core.config import Config, InferenceConfig
from core.errors import UserError
from core.runs import RunPaths
from fine_tune.base import resolve_base

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


def inference_dtype() -> torch.dtype:
    if not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_model(source: ModelSource):
    """The model in eval mode and its tokenizer, set for batched generation (left padding, a pad != EOS)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if source.is_adapter:
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(source.path, dtype=inference_dtype())
    else:
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=inference_dtype())
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    tokenizer.padding_side = "left"
    return model.to(device).eval(), tokenizer


@dataclass
class Answer:
    text: str
    new_tokens: int
    stopped: bool  # ended with EOS before the token limit


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], settings: InferenceConfig) -> list[Answer]:
    """Answer rendered prompts in batches; only the generated answer is returned, never the prompt."""
    answers: list[Answer] = []
    for start in range(0, len(prompts), settings.batch_size):
        batch = tokenizer(prompts[start : start + settings.batch_size], return_tensors="pt", padding=True)
        batch = batch.to(model.device)
        sampling = (
            {"temperature": settings.temperature, "top_p": settings.top_p} if settings.do_sample else {}
        )
        if settings.do_sample:
            torch.manual_seed(settings.seed)
        output = model.generate(
            **batch,
            max_new_tokens=settings.max_new_tokens,
            do_sample=settings.do_sample,
            repetition_penalty=settings.repetition_penalty,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
            **sampling,
        )
        for row in output[:, batch["input_ids"].shape[1] :].tolist():
            stopped = tokenizer.eos_token_id in row
            tokens = row[: row.index(tokenizer.eos_token_id)] if stopped else row
            answers.append(
                Answer(tokenizer.decode(tokens, skip_special_tokens=True).strip(), len(tokens), stopped)
            )
    return answers
