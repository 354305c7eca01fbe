"""Curation rules on small hand-made sources, with the real tokenizer of the smoke base."""

import json

import pytest

from core.errors import UserError
from core.prompts import render_completion, render_prompt
from data_prep.curate import curate, normalized_question
from tests.conftest import smoke_config
from tests.test_stackoverflow import ANSWER_HEADER, QUESTION_HEADER, answer, question, write_csv


def make_config(tmp_path, questions, answers, alpaca_records, *overrides):
    write_csv(tmp_path / "Q.csv", QUESTION_HEADER, questions)
    write_csv(tmp_path / "A.csv", ANSWER_HEADER, answers)
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca_records))
    return smoke_config(
        tmp_path,
        f"data.stackoverflow.questions={tmp_path / 'Q.csv'}",
        f"data.stackoverflow.answers={tmp_path / 'A.csv'}",
        "data.stackoverflow.tags=null",
        "data.stackoverflow.limit=null",
        f"data.alpaca.path={tmp_path / 'alpaca.json'}",
        "data.alpaca.limit=null",
        "data.validation_size=2",
        *overrides,
    )


def records(count):
    return [{"instruction": f"Task {i}", "input": "", "output": f"Answer {i}"} for i in range(count)]


def questions_and_answers(count):
    qs = [
        question(i, title=f"Question {i}", body=f"<p>Body <code>{i}</code></p>") for i in range(1, count + 1)
    ]
    return qs, [answer(100 + i, i, body=f"<pre><code>print({i})\n</code></pre>") for i in range(1, count + 1)]


def test_rows_are_rendered_by_the_prompt_function_with_the_configured_system_prompt(
    tmp_path, smoke_tokenizer
):
    qs, ans = questions_and_answers(1)
    config = make_config(tmp_path, qs, ans, records(9), "data.system_prompt=Be exact.")
    train, validation, _ = curate(config, smoke_tokenizer)
    (row,) = [r for r in train + validation if r["source"] == "stackoverflow"]
    assert row["prompt"] == render_prompt("Question 1\n\nBody `1`", "Be exact.")
    assert row["completion"] == render_completion("```\nprint(1)\n```")
    assert (row["source_id"], row["question_score"], row["answer_score"]) == ("1", 1, 1)
    assert row["num_tokens"] == len(smoke_tokenizer(row["prompt"] + row["completion"])["input_ids"]) + 1


def test_same_seed_same_split_and_no_overlap(tmp_path, smoke_tokenizer):
    qs, ans = questions_and_answers(10)
    config = make_config(tmp_path, qs, ans, records(10))
    first, second = curate(config, smoke_tokenizer), curate(config, smoke_tokenizer)
    assert first[:2] == second[:2]
    train_prompts = {r["prompt"] for r in first[0]}
    assert len(first[1]) == 2
    assert not train_prompts & {r["prompt"] for r in first[1]}
    other_seed = make_config(tmp_path, qs, ans, records(10), "run.seed=99")
    assert curate(other_seed, smoke_tokenizer)[1] != first[1]


def test_duplicate_questions_are_removed_after_normalisation(tmp_path, smoke_tokenizer):
    qs, ans = questions_and_answers(3)
    config = make_config(tmp_path, qs, ans, [*records(8), {"instruction": "  task   0 ", "output": "dup"}])
    train, validation, stats = curate(config, smoke_tokenizer)
    assert stats.dropped["duplicate question"] == 1
    assert len(train) + len(validation) == 11
    assert normalized_question(" A\n b ") == normalized_question("a B")


def test_examples_longer_than_max_length_are_dropped_and_counted(tmp_path, smoke_tokenizer):
    qs, ans = questions_and_answers(2)
    long_record = {"instruction": "Long", "output": "word " * 400}
    config = make_config(tmp_path, qs, ans, [*records(10), long_record], "train.max_length=128")
    train, validation, stats = curate(config, smoke_tokenizer)
    assert stats.dropped["longer than train.max_length"] == 1
    assert all(row["num_tokens"] <= 128 for row in train + validation)


def test_validation_size_is_clamped_with_a_warning(tmp_path, smoke_tokenizer):
    qs, ans = questions_and_answers(2)
    config = make_config(tmp_path, qs, ans, records(8), "data.validation_size=50")
    train, validation, stats = curate(config, smoke_tokenizer)
    assert (len(train), len(validation)) == (8, 2)
    assert "data.validation_size 50" in stats.warnings[0]


def test_per_source_limit_is_a_seeded_sample(tmp_path, smoke_tokenizer):
    qs, ans = questions_and_answers(20)
    config = make_config(tmp_path, qs, ans, records(5), "data.stackoverflow.limit=6")
    train, validation, stats = curate(config, smoke_tokenizer)
    ids = sorted(int(r["source_id"]) for r in train + validation if r["source"] == "stackoverflow")
    assert len(ids) == 6 and ids != list(range(1, 7))
    assert stats.kept_by_source == {"stackoverflow": 6, "alpaca": 5}


def test_an_empty_result_names_the_rule_that_removed_everything(tmp_path, smoke_tokenizer):
    qs, ans = questions_and_answers(3)
    config = make_config(tmp_path, qs, ans, records(3), "train.max_length=16")
    with pytest.raises(UserError, match="rule 'longer than train.max_length' removed all 6"):
        curate(config, smoke_tokenizer)


def test_a_source_with_nothing_usable_is_an_error(tmp_path, smoke_tokenizer):
    qs, _ = questions_and_answers(3)
    config = make_config(tmp_path, qs, [], records(3))
    with pytest.raises(UserError, match="stackoverflow source gave no usable examples"):
        curate(config, smoke_tokenizer)
