"""Faults of the machine a stage runs on: a full disk, a read-only file system, a file where a folder goes.

Each must end in one line and a non-zero exit, and leave the previous artifact as it was. The small and
read-only file systems are tmpfs mounts in a private mount namespace (`unshare`), so no test needs a real
disk to fill up; where the machine does not allow that, those tests skip.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SMOKE, STAGES, run_stage
from tests.test_e2e import assert_one_error

# Mount a tmpfs of $1 KiB at $2, copy $3 into it, make it read-only if $4 is "ro", run the rest; then list
# what the file system holds, after a marker line, so the test can see what the stage left behind.
IN_SMALL_FILESYSTEM = """
mount -t tmpfs -o size="$1"k tmpfs "$2" || exit 99
if [ -n "$3" ]; then cp -a "$3"/. "$2"/ || exit 98; fi
if [ "$4" = ro ]; then mount -o remount,ro "$2" || exit 97; fi
mountpoint="$2"; shift 4
"$@"; status=$?
echo "@@files"; (cd "$mountpoint" && find . -type f | sort)
exit $status
"""


def kilobytes(folder: Path) -> int:
    """What the files of `folder` occupy on a tmpfs (whole 4 KiB pages), in KiB."""
    return sum(math.ceil(path.stat().st_size / 4096) * 4 for path in folder.rglob("*") if path.is_file())


def stage_in_small_filesystem(
    tmp: Path, module: str, seed: Path | None, free_kb: int, *extra: str, read_only: bool = False
) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run a smoke stage whose run.output_dir is a tmpfs holding a copy of `seed` and `free_kb` KiB more."""
    mountpoint = tmp / f"small-{module}"
    mountpoint.mkdir(exist_ok=True)
    size = (kilobytes(seed) if seed else 0) + free_kb
    command = [sys.executable, "-m", module, "--config", str(SMOKE),
               "--set", f"run.output_dir={mountpoint}", "--set", f"model.embedded.cache_dir={tmp / 'base'}",
               *extra]  # fmt: skip
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", IN_SMALL_FILESYSTEM, "sh", str(size), str(mountpoint),
         str(seed or ""), "ro" if read_only else "rw", *command],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if result.returncode in (97, 98, 99) or shutil.which("unshare") is None:
        pytest.skip(f"this machine does not allow a private tmpfs mount: {result.stderr.strip()[-300:]}")
    output, _, listing = result.stdout.rpartition("@@files\n")
    result.stdout = output
    return result, listing.split()


def seed_of(run: Path, tmp: Path, *artifacts: str) -> Path:
    """A copy of some of a run's artifacts, laid out as run.output_dir/smoke/..."""
    seed = tmp / f"seed-{'-'.join(artifacts)}"
    for name in artifacts:
        shutil.copytree(run / name, seed / "smoke" / name)
    return seed


def test_disk_full_while_curating_keeps_the_previous_dataset(pipeline, tmp_path):
    tmp, run = pipeline
    seed = seed_of(run, tmp_path, "dataset")
    result, files = stage_in_small_filesystem(tmp, "data_prep", seed, 24)
    assert_one_error(result, "the disk is full")
    before = [f"./smoke/{path.relative_to(seed / 'smoke')}" for path in seed.rglob("*") if path.is_file()]
    assert sorted(files) == sorted([*before, "./smoke/.lock"])


def test_disk_full_while_training_keeps_the_previous_adapter(pipeline, tmp_path):
    tmp, run = pipeline
    seed = seed_of(run, tmp_path, "dataset", "adapter")
    result, files = stage_in_small_filesystem(tmp, "fine_tune.train", seed, 48, "--set", "train.resume=never")
    assert_one_error(result, "the disk is full")
    assert "./smoke/adapter/adapter_model.safetensors" in files
    assert not [name for name in files if ".tmp-" in name]


def test_disk_full_while_merging_keeps_the_previous_merged_model(pipeline, tmp_path):
    tmp, run = pipeline
    seed = seed_of(run, tmp_path, "dataset", "adapter", "merged")
    result, files = stage_in_small_filesystem(tmp, "fine_tune.merge", seed, 200)
    assert_one_error(result, "the disk is full")
    merged = sorted(name for name in files if name.startswith("./smoke/merged/"))
    assert merged == sorted(f"./smoke/merged/{p.name}" for p in (run / "merged").iterdir())
    assert not [name for name in files if ".tmp-" in name]


def test_a_read_only_output_folder_is_one_line(pipeline, tmp_path):
    tmp, run = pipeline
    seed = seed_of(run, tmp_path, "dataset")
    result, _ = stage_in_small_filesystem(tmp, "data_prep", seed, 1024, read_only=True)
    assert_one_error(result, "the file system is read-only")


def test_an_output_folder_under_a_file_is_one_line(pipeline, tmp_path):
    tmp, _ = pipeline
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    outputs = blocker / "runs"
    base = f"model.embedded.cache_dir={tmp / 'base'}"
    command = [sys.executable, "-m", "data_prep", "--config", str(SMOKE)]
    command += ["--set", f"run.output_dir={outputs}"]
    command += ["--set", base]
    result = STAGES.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert_one_error(result, f"a part of the path is a file, not a folder ({outputs}")
    assert blocker.read_text() == "not a folder"


def test_a_damaged_adapter_stops_merge_in_one_line_and_train_writes_it_anew(pipeline, tmp_path):
    tmp, run = pipeline
    copy = tmp_path / "runs" / "smoke"
    shutil.copytree(run, copy)
    adapter = copy / "adapter" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:1000])
    (tmp_path / "base").symlink_to(tmp / "base")
    merged_before = (copy / "merged" / "model.safetensors").read_bytes()

    result = run_stage("fine_tune.merge", tmp_path, check=False)
    assert_one_error(result, f"the adapter in {copy / 'adapter'} is damaged: adapter_model.safetensors")
    assert (copy / "merged" / "model.safetensors").read_bytes() == merged_before

    result = run_stage("fine_tune.train", tmp_path)
    assert "adapter written from" in result.stderr
    assert adapter.read_bytes() == (run / "adapter" / "adapter_model.safetensors").read_bytes()
    run_stage("fine_tune.merge", tmp_path)
