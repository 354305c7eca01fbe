"""Reading the Kaggle CSVs: joins, best answer, scores, orphans, encodings, malformed rows."""

import codecs
import csv
import io
import logging
import os
import re

import pytest

from core.config import StackOverflowSource, load_config
from core.errors import UserError
from data_prep import progress, stackoverflow
from data_prep.stackoverflow import ReadStats, read_pairs
from tests.conftest import SMOKE

QUESTION_HEADER = ["Id", "OwnerUserId", "CreationDate", "Score", "Title", "Body"]
ANSWER_HEADER = ["Id", "OwnerUserId", "CreationDate", "ParentId", "Score", "Body"]


def write_csv(path, header, rows, encoding="utf-8"):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(buffer.getvalue().encode(encoding))
    return path


def source(tmp_path, questions, answers, tags=None, encoding="utf-8", **settings):
    write_csv(tmp_path / "Questions.csv", QUESTION_HEADER, questions, encoding)
    write_csv(tmp_path / "Answers.csv", ANSWER_HEADER, answers, encoding)
    if tags is not None:
        write_csv(tmp_path / "Tags.csv", ["Id", "Tag"], tags, encoding)
    return StackOverflowSource(
        questions=tmp_path / "Questions.csv",
        answers=tmp_path / "Answers.csv",
        tags=tmp_path / "Tags.csv" if tags is not None else None,
        **settings,
    )


def question(qid, score=1, title="Title", body="<p>body</p>"):
    return [qid, "NA", "2010-01-01T00:00:00Z", score, title, body]


def answer(aid, parent, score=1, body="<p>answer</p>"):
    return [aid, 7, "2010-01-02T00:00:00Z", parent, score, body]


def test_best_answer_by_score_ties_broken_by_lowest_id(tmp_path):
    src = source(
        tmp_path,
        [question(1), question(2)],
        [
            answer(12, 1, 5, "b"),
            answer(11, 1, 5, "a"),
            answer(13, 1, 9, "best"),
            answer(21, 2, 3),
            answer(20, 2, 3),
        ],
    )
    pairs = read_pairs(src, ReadStats())
    assert [(p.question_id, p.answer_id) for p in pairs] == [(1, 13), (2, 20)]


def test_minimum_scores_unanswered_and_orphans_are_counted(tmp_path):
    src = source(
        tmp_path,
        [question(1, score=-2), question(2), question(3)],
        [answer(10, 1), answer(20, 2, score=-1), answer(21, 2, score=0), answer(99, 404)],
    )
    stats = ReadStats()
    pairs = read_pairs(src, stats)
    assert [(p.question_id, p.answer_id) for p in pairs] == [(2, 21)]
    assert stats.low_score_questions == 1
    assert stats.low_score_answers == 1
    assert stats.orphan_answers == 1  # 99's question 404 does not exist; 10's question was filtered
    assert stats.unanswered_questions == 1  # question 3
    assert (stats.questions_read, stats.answers_read) == (3, 4)


def test_multiline_fields_doubled_quotes_and_entities_in_titles(tmp_path):
    body = '<p>say "hi"</p>\n<pre><code>x = 1\n\n    y = 2\n</code></pre>\n'
    src = source(tmp_path, [question(1, title="A &amp; B &quot;q&quot;", body=body)], [answer(5, 1)])
    (pair,) = read_pairs(src, ReadStats())
    assert pair.title == 'A & B "q"'
    assert pair.question_html == body


def test_utf8_text_comes_out_as_written(tmp_path):
    src = source(tmp_path, [question(1, title="café → 咖啡")], [answer(5, 1, body="<p>naïve 🙂</p>")])
    (pair,) = read_pairs(src, ReadStats())
    assert pair.title == "café → 咖啡"
    assert pair.answer_html == "<p>naïve 🙂</p>"


def test_latin1_file_comes_out_as_written(tmp_path):
    src = source(
        tmp_path, [question(1, title="Naïve £5")], [answer(5, 1, body="<p>déjà vu</p>")], encoding="latin-1"
    )
    (pair,) = read_pairs(src, ReadStats())
    assert pair.title == "Naïve £5"
    assert pair.answer_html == "<p>déjà vu</p>"


def test_cp1252_bytes_inside_a_utf8_file_fall_back_alone(tmp_path):
    write_csv(tmp_path / "Answers.csv", ANSWER_HEADER, [answer(5, 1)])
    mixed = b"Id,OwnerUserId,CreationDate,Score,Title,Body\n1,NA,2010-01-01T00:00:00Z,1,"
    mixed += "café ".encode() + "“quoted” £".encode("cp1252") + b",<p>b</p>\n"
    (tmp_path / "Questions.csv").write_bytes(mixed)
    src = StackOverflowSource(questions=tmp_path / "Questions.csv", answers=tmp_path / "Answers.csv")
    (pair,) = read_pairs(src, ReadStats())
    assert pair.title == "café “quoted” £"


def test_configured_encoding_is_used(tmp_path):
    src = source(tmp_path, [question(1, title="Łódź")], [answer(5, 1)], encoding="cp1250")
    src = src.model_copy(update={"encoding": "cp1250"})
    (pair,) = read_pairs(src, ReadStats())
    assert pair.title == "Łódź"


def test_malformed_rows_are_counted_with_their_line_numbers(tmp_path):
    src = source(
        tmp_path,
        [
            question(1),
            [2, "NA", "2010", "x"],
            question(3, body="<p>two\nlines</p>"),
            ["oops", "NA", "d", 1, "t", "b"],
        ],
        [answer(10, 1), answer(30, 3)],
    )
    stats = ReadStats()
    pairs = read_pairs(src, stats)
    assert [p.question_id for p in pairs] == [1, 3]
    assert stats.malformed_rows == {"Questions.csv": 2}
    assert stats.malformed_first_lines == {"Questions.csv": [3, 6]}


@pytest.mark.parametrize("block_bytes", [1 << 20, 96])  # one block; a block every row or two
def test_line_numbers_count_the_line_breaks_of_every_row_before(tmp_path, monkeypatch, block_bytes):
    monkeypatch.setattr(stackoverflow, "CSV_BLOCK_BYTES", block_bytes)
    src = source(
        tmp_path,
        [
            question(1, title="a\ntitle", body="<pre>x\n\ny</pre>"),  # lines 2-5
            [2, "NA", "a\nmalformed\nrow"],  # lines 6-8
            question("NA"),  # line 9
            question(4, body="<p>a\n\nb</p>"),  # lines 10-12
            [5, "NA"],  # line 13
            [6, "NA", "d\ne"],  # lines 14-15
            question(7, body="<p>a\nb</p>"),  # lines 16-17
            ["x", "NA", "d", 1, "t", "b"],  # line 18
            *[question(qid, body="<p>a\nb</p>") for qid in (9, 10, 11, 12)],  # lines 19-26
            [13],  # line 27
        ],
        [answer(10, 1), answer(40, 4), answer(70, 7), answer(90, 9)],
    )
    stats = ReadStats()
    assert [p.question_id for p in read_pairs(src, stats)] == [1, 4, 7, 9]
    assert stats.malformed_first_lines == {"Questions.csv": [6, 9, 13, 14, 18, 27]}


def test_a_utf16_file_is_transcoded(tmp_path):
    src = source(tmp_path, [question(1, title="Łódź, 咖啡")], [answer(5, 1)], encoding="utf-16")
    (pair,) = read_pairs(src.model_copy(update={"encoding": "utf-16"}), ReadStats())
    assert pair.title == "Łódź, 咖啡"


def test_missing_column_names_the_file_and_the_column(tmp_path):
    src = source(tmp_path, [question(1)], [answer(5, 1)])
    write_csv(
        tmp_path / "Answers.csv",
        ["Id", "OwnerUserId", "CreationDate", "Score", "Body"],
        [[5, 1, "d", 1, "b"]],
    )
    with pytest.raises(UserError, match=r"Answers.csv: missing column ParentId"):
        read_pairs(src, ReadStats())


def test_missing_file_is_named(tmp_path):
    src = StackOverflowSource(questions=tmp_path / "nope.csv", answers=tmp_path / "Answers.csv")
    with pytest.raises(UserError, match="Stack Overflow file not found: .*nope.csv"):
        read_pairs(src, ReadStats())


def test_tag_filters(tmp_path):
    tags = [[1, "python"], [1, "django"], [2, "python"], [3, "python"], [3, "pandas"]]
    answers = [answer(10, 1), answer(20, 2), answer(30, 3)]
    included = source(
        tmp_path, [question(1), question(2), question(3)], answers, tags, include_tags=["pandas"]
    )
    assert [p.question_id for p in read_pairs(included, ReadStats())] == [3]
    excluded = included.model_copy(update={"include_tags": [], "exclude_tags": ["django"]})
    stats = ReadStats()
    assert [p.question_id for p in read_pairs(excluded, stats)] == [2, 3]
    assert stats.excluded_by_tags == 1


def test_na_signed_scores_and_malformed_answers(tmp_path):
    src = source(
        tmp_path,
        [question(1, score=-3), question(2, score="NA"), question(3)],
        [answer(10, 1, score=-2), ["oops", 7, "d", 3, 1, "b"], answer(30, 3, score="NA"), answer(31, 3)],
        min_question_score=-5,
        min_answer_score=-5,
    )
    stats = ReadStats()
    pairs = read_pairs(src, stats)
    assert [(p.question_id, p.question_score, p.answer_id, p.answer_score) for p in pairs] == [
        (1, -3, 10, -2),
        (3, 1, 31, 1),
    ]
    assert stats.malformed_rows == {"Answers.csv": 2, "Questions.csv": 1}
    assert stats.malformed_first_lines == {"Answers.csv": [3, 4], "Questions.csv": [3]}


def test_a_missing_questions_column_fails_before_the_answers_are_read(tmp_path):
    src = source(tmp_path, [question(1)], [answer(5, 1)])
    write_csv(tmp_path / "Questions.csv", ["Id", "Score", "Body"], [[1, 1, "b"]])
    with pytest.raises(UserError, match=r"Questions.csv: missing column Title"):
        read_pairs(src, ReadStats())


def test_an_unknown_encoding_is_a_config_error():
    with pytest.raises(UserError, match="data.stackoverflow.encoding: unknown encoding 'latin-9000'"):
        load_config(SMOKE, ["data.stackoverflow.encoding=latin-9000"])


def test_bytes_that_do_not_fit_a_configured_encoding_name_the_file_and_line(tmp_path):
    src = source(tmp_path, [question(1), question(2, title="Naïve £5")], [answer(5, 1)], encoding="latin-1")
    with pytest.raises(UserError, match=r"Questions.csv: not valid utf-8 at line 3; set data.stackoverflow"):
        list(read_pairs(src.model_copy(update={"encoding": "utf-8"}), ReadStats()))


@pytest.mark.parametrize("encoding", ["auto", "utf-8", "utf-8-sig"])
def test_a_utf8_byte_order_mark_is_skipped(tmp_path, encoding):
    src = source(tmp_path, [question(1, title="café")], [answer(5, 1)], encoding="utf-8-sig")
    (pair,) = read_pairs(src.model_copy(update={"encoding": encoding}), ReadStats())
    assert (pair.question_id, pair.title) == (1, "café")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-32-be"])
def test_auto_recognises_utf16_and_utf32_by_their_byte_order_mark(tmp_path, encoding):
    mark = {"utf-16-be": codecs.BOM_UTF16_BE, "utf-32-be": codecs.BOM_UTF32_BE}.get(encoding, b"")
    write_csv(tmp_path / "Questions.csv", QUESTION_HEADER, [question(1, title="Łódź, 咖啡")], encoding)
    write_csv(tmp_path / "Answers.csv", ANSWER_HEADER, [answer(5, 1)], encoding)
    for path in (tmp_path / "Questions.csv", tmp_path / "Answers.csv"):
        path.write_bytes(mark + path.read_bytes())  # Python writes a mark for utf-16/32, none for -be
    src = StackOverflowSource(questions=tmp_path / "Questions.csv", answers=tmp_path / "Answers.csv")
    (pair,) = read_pairs(src, ReadStats())
    assert (pair.question_id, pair.title, pair.answer_id) == (1, "Łódź, 咖啡", 5)


def test_utf16_configured_on_a_utf8_file_is_one_line(tmp_path):
    src = source(tmp_path, [question(1)], [answer(5, 1)], encoding="utf-8")
    with pytest.raises(
        UserError, match="Questions.csv does not start with a byte-order mark, which utf-16 needs"
    ):
        read_pairs(src.model_copy(update={"encoding": "utf-16"}), ReadStats())


def test_a_byte_order_mark_at_odds_with_the_configured_encoding_is_one_line(tmp_path):
    src = source(tmp_path, [question(1)], [answer(5, 1)], encoding="utf-16")
    with pytest.raises(
        UserError, match="starts with a UTF-16-LE byte-order mark, but .* is cp1252: set it to auto"
    ):
        read_pairs(src.model_copy(update={"encoding": "cp1252"}), ReadStats())


def test_a_folder_in_place_of_a_file_is_one_line(tmp_path):
    src = source(tmp_path, [question(1)], [answer(5, 1)])
    (tmp_path / "Answers.csv").unlink()
    (tmp_path / "Answers.csv").mkdir()
    with pytest.raises(UserError, match=r"cannot read the Stack Overflow file .*Answers.csv: Is a directory"):
        read_pairs(src, ReadStats())


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its permissions")
def test_an_unreadable_file_is_one_line(tmp_path):
    src = source(tmp_path, [question(1)], [answer(5, 1)])
    (tmp_path / "Questions.csv").chmod(0)
    with pytest.raises(
        UserError, match=r"cannot read the Stack Overflow file .*Questions.csv: Permission denied"
    ):
        read_pairs(src, ReadStats())


def test_a_50_mb_field_in_the_first_row_is_one_line_naming_the_file_and_line(tmp_path):
    src = source(tmp_path, [question(1, body="x" * (50 << 20)), question(2)], [answer(5, 1)])
    with pytest.raises(
        UserError, match=r"Questions.csv: the row at line 2 is over 2 MB, .* a quote left open"
    ):
        list(read_pairs(src, ReadStats()))


def test_a_row_longer_than_a_block_further_down_is_named_by_its_line(tmp_path, monkeypatch):
    monkeypatch.setattr(stackoverflow, "CSV_BLOCK_BYTES", 1 << 10)
    rows = [question(i, body="<p>a\nb</p>") for i in range(1, 31)]  # two lines each: lines 2 to 61
    src = source(tmp_path, [*rows, [31, "NA"], question(32, body="x" * 5000)], [answer(5, 1)])
    with pytest.raises(UserError, match=r"Questions.csv: the row at line 63 is over"):
        list(read_pairs(src, ReadStats()))


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
@pytest.mark.parametrize("ending", ["\n", ""])
def test_a_quote_left_open_at_the_end_is_a_malformed_row(tmp_path, encoding, ending):
    write_csv(tmp_path / "Answers.csv", ANSWER_HEADER, [answer(10, 1), answer(20, 2)])
    text = 'Id,OwnerUserId,CreationDate,Score,Title,Body\n1,NA,d,1,One,"<p>a ""b""\n</p>"\n'
    text += '2,NA,d,1,Two,"<p>never\n\n closed ""c""' + ending
    (tmp_path / "Questions.csv").write_bytes(text.encode(encoding))
    src = StackOverflowSource(questions=tmp_path / "Questions.csv", answers=tmp_path / "Answers.csv")
    stats = ReadStats()
    assert [p.question_id for p in read_pairs(src, stats)] == [1]
    assert (stats.questions_read, stats.malformed_first_lines) == (1, {"Questions.csv": [4]})


@pytest.mark.parametrize("last_body", ["<p>x</p>\n", 'say ""hi""', '""', "plain"])
def test_a_closed_last_field_is_read(tmp_path, last_body):
    quoted = last_body != "plain"
    body = f'"{last_body}"' if quoted else last_body
    write_csv(tmp_path / "Answers.csv", ANSWER_HEADER, [answer(10, 1)])
    (tmp_path / "Questions.csv").write_text(
        f"Id,OwnerUserId,CreationDate,Score,Title,Body\n1,NA,d,1,T,{body}"
    )
    src = StackOverflowSource(questions=tmp_path / "Questions.csv", answers=tmp_path / "Answers.csv")
    stats = ReadStats()
    (pair,) = read_pairs(src, stats)
    assert pair.question_html == last_body.replace('""', '"') and not stats.malformed_rows


def test_repeated_question_ids_are_counted_and_the_first_row_is_used(tmp_path):
    src = source(
        tmp_path,
        [question(1, title="first"), question(2), question(1, title="again"), question(1), question(3)],
        [answer(10, 1), answer(20, 2), answer(30, 3)],
    )
    stats = ReadStats()
    pairs = read_pairs(src, stats)
    assert [(p.question_id, p.title) for p in pairs] == [(1, "first"), (2, "Title"), (3, "Title")]
    assert (stats.questions_read, stats.repeated_question_ids, stats.repeated_question_ids_first) == (
        5,
        2,
        [1, 1],
    )
    assert stats.unanswered_questions == 0


def test_reading_logs_its_progress_every_few_seconds(tmp_path, monkeypatch, caplog):
    src = source(tmp_path, [question(1), question(2)], [answer(10, 1)])
    caplog.set_level(logging.INFO, logger="data_prep")
    list(read_pairs(src, ReadStats()))
    assert not caplog.records  # a read shorter than the interval says nothing
    monkeypatch.setattr(progress, "PROGRESS_SECONDS", 0.0)
    list(read_pairs(src, ReadStats()))
    lines = [record.getMessage() for record in caplog.records]
    assert re.fullmatch(r"read 1 rows of Answers.csv \([\d,]+/s\)", lines[0])
    assert re.fullmatch(r"read 2 rows of Questions.csv \([\d,]+/s\)", lines[1])
