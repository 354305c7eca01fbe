"""Re-runs of `make train` off the happy path: finished, changed, damaged checkpoints, two at once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.errors import UserError
from core.runs import RunPaths, run_folder_lock
from fine_tune.resume import fingerprint_changes, training_fingerprint
from tests.conftest import REPO, SMOKE, fresh_run, run_stage, smoke_config
from tests.test_e2e import assert_one_error

SIX_STEPS = ["--set", "train.max_steps=6", "--set", "train.save_steps=3", "--set", "train.eval_steps=3"]


def report_of(run: Path) -> dict:
    return json.loads((run / "runs" / "smoke" / "reports" / "train_report.json").read_text())


def adapter_bytes(run: Path) -> bytes:
    return (run / "runs" / "smoke" / "adapter" / "adapter_model.safetensors").read_bytes()


def copied_run(source: Path, name: str) -> Path:
    """A full copy of a trained run (dataset, checkpoints, adapter), so that a test may damage it."""
    target = source.parent / name
    shutil.copytree(source, target, symlinks=True)
    dataset = target / "runs" / "smoke" / "dataset"
    if dataset.is_symlink():  # a real copy: a test may curate it again
        real = dataset.resolve()
        dataset.unlink()
        shutil.copytree(real, dataset)
    return target


@pytest.fixture(scope="module")
def trained(curated):
    """A smoke run trained to its end (6 steps, checkpoints at 3 and 6)."""
    run = fresh_run(curated, "trained-once")
    run_stage("fine_tune.train", run, *SIX_STEPS)
    return run


def test_fingerprint_names_what_changed_and_ignores_the_length(tmp_path, curated):
    dataset = curated / "runs" / "smoke" / "dataset" / "data"
    before = training_fingerprint(smoke_config(tmp_path), dataset)
    longer = training_fingerprint(smoke_config(tmp_path, "train.max_steps=60", "train.save_steps=7"), dataset)
    assert fingerprint_changes(before, longer) == []
    assert before["length"] != longer["length"]
    other = training_fingerprint(smoke_config(tmp_path, "lora.r=4", "run.seed=8"), dataset)
    assert fingerprint_changes(before, other) == ["lora.r 8 -> 4", "run.seed 7 -> 8"]
    assert fingerprint_changes({**before, "dataset": "0" * 64}, before) == [
        "the curated dataset, which make data has rewritten since"
    ]


def test_a_finished_run_is_not_trained_again(trained):
    run = copied_run(trained, "finished")
    adapter = adapter_bytes(run)
    result = run_stage("fine_tune.train", run, *SIX_STEPS)
    assert "this run is complete (step 6" in result.stderr
    assert report_of(run)["steps"] == 6
    assert adapter_bytes(run) == adapter
    assert sorted(p.name for p in (run / "runs" / "smoke" / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-3",
        "checkpoint-6",
    ]


def test_a_changed_lora_rank_is_refused_in_one_line(trained):
    run = copied_run(trained, "changed-rank")
    adapter = adapter_bytes(run)
    result = run_stage("fine_tune.train", run, *SIX_STEPS, "--set", "lora.r=4", check=False)
    assert_one_error(result, "was trained on other settings than this run's (lora.r 8 -> 4)")
    assert "train.resume=never" in result.stderr
    assert adapter_bytes(run) == adapter


def test_new_data_is_refused_and_train_resume_never_starts_over(trained):
    run = copied_run(trained, "new-data")
    run_stage("data_prep", run, "--set", "data.alpaca.limit=10")
    result = run_stage("fine_tune.train", run, *SIX_STEPS, check=False)
    assert_one_error(result, "the curated dataset, which make data has rewritten since")

    result = run_stage("fine_tune.train", run, *SIX_STEPS, "--set", "train.resume=never")
    assert "deleting the checkpoints" in result.stderr
    report = report_of(run)
    assert report["resumed_from"] is None and report["steps"] == report["steps_this_run"] == 6


def test_a_longer_run_continues_and_counts_only_its_own_tokens_and_time(trained):
    run = copied_run(trained, "longer")
    first = report_of(run)
    result = run_stage("fine_tune.train", run, *SIX_STEPS, "--set", "train.max_steps=9")
    assert "continuing to the new length" in result.stderr
    # What a user reads: the stage's own summary, none of the libraries' notes about themselves.
    assert "trained    3 steps in" in result.stderr and "loss       train" in result.stderr
    for noise in ("Paged optimizers", "FutureWarning", "mtime may not be reliable", "kernels", "UserWarning"):
        assert noise not in result.stderr
    report = report_of(run)
    assert (report["resumed_at_step"], report["steps"], report["steps_this_run"]) == (6, 9, 3)
    assert report["input_tokens_seen"] == first["input_tokens_seen"] + report["input_tokens_this_run"]
    # wall_seconds is rounded to 0.01 s: a short run's speed is known from it only within that rounding
    tokens, seconds = report["input_tokens_this_run"], report["wall_seconds"]
    assert tokens / (seconds + 0.005) - 0.1 <= report["tokens_per_second"] <= tokens / (seconds - 0.005) + 0.1


@pytest.mark.parametrize("damaged", ["trainer_state.json", "adapter_model.safetensors", "optimizer.pt"])
def test_a_damaged_newest_checkpoint_is_passed_over_for_the_one_before(trained, damaged):
    run = copied_run(trained, f"damaged-{damaged}")
    newest = run / "runs" / "smoke" / "checkpoints" / "checkpoint-6" / damaged
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    result = run_stage("fine_tune.train", run, *SIX_STEPS)
    assert f"checkpoint-6 cannot be used: {damaged}" in result.stderr
    assert "Traceback" not in result.stderr
    report = report_of(run)
    assert report["resumed_at_step"] == 3 and report["steps"] == 6


def test_no_readable_checkpoint_is_one_line(trained):
    run = copied_run(trained, "all-damaged")
    for state in (run / "runs" / "smoke" / "checkpoints").glob("checkpoint-*/trainer_state.json"):
        state.write_text("{ truncated")
    result = run_stage("fine_tune.train", run, *SIX_STEPS, check=False)
    assert_one_error(result, "can be read (see above): start over with SET=train.resume=never")


def test_a_second_train_on_the_same_run_folder_stops_at_once(curated):
    run = fresh_run(curated, "two-at-once")
    # Long enough to be still training when the second starts; stopped with Ctrl-C (SIGINT) after.
    command = [sys.executable, "-m", "fine_tune.train", "--config", str(SMOKE),
               "--set", f"run.output_dir={run / 'runs'}", "--set", f"model.embedded.cache_dir={run / 'base'}",
               *SIX_STEPS, "--set", "train.max_steps=100000"]  # fmt: skip
    # Its stderr goes to a file: a pipe nobody reads fills with progress lines and blocks the run for good.
    log = (run / "first.log").open("w")
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, text=True)
    lock = run / "runs" / "smoke" / ".lock"
    deadline = time.monotonic() + 120
    while not (lock.is_file() and lock.read_text()):
        assert first.poll() is None and time.monotonic() < deadline, "the first run never took the run folder"
        time.sleep(0.05)
    second = run_stage("fine_tune.train", run, *SIX_STEPS, check=False)
    assert_one_error(second, f"is in use by `make train` (process {first.pid})")
    assert first.poll() is None, "the first run ended: the second did not meet it"
    first.send_signal(signal.SIGINT)
    try:
        code = first.wait(timeout=120)
    except subprocess.TimeoutExpired:
        first.kill()  # no training left running through the rest of the suite
        first.wait()
        pytest.fail(f"not stopped 120 s after Ctrl-C; log:\n{(run / 'first.log').read_text()[-3000:]}")
    finally:
        log.close()
    assert code == 130
    assert "error: interrupted" in (run / "first.log").read_text()
    assert not (run / "runs" / "smoke" / "adapter").exists()


def test_a_lock_left_by_a_killed_stage_is_taken_over(tmp_path):
    paths = RunPaths(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom core.runs import RunPaths, run_folder_lock\n"
         "with run_folder_lock(RunPaths(__import__('pathlib').Path(sys.argv[1])), 'make data'):\n"
         "    print('held', flush=True); time.sleep(600)", str(paths.root)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match="in use by `make data`"), run_folder_lock(paths, "make train"):
        pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with run_folder_lock(paths, "make train"):
        assert f"process {os.getpid()}" in paths.lock.read_text()
