"""Ctrl-C during `make data`: the terminal sends SIGINT to the whole foreground process group, the stage
and its workers alike. It stops promptly, with one line, and leaves no staging folder."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from synthetic.stackoverflow import write_dump
from synthetic.stages import stage_command
from tests.conftest import REPO, SMOKE

# Enough rows that the workers are still converting HTML when the signal comes, several seconds of work.
QUESTIONS = 20_000


@pytest.fixture(scope="module")
def dump(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_dump(tmp_path_factory.mktemp("dump"), QUESTIONS, answers=QUESTIONS * 13 // 8, seed=5)


def start(how: str, overrides: list[str]) -> subprocess.Popen:
    """The stage in a process group of its own, as a terminal's foreground job is."""
    if how == "make":
        command = ["make", "--no-print-directory", "data", f"CONFIG={SMOKE}", "SET=" + " ".join(overrides)]
    else:
        command = stage_command("data_prep", SMOKE, overrides)
    return subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def wait_for_converted_rows(run: Path, process: subprocess.Popen) -> None:
    """Until the staging folder's rows file holds batches the workers converted: they are at work."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, f"finished before the interrupt:\n{process.communicate()[1][-3000:]}"
        if any(rows.stat().st_size > 64 << 10 for rows in run.glob(".dataset.tmp-*/rows.arrow")):
            return
        time.sleep(0.05)
    raise AssertionError("the workers never wrote a batch")


@pytest.mark.parametrize("how", ["python", "make"])
def test_ctrl_c_stops_curation_at_once_with_one_line_and_no_staging(tmp_path, smoke_base_dir, dump, how):
    (tmp_path / "base").symlink_to(smoke_base_dir.parent)
    run = tmp_path / "runs" / "smoke"
    overrides = [
        f"run.output_dir={tmp_path / 'runs'}",
        f"model.embedded.cache_dir={tmp_path / 'base'}",
        f"data.stackoverflow.questions={dump['Questions']}",
        f"data.stackoverflow.answers={dump['Answers']}",
        "data.stackoverflow.tags=null",
        "data.stackoverflow.limit=null",
        "data.num_proc=2",
    ]
    process = start(how, overrides)
    wait_for_converted_rows(run, process)
    interrupted = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    stopped_after = time.monotonic() - interrupted
    # A hang is what this catches (multiprocessing.Pool's terminate() hung for good); the bound is loose
    # because a busy CI machine is slow: quiet, the stage stops in 0.2 to 0.4 s.
    assert stopped_after < 20, f"{stopped_after:.1f} s after Ctrl-C"
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    # One line of its own; progress lines may come before it (on a fast machine the workers' part can end
    # before the signal).
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == ["error: interrupted"]
    # make dies by the signal after its child, saying so in a line of its own
    assert process.returncode == (-signal.SIGINT if how == "make" else 130)
    assert not list(run.glob(".dataset.tmp-*")) and not (run / "dataset").exists()
