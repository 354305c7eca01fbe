"""`make push-data`: push the curated dataset (train and validation splits) and its card to the Hub.

Where: hub.dataset_repo, or `make push-data HUB_REPO=user/name`; private by default (hub.private), to
the branch hub.revision when set. `datasets` uploads the splits as Parquet and writes the `configs` and
`dataset_info` metadata into the repo's README.md; the card from `make data` then replaces that
README.md, keeping those two metadata fields, so `load_dataset(repo)` and a reader both find what they
need. Pushing again commits nothing when nothing changed.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from core.cli import run_stage
from core.config import Config
from core.hub import configure_client, push_parser, push_target, with_retries
from core.runs import RunPaths, require

log = logging.getLogger(__name__)

# The metadata `push_to_hub` writes into README.md and `load_dataset` reads back.
DATASETS_METADATA = ("configs", "dataset_info")


def card_with_hub_metadata(card_text: str, pushed_card: Path) -> str:
    """Our dataset card, plus the `configs` and `dataset_info` metadata of the card `push_to_hub` wrote."""
    from huggingface_hub import DatasetCard

    card = DatasetCard(card_text)
    pushed = DatasetCard.load(pushed_card).data
    for key in DATASETS_METADATA:
        if pushed.get(key) is not None:
            card.data[key] = pushed.get(key)
    return str(card)


def main(config: Config, args: argparse.Namespace) -> None:
    from datasets import load_from_disk
    from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download

    repo = push_target(config.hub.dataset_repo, "hub.dataset_repo", args.if_configured)
    if repo is None:
        return
    paths = RunPaths.of(config)
    dataset = load_from_disk(str(require(paths.dataset / "data", "curated dataset", "make data")))
    card_text = (paths.dataset / "README.md").read_text(encoding="utf-8")
    configure_client()
    revision, message = config.hub.revision, f"Upload dataset of run {config.run.name}"

    def push() -> str:
        dataset.push_to_hub(repo, private=config.hub.private, revision=revision, commit_message=message)
        pushed_card = hf_hub_download(repo, "README.md", repo_type="dataset", revision=revision)
        card = card_with_hub_metadata(card_text, Path(pushed_card)).encode("utf-8")
        commit = HfApi().create_commit(
            repo,
            [CommitOperationAdd("README.md", card)],
            commit_message=f"Dataset card of run {config.run.name}",
            repo_type="dataset",
            revision=revision,
        )
        return commit.commit_url

    url = with_retries(push, "the dataset", repo)
    rows = {split: len(rows) for split, rows in dataset.items()}
    log.info("dataset pushed (%s rows): %s", ", ".join(f"{k} {v}" for k, v in rows.items()), url)


if __name__ == "__main__":
    run_stage(main, push_parser(__doc__.splitlines()[0]))
