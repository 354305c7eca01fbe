"""Where a run's artifacts live, and how a stage writes one without ever leaving half of it."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import Config
from core.errors import UserError

log = logging.getLogger(__name__)
# What atomic_dir leaves beside `final` while it works: `.<final>.tmp-<pid>-<ns>`, `.<final>.old-<pid>-<ns>`.
_STAGING = re.compile(r"^\.(?P<final>.+)\.(?:tmp|old)-(?P<pid>\d+)-\d+$")


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

    def gguf(self, model: str = "new_model") -> Path:
        """Where `make export MODEL=model` writes its GGUF files: gguf/ for the fine-tuned model, gguf-base/
        for the base, gguf-<folder name>/ for a model folder."""
        return self.root / ("gguf" if model == "new_model" else f"gguf-{Path(model).name}")

    def gguf_file(self, model: str, kind: str) -> Path:
        """One of them: <run>-<kind>.gguf, <run>-base-<kind>.gguf, <folder name>-<kind>.gguf."""
        stem = {"new_model": self.root.name, "base": f"{self.root.name}-base"}.get(model, Path(model).name)
        return self.gguf(model) / f"{stem}-{kind}.gguf"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"


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
    remove_stale_staging(final)
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


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale_staging(final: Path) -> None:
    """Remove the staging folders of `final` that a killed stage left behind (their process is gone)."""
    for path in final.parent.glob(f".{final.name}.*-*"):
        match = _STAGING.match(path.name)
        if match and match["final"] == final.name and not process_alive(int(match["pid"])):
            log.info("removing %s, left by an interrupted run", path)
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def run_folder_lock(paths: RunPaths, stage: str) -> Iterator[None]:
    """Hold the run folder for one stage that writes into it: a second one stops at once, naming the holder.

    An advisory lock (flock) on `<run>/.lock`: the kernel releases it when its process ends, however it
    ends, so a lock left by a killed stage is simply taken over. Under torchrun only rank 0 takes it.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    created = not paths.root.exists()
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.lock, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UserError(
                f"{paths.root} is in use by {holder}: wait for it to finish, or stop it"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"`{stage}` (process {os.getpid()})")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            if created and os.listdir(paths.root) == [paths.lock.name]:
                paths.lock.unlink()  # a stage that failed before writing anything leaves no run folder
                paths.root.rmdir()


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.write_text(text, encoding="utf-8")
    staging.replace(path)
