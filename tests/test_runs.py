import os
import subprocess
import sys

import pytest

from core.runs import atomic_dir


def test_atomic_dir_moves_a_complete_folder_into_place(tmp_path):
    final = tmp_path / "artifact"
    with atomic_dir(final) as staging:
        (staging / "a.txt").write_text("done")
        assert not final.exists()
    assert (final / "a.txt").read_text() == "done"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


def test_atomic_dir_leaves_nothing_when_the_stage_fails(tmp_path):
    final = tmp_path / "artifact"
    with pytest.raises(RuntimeError), atomic_dir(final) as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_keeps_the_previous_artifact_on_failure_and_replaces_it_on_success(tmp_path):
    final = tmp_path / "artifact"
    with atomic_dir(final) as staging:
        (staging / "v").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(final) as staging:
        (staging / "v").write_text("2")
        raise RuntimeError("crash")
    assert (final / "v").read_text() == "1"
    with atomic_dir(final) as staging:
        (staging / "v").write_text("3")
    assert (final / "v").read_text() == "3"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


def test_atomic_dir_removes_the_staging_folders_of_killed_stages_only(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(finished.stdout)
    left_by_a_kill = tmp_path / f".artifact.tmp-{dead_pid}-1"
    left_by_a_kill.mkdir()
    (left_by_a_kill / "half.bin").write_bytes(b"half")
    in_use = tmp_path / f".artifact.tmp-{os.getpid()}-1"  # a live process's: not ours to remove
    in_use.mkdir()
    other_artifact = tmp_path / f".other.tmp-{dead_pid}-1"
    other_artifact.mkdir()
    with atomic_dir(tmp_path / "artifact") as staging:
        (staging / "v").write_text("1")
    left = sorted(path.name for path in tmp_path.iterdir())
    assert left == sorted(["artifact", in_use.name, other_artifact.name])
