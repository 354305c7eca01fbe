"""The dataset card and the summary `make data` prints, from the statistics of a curation."""

from data_prep.card import dataset_card, summary
from data_prep.curate import CurationStats
from data_prep.rules import DUPLICATE, EMPTY, TOO_LONG
from tests.conftest import smoke_config

STATS = CurationStats(
    read={
        "stackoverflow": {
            "questions_read": 174, "answers_read": 238, "low_score_questions": 4, "low_score_answers": 7,
            "excluded_by_tags": 0, "unanswered_questions": 8, "orphan_answers": 1,
            "malformed_rows": {"Questions.csv": 2, "Answers.csv": 1},
            "malformed_first_lines": {"Questions.csv": [3, 6], "Answers.csv": [31]},
            "repeated_question_ids": 2, "repeated_question_ids_first": [7, 9],
        },
        "alpaca": {"records_read": 122, "malformed": 1, "malformed_positions": [5]},
    },
    examples={"stackoverflow": 162, "alpaca": 121},
    rules=[EMPTY, DUPLICATE, TOO_LONG],
    dropped={EMPTY: 2, DUPLICATE: 1, TOO_LONG: 17},
    length_checked=280,
    kept_by_source={"stackoverflow": 40, "alpaca": 20},
    train_rows=52,
    validation_rows=8,
    token_lengths={"counted_rows": 60, "of_rows": 60, "p50": 346, "p90": 430, "p99": 508, "max": 508,
                   "over_max_length": 0},
)  # fmt: skip


def test_summary_is_a_readable_line_per_fact(tmp_path):
    text = summary(smoke_config(tmp_path), STATS, "runs/smoke/dataset in 3 s")
    lines = text.splitlines()
    assert lines[0].startswith("stackoverflow  174 questions and 238 answers read")
    malformed = "Questions.csv 2 (first at lines 3, 6); Answers.csv 1 (first at line 31)"
    assert f"               malformed rows skipped: {malformed}" in lines
    repeated = "2 rows skipped, the first row with each Id used (first: 7, 9)"
    assert f"               question Ids repeated: {repeated}" in lines
    no_repeats = {
        **STATS.read["stackoverflow"],
        "repeated_question_ids": 0,
        "repeated_question_ids_first": [],
    }
    unrepeated = CurationStats(**{**STATS.__dict__, "read": {**STATS.read, "stackoverflow": no_repeats}})
    assert "               question Ids repeated: none" in summary(
        smoke_config(tmp_path), unrepeated, "there"
    )
    assert "alpaca         122 records read; malformed records skipped: 1 (first at positions 5)" in lines
    assert "rules          empty question or answer: 2 removed" in lines
    assert "               longer than train.max_length: 17 removed" in lines
    filled_early = CurationStats(**{**STATS.__dict__, "length_checked": 77})
    assert "longer than train.max_length: 17 removed of the 77 rows measured to fill the limits" in summary(
        smoke_config(tmp_path), filled_early, "there"
    )
    assert "split          train 52, validation 8 (seed 7)" in lines
    assert lines[-1] == "written        runs/smoke/dataset in 3 s"
    assert "{" not in text  # not a JSON dump


def test_card_names_sources_rules_counts_and_the_license(tmp_path):
    card = dataset_card(smoke_config(tmp_path), STATS)
    assert card.startswith("---\nlicense: cc-by-sa-3.0\n")
    assert "- train: 52 rows\n- validation: 8 rows" in card
    assert "- longer than train.max_length (BOS + prompt + completion + EOS is over 512 tokens" in card
    assert "tokenizer; on with `data.too_long: drop`): 17 removed\n" in card
    assert "- duplicate question (" in card and "already kept): 1 removed" in card
    assert "kept: stackoverflow 40 (a seeded sample, limit 40), alpaca 20 (a seeded sample, limit 20)" in card
    assert "CC-BY-SA 3.0 (https://creativecommons.org/licenses/by-sa/3.0/)" in card
    assert "p50 346, p90 430, p99 508, max 508 (BOS + prompt + completion + EOS, on all 60 kept rows)" in card


def test_alpaca_only_card_has_no_stack_overflow_license(tmp_path):
    stats = CurationStats(**{**STATS.__dict__, "kept_by_source": {"stackoverflow": 0, "alpaca": 20}})
    card = dataset_card(smoke_config(tmp_path), stats)
    assert "cc-by-sa" not in card and "## Attribution" not in card
