"""`make data`: curate the configured sources into runs/<run>/dataset (train + validation, card, stats)."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict

from core.cli import run_stage, stage_parser
from core.config import Config
from core.runs import RunPaths, atomic_dir, run_folder_lock, write_json_atomic
from data_prep.card import dataset_card, summary
from data_prep.curate import curate
from data_prep.rows import load_row_tokenizer

log = logging.getLogger("data_prep")


def main(config: Config, args: argparse.Namespace) -> None:
    started = time.monotonic()
    count_tokens, chat = load_row_tokenizer(config)
    paths = RunPaths.of(config)
    destination = paths.dataset
    with run_folder_lock(paths, "make data"), atomic_dir(destination) as staging:
        stats = curate(config, count_tokens, chat, staging)
        write_json_atomic(staging / "stats.json", asdict(stats))
        (staging / "README.md").write_text(dataset_card(config, stats), encoding="utf-8")
    log.info("%s", summary(config, stats, f"{destination} in {time.monotonic() - started:.0f} s"))


if __name__ == "__main__":
    run_stage(main, stage_parser(__doc__.splitlines()[0]))
