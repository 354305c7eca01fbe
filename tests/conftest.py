"""Shared fixtures. Every test runs offline: the Hub is never reached."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

from core.config import Config, load_config

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "smoke.yaml"


def smoke_config(tmp: Path, *overrides: str) -> Config:
    return load_config(
        SMOKE,
        [f"run.output_dir={tmp / 'runs'}", f"model.embedded.cache_dir={tmp / 'base'}", *overrides],
    )


@pytest.fixture(scope="session")
def smoke_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke profile's embedded base, built once per session."""
    from fine_tune.base import build_base, embedded_base_dir

    root = tmp_path_factory.mktemp("smoke")
    spec = smoke_config(root).model.embedded
    destination = embedded_base_dir(spec)
    build_base(spec, destination)
    return destination


@pytest.fixture(scope="session")
def smoke_tokenizer(smoke_base_dir: Path):
    from fine_tune.train import load_tokenizer

    return load_tokenizer(str(smoke_base_dir))
