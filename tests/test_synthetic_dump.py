"""The synthetic Kaggle-shaped dump the benchmarks curate, and the notebook-style baseline they compare."""

import csv
import os
import subprocess
import sys

from core.config import StackOverflowSource
from data_prep.stackoverflow import ReadStats, read_pairs
from synthetic.stackoverflow import ANSWER_HEADER, QUESTION_HEADER, write_dump
from tests.conftest import REPO


def read(path):
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


def test_the_dump_is_deterministic_and_shaped_like_kaggle(tmp_path):
    first = write_dump(tmp_path / "a", questions=400, answers=650, seed=3)
    second = write_dump(tmp_path / "b", questions=400, answers=650, seed=3)
    for name, path in first.items():
        assert path.read_bytes() == second[name].read_bytes()
    questions, answers, tags = (read(first[name]) for name in ("Questions", "Answers", "Tags"))
    assert (questions[0], answers[0], tags[0]) == (QUESTION_HEADER, ANSWER_HEADER, ["Id", "Tag"])
    assert (len(questions), len(answers)) == (401, 651)
    bodies = [row[-1] for row in questions[1:] + answers[1:]]
    assert any("<pre><code>" in body and "\n    " in body and "&lt;" in body for body in bodies)
    assert any(not body.isascii() for body in bodies)
    assert any(row[1] == "NA" for row in answers[1:]) and any(int(row[3]) < 0 for row in questions[1:])
    assert len({row[0] for row in tags[1:]}) == 400 and len(tags) > 800


def test_our_reader_and_the_baseline_pair_the_same_questions(tmp_path):
    paths = write_dump(tmp_path / "dump", questions=400, answers=650, seed=3)
    stats = ReadStats()
    pairs = list(
        read_pairs(StackOverflowSource(questions=paths["Questions"], answers=paths["Answers"]), stats)
    )
    assert stats.orphan_answers > 0 and stats.unanswered_questions > 0 and stats.low_score_questions > 0
    # The baseline as the benchmark runs it, in a process of its own; from tmp_path, where it writes its
    # dataset (runs/bench/curate-baseline), with this repository's modules on the path.
    command = [sys.executable, "-m", "benchmarks.curate", f"--baseline={tmp_path / 'dump'}"]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [*command, "--validation-size=20"], cwd=tmp_path, env={**os.environ, "PYTHONPATH": path},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"baseline: {len(pairs)} pairs" in result.stdout
