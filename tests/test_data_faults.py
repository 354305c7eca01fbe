"""Bad input files, through `python -m data_prep` as a user runs it: one line naming the file and what is
wrong, exit status 1, no traceback, and the dataset of the previous good run intact."""

from pathlib import Path

import pytest

from tests.conftest import run_stage
from tests.test_stackoverflow import ANSWER_HEADER, QUESTION_HEADER, answer, question, write_csv


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory, smoke_base_dir: Path) -> Path:
    """A folder whose run holds a dataset of the smoke profile's sample data."""
    tmp = tmp_path_factory.mktemp("faults")
    (tmp / "base").symlink_to(smoke_base_dir.parent)
    run_stage("data_prep", tmp)
    return tmp


def fifty_megabyte_field(folder: Path) -> list[str]:
    write_csv(folder / "Q.csv", QUESTION_HEADER, [question(1, body="x" * (50 << 20)), question(2)])
    return [f"data.stackoverflow.questions={folder / 'Q.csv'}"]


def latin1_alpaca(folder: Path) -> list[str]:
    (folder / "a.json").write_bytes('[{"instruction": "Naïve", "output": "£5"}]'.encode("latin-1"))
    return [f"data.alpaca.path={folder / 'a.json'}"]


def utf16_configured_on_utf8(folder: Path) -> list[str]:
    return ["data.stackoverflow.encoding=utf-16"]


def folder_in_place_of_a_file(folder: Path) -> list[str]:
    (folder / "Answers.csv").mkdir()
    return [f"data.stackoverflow.answers={folder / 'Answers.csv'}"]


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (fifty_megabyte_field, "Q.csv: the row at line 2 is over 2 MB"),
        (latin1_alpaca, "a.json: not valid UTF-8 at line 1"),
        (utf16_configured_on_utf8, "Questions.csv does not start with a byte-order mark, which utf-16 needs"),
        (folder_in_place_of_a_file, "cannot read the Stack Overflow file"),
    ],
)
def test_a_bad_input_is_one_line_and_the_previous_dataset_survives(curated, tmp_path, fault, message):
    stats = curated / "runs" / "smoke" / "dataset" / "stats.json"
    before = stats.read_bytes()
    overrides = [part for override in fault(tmp_path) for part in ("--set", override)]
    result = run_stage("data_prep", curated, *overrides, check=False)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line, line
    assert stats.read_bytes() == before
    assert sorted(path.name for path in stats.parent.parent.iterdir()) == [".lock", "dataset"]


def test_the_summary_counts_a_quote_left_open_and_repeated_ids(curated, tmp_path):
    write_csv(tmp_path / "A.csv", ANSWER_HEADER, [answer(10 + qid, qid) for qid in range(1, 30)])
    rows = [question(qid, title=f"Question {qid}") for qid in range(1, 30)] + [question(7), question(9)]
    write_csv(tmp_path / "Q.csv", QUESTION_HEADER, rows)
    with (tmp_path / "Q.csv").open("a") as handle:
        handle.write('40,NA,d,1,T,"<p>left open\n')  # line 33: its Body opens a quote that never closes
    overrides = [
        f"data.stackoverflow.questions={tmp_path / 'Q.csv'}",
        f"data.stackoverflow.answers={tmp_path / 'A.csv'}",
    ]
    result = run_stage("data_prep", curated, *[part for o in overrides for part in ("--set", o)])
    assert "malformed rows skipped: Q.csv 1 (first at line 33)" in result.stderr
    assert (
        "question Ids repeated: 2 rows skipped, the first row with each Id used (first: 7, 9)"
        in result.stderr
    )
