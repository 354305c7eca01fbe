"""A stage run as a user runs it: `python -m <stage> --config=<profile> --set=<override> ...` in a process of
its own, from the repository's root. The tests, the benchmarks and make gpu-check all drive the pipeline
this way, so that what they measure or check is the command a user types, not a function call."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from synthetic import REPO


class StageFailed(Exception):
    """A stage exited with an error; the message holds its command line and, if captured, its stderr's end."""


def stage_command(module: str, config: str | Path, overrides: Iterable[str] = (), *extra: str) -> list[str]:
    """The command line of the stage `module` on the profile `config` with `overrides` (`a.b=value`), then
    `extra` as they are. `--option=value`, so that a value starting with `-` is not taken for an option."""
    sets = [f"--set={value}" for value in overrides]
    return [sys.executable, "-m", module, f"--config={config}", *sets, *extra]


def run_stage(
    module: str,
    config: str | Path,
    overrides: Iterable[str] = (),
    *extra: str,
    capture: bool = True,
    check: bool = True,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float | None = None,
    launch: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> subprocess.CompletedProcess:
    """Run the stage (`stage_command`) from the repository's root, with `env` added to this environment and
    `stdin` as its input; its output captured as text, or shown as it comes (capture=False: a benchmark's
    progress). StageFailed if it fails and `check`. `launch` takes subprocess.run's arguments."""
    command = stage_command(module, config, overrides, *extra)
    environment = {**os.environ, **(env or {})}
    result = launch(
        command, cwd=REPO, input=stdin, capture_output=capture, text=True, timeout=timeout, env=environment
    )
    if check and result.returncode != 0:
        stderr = f":\n{result.stderr[-3000:]}" if capture else ""
        raise StageFailed(f"{' '.join(command[1:])} failed ({result.returncode}){stderr}")
    return result
