"""`make push`: push the adapter (and, with hub.push_merged, the merged model) to the Hugging Face Hub.

The token comes from HF_TOKEN or the client's stored login, never from the config, and is written
nowhere. Only safetensors, configs, tokenizer files and the generated card are uploaded: no pickles,
checkpoints or logs.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from core.cli import run_stage, stage_parser
from core.config import Config
from core.errors import UserError
from core.prompts import render_prompt
from core.runs import RunPaths, require

log = logging.getLogger(__name__)

UPLOADED_PATTERNS = ["*.safetensors", "*.json", "*.model", "*.jinja", "*.txt"]


def model_card(config: Config, base_model: str, kind: str, reports: Path, repo_id: str) -> str:
    """A README.md with Hub metadata, the prompt format, the training settings and the run's results."""
    is_adapter = kind == "adapter"
    train_report = reports / "train_report.json"
    results = json.loads(train_report.read_text()) if train_report.is_file() else {}
    metadata = [
        "---",
        f"base_model: {base_model}",
        *(["library_name: peft"] if is_adapter else ["library_name: transformers"]),
        "pipeline_tag: text-generation",
        "tags:\n- trl\n- sft\n- qlora\n- llama-2",
        *([f"datasets:\n- {config.hub.dataset_repo}"] if config.hub.dataset_repo else []),
        "---",
    ]
    loader = (
        "from peft import AutoPeftModelForCausalLM\n"
        f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")'
        if is_adapter
        else "from transformers import AutoModelForCausalLM\n"
        f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")'
    )
    body = [
        f"# {config.run.name} ({kind})\n",
        f"QLoRA fine-tune of `{base_model}` with TRL's SFTTrainer: 4-bit {config.quant.quant_type} base, "
        f"LoRA r={config.lora.r}, alpha={config.lora.alpha}, dropout={config.lora.dropout} on "
        f"{', '.join(config.lora.target_modules)}.\n",
        "## Prompt format\n",
        "```text\n<s>" + render_prompt("{question}", config.data.system_prompt) + " {answer}</s>\n```\n",
        "## Training\n",
        "```json\n" + config.train.model_dump_json(indent=2) + "\n```\n",
        "## Results\n",
        f"- final train loss: {results.get('final_train_loss', 'n/a')}",
        f"- validation loss: {results.get('eval_loss', 'n/a')}\n",
        "## Use\n",
        "```python\n" + loader + "\n```\n",
    ]
    return "\n".join(metadata) + "\n\n" + "\n".join(body)


def push_folder(folder: Path, repo_id: str, card: str, config: Config, kind: str) -> str:
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    files = sorted(
        {path for pattern in UPLOADED_PATTERNS for path in folder.glob(pattern) if path.name != "README.md"}
    )
    operations = [CommitOperationAdd(path.name, str(path)) for path in files]
    operations.append(CommitOperationAdd("README.md", card.encode("utf-8")))
    api = HfApi()
    try:
        api.create_repo(repo_id, private=config.hub.private, exist_ok=True)
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=f"Upload {kind} of run {config.run.name}",
            revision=config.hub.revision,
        )
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "no response"
        raise UserError(
            f"push of {kind} to {repo_id} failed ({status}): check the repo id and token"
        ) from None
    except OSError as error:
        raise UserError(f"push of {kind} to {repo_id} failed: cannot reach the Hub ({error})") from None
    return commit.commit_url


def main(config: Config, args: argparse.Namespace) -> None:
    from huggingface_hub import get_token

    if args.repo:
        config.hub.model_repo = args.repo
    missing = []
    if not config.hub.model_repo:
        missing.append("a repo id (hub.model_repo, or HUB_REPO=user/name)")
    if get_token() is None:
        missing.append("a token (HF_TOKEN, or `hf auth login`)")
    if missing:
        message = "push needs " + " and ".join(missing)
        if args.if_configured:
            log.info("push skipped: %s", message)
            return
        raise UserError(message)

    from fine_tune.base import resolve_base

    paths = RunPaths.of(config)
    adapter = require(paths.adapter / "adapter_config.json", "trained adapter", "make train").parent
    base_model = (
        config.model.name_or_path if config.model.name_or_path != "embedded" else resolve_base(config)
    )
    card = model_card(config, base_model, "adapter", paths.reports, config.hub.model_repo)
    log.info("adapter pushed: %s", push_folder(adapter, config.hub.model_repo, card, config, "adapter"))
    if config.hub.push_merged:
        merged = require(paths.merged / "config.json", "merged model", "make merge").parent
        repo = f"{config.hub.model_repo}-merged"
        card = model_card(config, base_model, "merged model", paths.reports, repo)
        log.info("merged model pushed: %s", push_folder(merged, repo, card, config, "merged model"))


if __name__ == "__main__":
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--repo", default=None, help="Hub repo id user/name (default hub.model_repo)")
    parser.add_argument(
        "--if-configured", action="store_true", help="skip with a message when not configured"
    )
    run_stage(main, parser)
