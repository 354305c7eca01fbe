"""Which model `--model` names: this run's fine-tuned model, its base, a local folder or a Hub id.

The answer is a ModelSource: where the files are and whether they are an adapter (loaded onto the base it
names) or a whole model. A Hub id is looked up on the Hub, or in the local Hub cache when offline, so that
an unknown or unreachable model is refused in one line before anything is loaded (inference/loading.py).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from core.config import HUB_REPO_ID, Config
from core.errors import UserError, shortened
from core.hub import REPO_ID_RULES, failure_reason, offline_variable
from core.model import resolve_base
from core.runs import RunPaths

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
