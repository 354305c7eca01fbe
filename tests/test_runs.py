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
