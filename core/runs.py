"""Where a run's artifacts live, and how a stage writes one without ever leaving half of it."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import Config
from core.errors import UserError


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @classmethod
    def of(cls, config: Config) -> RunPaths:
        return cls(config.run.output_dir / config.run.name)

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


def require(path: Path, what: str, how: str) -> Path:
    """Fail with one line when a stage's input artifact is missing."""
    if not path.exists():
        raise UserError(f"{what} not found at {path}: run `{how}` first")
    return path


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; rename it into place only if the block succeeds.

    A crash or error leaves `final` as it was (absent, or the previous complete artifact).
    """
    created_parent = not final.parent.exists()
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created_parent and not any(final.parent.iterdir()):
            final.parent.rmdir()  # a failed first stage leaves no empty run folder behind
        raise
    previous = final.parent / f".{final.name}.old-{os.getpid()}-{time.monotonic_ns()}"
    if final.exists():
        final.rename(previous)
    staging.rename(final)
    shutil.rmtree(previous, ignore_errors=True)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.write_text(text, encoding="utf-8")
    staging.replace(path)
