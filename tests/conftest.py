"""Shared fixtures. Every test runs offline: the Hub is never reached, except the local Hub server of
tests/test_hub.py, which its subprocesses reach through HF_ENDPOINT."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import subprocess
import sys
from pathlib import Path

import pytest

from core.config import Config, load_config

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "smoke.yaml"
LLAMA2_TOKENIZER = (
    REPO / "tests" / "fixtures" / "llama2-tokenizer"
)  # Meta's, rebuilt offline: see README.md there


def smoke_config(tmp: Path, *overrides: str) -> Config:
    return load_config(
        SMOKE,
        [f"run.output_dir={tmp / 'runs'}", f"model.embedded.cache_dir={tmp / 'base'}", *overrides],
    )


@pytest.fixture(scope="session")
def smoke_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke profile's embedded base, built once per session."""
    from core.model import embedded_base_dir
    from fine_tune.base import build_base

    root = tmp_path_factory.mktemp("smoke")
    spec = smoke_config(root).model.embedded
    destination = embedded_base_dir(spec)
    build_base(spec, destination)
    return destination


@pytest.fixture(scope="session")
def smoke_tokenizer(smoke_base_dir: Path):
    from core.model import load_tokenizer

    return load_tokenizer(str(smoke_base_dir))


@pytest.fixture(scope="session")
def llama2_tokenizer():
    """Meta's Llama-2 tokenizer as the 7B profile gets it: AutoTokenizer over Meta's tokenizer_config.json
    (a LlamaTokenizer), through the product's load_tokenizer."""
    from core.model import load_tokenizer

    return load_tokenizer(str(LLAMA2_TOKENIZER))


def run_stage(
    module: str,
    tmp: Path,
    *extra: str,
    check: bool = True,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess:
    """A stage as a user runs it (`python -m ...`) on the smoke profile, with its outputs under `tmp`."""
    command = [
        sys.executable, "-m", module, "--config", str(SMOKE),
        "--set", f"run.output_dir={tmp / 'runs'}",
        "--set", f"model.embedded.cache_dir={tmp / 'base'}",
        *extra,
    ]  # fmt: skip
    environment = {**os.environ, **env} if env else None
    result = subprocess.run(
        command, cwd=REPO, input=stdin, capture_output=True, text=True, timeout=600, env=environment
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{module} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The smoke profile run through base, data, train and merge, once per session: (tmp, run folder)."""
    tmp = tmp_path_factory.mktemp("e2e")
    for module in ("fine_tune.base", "data_prep", "fine_tune.train", "fine_tune.merge"):
        run_stage(module, tmp)
    return tmp, tmp / "runs" / "smoke"


@pytest.fixture(scope="session")
def curated(tmp_path_factory, smoke_base_dir):
    """A folder whose runs/smoke holds the curated smoke dataset, built on the session's smoke base."""
    tmp = tmp_path_factory.mktemp("training")
    (tmp / "base").symlink_to(smoke_base_dir.parent)
    run_stage("data_prep", tmp)
    return tmp


def fresh_run(curated: Path, name: str) -> Path:
    """A copy of the curated run under a new folder, so each training run starts from nothing."""
    target = curated / name
    (target / "runs" / "smoke").mkdir(parents=True)
    (target / "base").symlink_to((curated / "base").resolve())
    (target / "runs" / "smoke" / "dataset").symlink_to(curated / "runs" / "smoke" / "dataset")
    return target
