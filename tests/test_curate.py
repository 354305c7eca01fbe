"""Curation rules, sampling and splitting on small hand-made sources, with the smoke base's real tokenizer."""

import json
import logging
import re
from itertools import count

import pytest
from datasets import load_from_disk

from core.errors import UserError
from core.model import chat_format
from data_prep import progress
from data_prep.curate import curate
from data_prep.rows import TokenCounter, normalized_question
from data_prep.rules import DUPLICATE, EMPTY, NO_CODE_BLOCK, TOO_LONG
from tests.conftest import smoke_config
from tests.test_stackoverflow import ANSWER_HEADER, QUESTION_HEADER, answer, question, write_csv

RUNS = count()


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
        "data.num_proc=1",
        *overrides,
    )


def run_curation(config, tokenizer, tmp_path):
    """(train rows, validation rows, stats, the dataset folder) of one curation into a fresh folder."""
    folder = tmp_path / f"curated-{next(RUNS)}"
    folder.mkdir()
    chat = chat_format(tokenizer)
    stats = curate(config, TokenCounter(tokenizer.backend_tokenizer), chat, folder)
    dataset = load_from_disk(str(folder / "data"))
    assert sorted(path.name for path in folder.iterdir()) == ["data"]  # the scratch rows file is gone
    return dataset["train"].to_list(), dataset["validation"].to_list(), stats, folder / "data"


def records(count):
    return [{"instruction": f"Task {i}", "input": "", "output": f"Answer {i}"} for i in range(count)]


def questions_and_answers(count, answer_body="<pre><code>print({i})\n</code></pre>"):
    qs = [
        question(i, title=f"Question {i}", body=f"<p>Body <code>{i}</code></p>") for i in range(1, count + 1)
    ]
    return qs, [answer(100 + i, i, body=answer_body.format(i=i)) for i in range(1, count + 1)]


def test_rows_carry_the_rendered_example_and_its_provenance(tmp_path, smoke_tokenizer):
    qs, ans = questions_and_answers(1)
    config = make_config(tmp_path, qs, ans, records(9), "data.system_prompt=Be exact.")
    train, validation, _, _ = run_curation(config, smoke_tokenizer, tmp_path)
    (row,) = [r for r in train + validation if r["source"] == "stackoverflow"]
    assert row == {
        "prompt": "[INST] <<SYS>>\nBe exact.\n<</SYS>>\n\nQuestion 1\n\nBody `1` [/INST]",
        "completion": " ```\nprint(1)\n``` ",
        "source": "stackoverflow",
        "source_id": "1",
        "question_score": 1,
        "answer_score": 1,
        "controls": [],
        "earlier_answers": [],  # a single turn
    }
    alpaca_ids = sorted(int(r["source_id"]) for r in train + validation if r["source"] == "alpaca")
    assert alpaca_ids == list(range(1, 10))  # positions in the file, from 1


def test_same_seed_same_bytes_other_seed_other_split(tmp_path, smoke_tokenizer):
    qs, ans = questions_and_answers(10)
    config = make_config(tmp_path, qs, ans, records(10))
    first, second = (
        run_curation(config, smoke_tokenizer, tmp_path),
        run_curation(config, smoke_tokenizer, tmp_path),
    )
    for split in ("train", "validation"):
        (one,), (two,) = (first[3] / split).glob("*.arrow"), (second[3] / split).glob("*.arrow")
        assert one.read_bytes() == two.read_bytes()
    other_seed = make_config(tmp_path, qs, ans, records(10), "run.seed=99")
    assert run_curation(other_seed, smoke_tokenizer, tmp_path)[1] != first[1]


def test_worker_processes_give_the_same_bytes_as_one_process(tmp_path, smoke_tokenizer):
    qs, ans = questions_and_answers(300)
    config = make_config(tmp_path, qs, ans, records(40), "data.validation_size=20")
    alone = run_curation(config, smoke_tokenizer, tmp_path)
    pooled = run_curation(config.model_copy(update={"data": config.data.model_copy(update={"num_proc": 2})}),
                          smoke_tokenizer, tmp_path)  # fmt: skip
    assert alone[2] == pooled[2]
    for split in ("train", "validation"):
        (one,), (two,) = (alone[3] / split).glob("*.arrow"), (pooled[3] / split).glob("*.arrow")
        assert one.read_bytes() == two.read_bytes()


def test_the_workers_prepare_rows_without_importing_pandas(smoke_tokenizer):
    """pyarrow imports pandas on a process's first conversion of a list (0.4 s and 60 MB of a worker's): the
    workers keep it out, and prepare the same rows."""
    import importlib

    from data_prep.row_workers import prepare, workers
    from data_prep.rows import Example, RowSettings, prepare_batch

    example = Example("alpaca", "0", "Question?", "Answer.")
    settings = RowSettings("Be exact.", False, chat_format(smoke_tokenizer))
    counter = TokenCounter(smoke_tokenizer.backend_tokenizer)
    with workers(settings, counter, 2) as imap:
        batches = list(imap(prepare, [[example]] * 2))
        with pytest.raises(ImportError, match="curation worker"):
            list(imap(importlib.import_module, ["pandas"]))
    expected = prepare_batch([example], settings, counter).rows.to_pylist()
    assert [batch.rows.to_pylist() for batch in batches] == [expected, expected]


def test_a_worker_imports_what_preparing_rows_needs_not_the_curation_stage():
    """A spawned worker imports data_prep.row_workers: not the configuration's models (pydantic) nor the
    sources' readers, 0.25 s of each worker's start."""
    import subprocess
    import sys

    loaded = "import sys, data_prep.row_workers; print(' '.join(sorted(sys.modules)))"
    modules = subprocess.run([sys.executable, "-c", loaded], capture_output=True, text=True, check=True)
    names = modules.stdout.split()
    assert "data_prep.rows" in names
    assert not {"core.config", "pydantic", "data_prep.curate", "data_prep.stackoverflow"} & set(names)


def test_no_question_is_in_both_splits_even_when_it_was_asked_twice(tmp_path, smoke_tokenizer):
    qs, ans = questions_and_answers(30)
    reposts = [
        question(200 + i, title=f"question {i}", body=f"<p>Body  <code>{i}</code></p>") for i in range(1, 31)
    ]
    reposted_answers = [
        answer(300 + i, 200 + i, body="<pre><code>other()\n</code></pre>") for i in range(1, 31)
    ]
    config = make_config(
        tmp_path, qs + reposts, ans + reposted_answers, records(10), "data.validation_size=8"
    )
    train, validation, stats, _ = run_curation(config, smoke_tokenizer, tmp_path)
    assert stats.dropped[DUPLICATE] == 30
    assert {r["source_id"] for r in train + validation if r["source"] == "stackoverflow"} == {
        str(i) for i in range(1, 31)
    }  # the first of each question is kept
    questions_of = [{normalized_question(r["prompt"]) for r in rows} for rows in (train, validation)]
    assert len(validation) == 8 and not questions_of[0] & questions_of[1]


def test_duplicate_questions_are_removed_after_normalisation(tmp_path, smoke_tokenizer):
    qs, ans = questions_and_answers(3)
    config = make_config(tmp_path, qs, ans, [*records(8), {"instruction": "  task   0 ", "output": "dup"}])
    train, validation, stats, _ = run_curation(config, smoke_tokenizer, tmp_path)
    assert stats.dropped == {EMPTY: 0, TOO_LONG: 0, DUPLICATE: 1}
    assert len(train) + len(validation) == 11


def test_empty_questions_and_answers_are_dropped_and_counted(tmp_path, smoke_tokenizer):
    qs, ans = questions_and_answers(4)
    ans[0][-1] = "<p> </p>"  # converts to nothing
    ans[1][-1] = '<p><img src="x.png"></p>'  # an image without alt text: nothing
    config = make_config(tmp_path, qs, ans, [*records(8), {"instruction": " ", "output": "x"}])
    train, validation, stats, _ = run_curation(config, smoke_tokenizer, tmp_path)
    assert stats.dropped[EMPTY] == 3
    assert all(r["prompt"] and r["completion"].strip() for r in train + validation)


def test_the_code_block_rule_keeps_only_answers_with_a_fenced_block(tmp_path, smoke_tokenizer):
    qs, ans = questions_and_answers(6)
    for index in (0, 1, 2):
        ans[index][-1] = f"<p>Use <code>for</code> and <code>if ({index})</code>, it works.</p>"
    config = make_config(tmp_path, qs, ans, records(10), "data.require_code_block=true")
    train, validation, stats, _ = run_curation(config, smoke_tokenizer, tmp_path)
    assert stats.rules == [EMPTY, NO_CODE_BLOCK, DUPLICATE, TOO_LONG]
    assert stats.dropped[NO_CODE_BLOCK] == 13  # three prose answers and the ten Alpaca answers
    assert sorted(r["source_id"] for r in train + validation) == ["4", "5", "6"]
    off = make_config(tmp_path, qs, ans, records(10))
    assert NO_CODE_BLOCK not in run_curation(off, smoke_tokenizer, tmp_path)[2].dropped


def test_examples_longer_than_max_length_are_dropped_and_counted(tmp_path, smoke_tokenizer):
    qs, ans = questions_and_answers(2)
    long_record = {"instruction": "Long", "output": "word " * 400}
    config = make_config(tmp_path, qs, ans, [*records(10), long_record], "train.max_length=128")
    train, validation, stats, _ = run_curation(config, smoke_tokenizer, tmp_path)
    assert stats.dropped[TOO_LONG] == 1
    lengths = [
        len(smoke_tokenizer(r["prompt"] + r["completion"])["input_ids"]) + 1 for r in train + validation
    ]
    assert max(lengths) <= 128
    assert stats.token_lengths["max"] == max(lengths)
    assert stats.token_lengths["counted_rows"] == stats.token_lengths["of_rows"] == 12


def test_too_long_truncate_keeps_them_and_counts_a_sample(tmp_path, smoke_tokenizer):
    qs, ans = questions_and_answers(2)
    long_record = {"instruction": "Long", "output": "word " * 400}
    config = make_config(
        tmp_path, qs, ans, [*records(10), long_record], "train.max_length=128", "data.too_long=truncate"
    )
    train, validation, stats, _ = run_curation(config, smoke_tokenizer, tmp_path)
    assert TOO_LONG not in stats.dropped and len(train) + len(validation) == 13
    assert stats.token_lengths["over_max_length"] == 1
    assert stats.token_lengths["max"] > 128


def test_with_a_limit_only_the_rows_needed_to_fill_it_are_measured(tmp_path, smoke_tokenizer):
    qs, ans = questions_and_answers(40)
    for index in range(0, 40, 2):
        ans[index][-1] = "<p>" + "word " * 400 + "</p>"  # every other answer is too long
    config = make_config(tmp_path, qs, ans, records(5), "train.max_length=128", "data.stackoverflow.limit=3")
    train, validation, stats, _ = run_curation(config, smoke_tokenizer, tmp_path)
    kept = [r for r in train + validation if r["source"] == "stackoverflow"]
    assert len(kept) == 3 and all(int(r["source_id"]) % 2 == 0 for r in kept)  # the short ones
    assert 0 < stats.dropped[TOO_LONG] < 20  # counted while filling the limit, not all 20
    assert stats.token_lengths["counted_rows"] == stats.token_lengths["of_rows"] == 8
    again = run_curation(config, smoke_tokenizer, tmp_path)
    assert (again[0], again[1], again[2]) == (train, validation, stats)


def test_the_rows_the_workers_count_as_they_render_are_the_rows_counted_after(tmp_path, smoke_tokenizer):
    """Without a source limit the workers count every row as they render it (up to the limit: a long row's
    start first); with one, rows are counted afterwards, only as many as the limit needs. A limit larger
    than the sources keeps the same rows, with the same statistics."""
    qs, ans = questions_and_answers(30)
    for index in range(30):
        ans[index][-1] = (
            "<p>" + "word " * (index * 4) + "</p><pre><code>x = 1\n</code></pre>"
        )  # 20 to 260 tokens
    every_row = make_config(tmp_path, qs, ans, records(5), "train.max_length=128")
    ample = make_config(
        tmp_path, qs, ans, records(5), "train.max_length=128", "data.stackoverflow.limit=1000"
    )
    counted_while_rendering = run_curation(every_row, smoke_tokenizer, tmp_path)
    counted_after = run_curation(ample, smoke_tokenizer, tmp_path)
    assert 0 < counted_while_rendering[2].dropped[TOO_LONG] < 30
    assert counted_while_rendering[:3] == counted_after[:3]


def test_validation_size_is_clamped_with_a_warning(tmp_path, smoke_tokenizer):
    qs, ans = questions_and_answers(2)
    config = make_config(tmp_path, qs, ans, records(8), "data.validation_size=50")
    train, validation, stats, _ = run_curation(config, smoke_tokenizer, tmp_path)
    assert (len(train), len(validation)) == (8, 2)
    assert "data.validation_size 50" in stats.warnings[0]


def test_validation_rows_that_copy_a_training_row_are_listed_and_warned_about(tmp_path, smoke_tokenizer):
    from data_prep.card import dataset_card

    # ten pairs of rows, each pair sharing a run of 20 tokens; "Task i"/"Answer i" rows share only the
    # system prompt, which does not count
    shared = [" ".join(f"pair{pair}word{i}" for i in range(20)) for pair in range(10)]
    alpaca = records(10)
    for pair, text in enumerate(shared):
        alpaca += [{"instruction": f"First {pair}", "input": "", "output": f"Do {text} now"}]
        alpaca += [{"instruction": f"Second {pair}", "input": "", "output": f"Then {text} later"}]
    config = make_config(tmp_path, [], [], alpaca, "data.stackoverflow=null", "data.validation_size=8")
    train, validation, stats, _ = run_curation(config, smoke_tokenizer, tmp_path)
    expected = {
        index: text
        for index, row in enumerate(validation)
        for text in shared
        if text in row["completion"] and any(text in other["completion"] for other in train)
    }
    assert expected  # the seeded split leaves at least one pair across the splits
    assert {o["validation_row"] for o in stats.overlaps} == set(expected)
    for overlap in stats.overlaps:
        assert overlap["tokens"] == 20
        assert expected[overlap["validation_row"]] in train[overlap["training_row"]]["completion"]
    assert (
        f"{len(expected)} of {len(validation)} validation rows share a run of 13 or more tokens"
        in stats.warnings[-1]
    )
    assert "| validation row | training row | tokens |" in dataset_card(config, stats)


def test_per_source_limit_is_a_seeded_sample(tmp_path, smoke_tokenizer):
    qs, ans = questions_and_answers(20)
    config = make_config(tmp_path, qs, ans, records(5), "data.stackoverflow.limit=6")
    train, validation, stats, _ = run_curation(config, smoke_tokenizer, tmp_path)
    ids = sorted(int(r["source_id"]) for r in train + validation if r["source"] == "stackoverflow")
    assert len(ids) == 6 and ids != list(range(1, 7))
    assert stats.kept_by_source == {"stackoverflow": 6, "alpaca": 5}


def test_an_empty_result_names_the_rule_that_removed_everything(tmp_path, smoke_tokenizer):
    qs, ans = questions_and_answers(3)
    config = make_config(tmp_path, qs, ans, records(3), "train.max_length=16")
    with pytest.raises(UserError, match="rule 'longer than train.max_length' removed all 6"):
        run_curation(config, smoke_tokenizer, tmp_path)


def test_a_source_with_nothing_usable_is_an_error(tmp_path, smoke_tokenizer):
    qs, _ = questions_and_answers(3)
    config = make_config(tmp_path, qs, [], records(3))
    with pytest.raises(UserError, match="stackoverflow source gave no usable examples"):
        run_curation(config, smoke_tokenizer, tmp_path)


def test_long_steps_log_their_progress_and_short_ones_say_nothing(
    tmp_path, smoke_tokenizer, monkeypatch, caplog
):
    qs, ans = questions_and_answers(3)
    config = make_config(tmp_path, qs, ans, records(8))
    caplog.set_level(logging.INFO, logger="data_prep")
    run_curation(config, smoke_tokenizer, tmp_path)
    assert not caplog.records
    monkeypatch.setattr(progress, "PROGRESS_SECONDS", 0.0)
    run_curation(config, smoke_tokenizer, tmp_path)
    lines = [re.sub(r" \([\d,]+/s\)$", "", record.getMessage()) for record in caplog.records]
    assert lines == [
        "read 3 rows of A.csv",
        "read 3 rows of Q.csv",
        "counted the tokens of 3 rows",  # Stack Overflow's, then Alpaca's
        "counted the tokens of 11 rows",
    ]


def test_the_rows_file_gives_rows_in_the_order_asked_across_its_batches(tmp_path):
    import pyarrow as pa

    from data_prep.curate import RowsFile
    from data_prep.rows import ROW_SCHEMA

    def batch(first: int, size: int) -> pa.RecordBatch:
        rows = [
            {"prompt": f"p{i}", "completion": f"c{i}", "source": "s", "source_id": str(i),
             "question_score": None, "answer_score": None, "controls": [[0, 1]] if i % 3 else [],
             "earlier_answers": []}
            for i in range(first, first + size)
        ]  # fmt: skip
        return pa.RecordBatch.from_pylist(rows, schema=ROW_SCHEMA)

    path = tmp_path / "rows.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, ROW_SCHEMA) as writer:
        for first, size in ((0, 5), (5, 1), (6, 7)):
            writer.write_batch(batch(first, size))
    rows = RowsFile(path)
    asked = [12, 0, 5, 7, 0, 11, 3]
    assert rows.joined(asked)[0].to_pylist() == [f"p{i}c{i}" for i in asked]
    assert [text.controls for text in rows.texts(asked)] == [((0, 1),) if i % 3 else () for i in asked]
    assert rows.joined([])[0].to_pylist() == []
