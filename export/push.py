"""`python -m export.push`: with hub.push_gguf, push runs/<run>/gguf/ (the GGUF files and the Modelfile)
to <hub.model_repo>-gguf, with a card that says how to run them with llama.cpp and with Ollama.

Private by default (hub.private), to the branch hub.revision when set, in one commit. Without
hub.push_gguf it says so and pushes nothing. The folder is checked first: every file it pushes is there
and every GGUF file starts with GGUF's magic bytes.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from core.cli import run_stage
from core.config import Config
from core.errors import UserError
from core.hub import check_repo_id, configure_client, push_parser, push_target, with_retries
from core.prompts import render_prompt
from core.runs import RunPaths, require

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
QUESTION = "How do I reverse a list in Python?"


def files_to_push(folder: Path) -> list[Path]:
    """The GGUF files and the Modelfile; a damaged GGUF file stops the push in one line."""
    files = sorted(folder.glob("*.gguf"))
    for path in files:
        with path.open("rb") as handle:
            if handle.read(4) != GGUF_MAGIC:
                raise UserError(f"cannot push {path}: it is not a GGUF file; run `make export` again")
    if not files or not (folder / "Modelfile").is_file():
        raise UserError(f"cannot push {folder}: no GGUF files or no Modelfile in it; run `make export` again")
    return [*files, folder / "Modelfile"]


def card(config: Config, repo_id: str, files: list[Path], check: dict[str, Any]) -> str:
    """README.md: what the files are, how they were checked, and how to run them."""
    ggufs = [path for path in files if path.suffix == ".gguf"]
    four_bit = next(path.name for path in ggufs if "Q4_K_M" in path.name)
    rows = "\n".join(f"| `{path.name}` | {path.stat().st_size / 2**20:.1f} MB |" for path in ggufs)
    if config.data.prompt_format == "llama2":
        prompt = render_prompt("{question}", config.data.system_prompt)
        prompt_format = [
            "Llama-2 chat, embedded in each file as its chat template; llama.cpp adds the BOS token `<s>`:\n",
            f"```text\n{prompt}\n```\n",
        ]
    else:
        prompt_format = [
            f"The format it was trained in (`data.prompt_format: {config.data.prompt_format}`: the base "
            "model's own chat template, Firefly's, or plain text), embedded in each file as its chat "
            "template and in the Modelfile.\n"
        ]
    lines = [
        "---",
        "tags: [gguf, llama.cpp, ollama, llama-2]",
        *(["base_model: " + json.dumps(f"{config.hub.model_repo}-merged")] if config.hub.push_merged else []),
        "---",
        f"# {repo_id}\n",
        f"The merged model of run `{config.run.name}` as GGUF files, converted with llama.cpp's own "
        "`convert_hf_to_gguf.py` and quantized with llama.cpp, and an Ollama `Modelfile` with the prompt "
        "format it was trained on.\n",
        "| file | size |\n| --- | --- |\n"
        + rows
        + "\n| `Modelfile` | Ollama: template, system prompt, stops |\n",
        "## Prompt format\n",
        *prompt_format,
        "## Checked against the merged model\n",
        f"```json\n{json.dumps(check, indent=2, ensure_ascii=False)}\n```\n",
        "## Run it with llama.cpp\n",
        "```bash\n"
        f"llama-cli -m {four_bit} --jinja -cnv"
        + (f" -sys {json.dumps(config.data.system_prompt)}" if config.data.system_prompt else "")
        + f"\nllama-server -m {four_bit} --jinja   # OpenAI-compatible chat on port 8080\n```\n",
        "`--jinja` applies the embedded chat template exactly.\n",
        "## Run it with Ollama\n",
        "```bash\n"
        f"hf download {repo_id} --local-dir {config.run.name}-gguf && cd {config.run.name}-gguf\n"
        f"ollama create {config.run.name} -f Modelfile\n"
        f'ollama run {config.run.name} "{QUESTION}"\n```\n',
        "The Modelfile uses the 4-bit file; edit its `FROM` line for another one.\n",
    ]
    return "\n".join(lines)


def main(config: Config, args: argparse.Namespace) -> None:
    if not config.hub.push_gguf:
        log.info("GGUF push skipped: hub.push_gguf is false")
        return
    repo = push_target(config.hub.model_repo, "hub.model_repo", args.if_configured)
    if repo is None:
        return
    paths = RunPaths.of(config)
    folder = require(paths.gguf(), "GGUF export", "make export")
    gguf_repo = f"{repo}-gguf"
    check_repo_id(gguf_repo, "hub.model_repo + '-gguf' (the GGUF files' repo)")
    files = files_to_push(folder)
    check_path = paths.reports / "export_check.json"
    check = json.loads(check_path.read_text(encoding="utf-8")) if check_path.is_file() else {}
    text = card(config, gguf_repo, files, check)
    configure_client()
    log.info("GGUF files pushed: %s", push_files(gguf_repo, files, text, config))


def push_files(repo_id: str, files: list[Path], card_text: str, config: Config) -> str:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    revision = config.hub.revision

    def push() -> str:
        api.create_repo(repo_id, private=config.hub.private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        operations = [CommitOperationAdd(path.name, str(path)) for path in files]
        operations.append(CommitOperationAdd("README.md", card_text.encode("utf-8")))
        message = f"Upload the GGUF files of run {config.run.name}"
        return api.create_commit(repo_id, operations, commit_message=message, revision=revision).commit_url

    return with_retries(push, "the GGUF files", repo_id)


if __name__ == "__main__":
    run_stage(main, push_parser(__doc__.splitlines()[0]))
