"""`make data`: curate the configured sources into runs/<run>/dataset (train + validation, card, stats)."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict

from core.cli import run_stage, stage_parser
from core.config import Config
from core.runs import RunPaths, atomic_dir, write_json_atomic
from data_prep.card import dataset_card
from data_prep.curate import curate

log = logging.getLogger("data_prep")


def main(config: Config, args: argparse.Namespace) -> None:
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    from fine_tune.base import resolve_base

    tokenizer = AutoTokenizer.from_pretrained(resolve_base(config), revision=config.model.revision)
    train, validation, stats = curate(config, tokenizer)
    for warning in stats.warnings:
        log.warning("warning: %s", warning)

    destination = RunPaths.of(config).dataset
    with atomic_dir(destination) as staging:
        DatasetDict(
            {"train": Dataset.from_list(train), "validation": Dataset.from_list(validation)}
        ).save_to_disk(str(staging / "data"))
        write_json_atomic(staging / "stats.json", asdict(stats))
        (staging / "README.md").write_text(dataset_card(config, stats), encoding="utf-8")
    log.info("%s", json.dumps(asdict(stats), indent=2))
    log.info("dataset: %s (train %d, validation %d)", destination, stats.train_rows, stats.validation_rows)


if __name__ == "__main__":
    run_stage(main, stage_parser(__doc__.splitlines()[0]))
