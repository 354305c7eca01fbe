"""`make push`: push the adapter (and, with hub.push_merged, the merged model) to the Hugging Face Hub.

Where: hub.model_repo, or `make push HUB_REPO=user/name`; the merged model goes to <repo>-merged.
Private by default (hub.private); to the branch hub.revision when set; one commit per repo, named
after the run. What: safetensors weights, configs, tokenizer files and a generated model card, by an
allowlist; never pickles (training_args.bin, optimizer and scheduler states), checkpoints or logs.

An adapter names its base in adapter_config.json, and a Hub user must be able to load that base. So
the pushed copy names the base's Hub id: model.name_or_path when it is one, and for the embedded base,
which exists on no Hub, <repo>-base, which this stage pushes too (a few MB). The local adapter folder
keeps its local base path, so everything here still works offline.

Before anything is pushed, every repo id is checked as the client will check it, and every folder to push
must be whole: its JSON files parse, its safetensors files are complete, and it has weights and a
tokenizer. A damaged artifact stops the push with one line naming the file and how to make it again.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

from core.cli import run_stage
from core.config import Config
from core.errors import UserError
from core.hub import check_repo_id, configure_client, failure_reason, push_parser, push_target, with_retries
from core.model import resolve_base
from core.runs import RunPaths, require
from fine_tune.card import base_hub_id, model_card
from fine_tune.resume import UnreadableCheckpoint, check_weights, read_json

log = logging.getLogger(__name__)

# The top-level files a Hub user needs to load a model or an adapter; nothing else is ever pushed.
PUSHED_FILES = re.compile(
    r".+\.safetensors|model\.safetensors\.index\.json|(adapter_|generation_)?config\.json"
    r"|tokenizer(_config)?\.json|tokenizer\.model|special_tokens_map\.json|added_tokens\.json"
    r"|chat_template\.(jinja|json)|vocab\.(json|txt)|merges\.txt"
)


def files_to_push(folder: Path) -> list[Path]:
    """The allowlisted files directly in `folder`. Pickles, trainer state, logs and a local README.md
    (the generated card replaces it) stay here; subfolders such as checkpoints are never walked."""
    return sorted(path for path in folder.iterdir() if path.is_file() and PUSHED_FILES.fullmatch(path.name))


def check_whole(folder: Path, what: str, remedy: str) -> None:
    """A UserError naming the file and `remedy` unless the folder holds weights and a tokenizer, its
    safetensors files are complete and the JSON files it pushes parse."""
    names = {path.name for path in files_to_push(folder)}
    problem = None
    if not any(name.endswith(".safetensors") for name in names):
        problem = "no weights file (*.safetensors)"
    elif not names & {"tokenizer.json", "tokenizer.model"}:
        problem = "no tokenizer file (tokenizer.json or tokenizer.model)"
    else:
        try:
            check_weights(folder)
            for name in sorted(name for name in names if name.endswith(".json")):
                read_json(folder / name)
        except UnreadableCheckpoint as error:  # what resume.py says of a damaged file, naming it
            problem = str(error)
    if problem is not None:
        raise UserError(f"cannot push {what}: in {folder}, {problem}; {remedy}")


def adapter_config_for_hub(adapter: Path, base_id: str, base_revision: str | None) -> bytes:
    """The adapter's config, naming a base that a Hub user can load (PEFT loads it at `revision`)."""
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_id
    config["revision"] = base_revision
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def base_license(base_id: str) -> str | None:
    """The license the base's own Hub card states (llama2 for meta-llama/Llama-2-7b-hf), if any."""
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        card = HfApi().model_info(base_id).card_data
    except (HfHubHTTPError, httpx2.TransportError) as error:
        log.info("no license for the card: cannot read %s's card (%s)", base_id, failure_reason(error))
        return None
    return card.get("license") if card else None


def push_folder(
    folder: Path, repo_id: str, card: str, config: Config, what: str, replaced: dict[str, bytes] | None = None
) -> str:
    """One commit of the folder's pushable files (some `replaced` by new content) and the card."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    revision = config.hub.revision
    replaced = replaced or {}

    def push() -> str:
        api.create_repo(repo_id, private=config.hub.private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        operations = [
            CommitOperationAdd(path.name, replaced.get(path.name, str(path)))
            for path in files_to_push(folder)
        ]
        operations.append(CommitOperationAdd("README.md", card.encode("utf-8")))
        commit = api.create_commit(
            repo_id, operations, commit_message=f"Upload {what} of run {config.run.name}", revision=revision
        )
        return commit.commit_url

    return with_retries(push, what, repo_id)


def main(config: Config, args: argparse.Namespace) -> None:
    repo = push_target(config.hub.model_repo, "hub.model_repo", args.if_configured)
    if repo is None:
        return
    paths = RunPaths.of(config)
    adapter = require(paths.adapter / "adapter_config.json", "trained adapter", "make train").parent
    merged = None
    if config.hub.push_merged:
        merged = require(paths.merged / "config.json", "merged model", "make merge").parent
    base_id = base_hub_id(config, repo)
    if base_id is None:
        raise UserError(
            f"the base {config.model.name_or_path} is a local folder that Hub users cannot load: name "
            "its Hub id for the push (make push SET=model.name_or_path=org/name)"
        )
    embedded = config.model.name_or_path == "embedded"
    merged_repo = f"{repo}-merged"
    adapter_remedy = "run `make train` again (it rewrites a damaged adapter from its checkpoint)"
    check_whole(adapter, "the adapter", adapter_remedy)
    if merged is not None:
        check_repo_id(merged_repo, "hub.model_repo + '-merged' (the merged model's repo)")
        check_whole(merged, "the merged model", "run `make merge` again")
    if embedded:
        base = Path(resolve_base(config))
        check_repo_id(base_id, "hub.model_repo + '-base' (the embedded base's repo)")
        check_whole(base, "the base", f"delete {base} and run `make base`")
    configure_client()

    if embedded:
        base_revision, license_id = config.hub.revision, None
        card = model_card(config, "base", base_id, None, None)
        log.info("base pushed: %s", push_folder(base, base_id, card, config, "the base"))
    else:
        base_revision, license_id = config.model.revision, base_license(base_id)

    card = model_card(config, "adapter", repo, base_id, license_id)
    hub_config = {"adapter_config.json": adapter_config_for_hub(adapter, base_id, base_revision)}
    log.info("adapter pushed: %s", push_folder(adapter, repo, card, config, "the adapter", hub_config))
    if merged is not None:
        card = model_card(config, "merged", merged_repo, base_id, license_id)
        log.info(
            "merged model pushed: %s", push_folder(merged, merged_repo, card, config, "the merged model")
        )


if __name__ == "__main__":
    run_stage(main, push_parser(__doc__.splitlines()[0]))
