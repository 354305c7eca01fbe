import json

import pytest

from core.errors import UserError
from data_prep.alpaca import AlpacaStats, read_examples, user_message


def test_user_message_appends_the_input_after_a_blank_line():
    assert user_message("Fix this code.", "x = [1, 2") == "Fix this code.\n\nx = [1, 2"
    assert user_message(" Explain decorators. ", "  ") == "Explain decorators."


def test_json_list_with_malformed_records_counted_by_position(tmp_path):
    records = [
        {"instruction": "a", "input": "", "output": "A"},
        {"instruction": "b", "output": 3},
        "not a record",
        {"instruction": "c", "input": None, "output": "C"},
        {"output": "no instruction"},
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    stats = AlpacaStats()
    assert read_examples(path, stats) == [(1, "a", "A"), (4, "c", "C")]
    assert (stats.records_read, stats.malformed, stats.malformed_positions) == (5, 3, [2, 3, 5])


def test_jsonl_with_a_broken_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(
        '{"instruction": "a", "output": "A"}\n{broken\n\n{"instruction": "b", "input": "x", "output": "B"}\n'
    )
    stats = AlpacaStats()
    assert read_examples(path, stats) == [(1, "a", "A"), (3, "b\n\nx", "B")]
    assert stats.malformed_positions == [2]


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(UserError, match="Alpaca file not found"):
        read_examples(tmp_path / "nope.json", AlpacaStats())
    bad = tmp_path / "bad.json"
    bad.write_text("[{]")
    with pytest.raises(UserError, match="not valid JSON at line 1"):
        read_examples(bad, AlpacaStats())


def test_a_latin1_file_is_one_line_naming_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(
        '{"instruction": "a", "output": "A"}\n{"instruction": "Naïve", "output": "£5"}\n'.encode("latin-1")
    )
    with pytest.raises(UserError, match=r"data.jsonl: not valid UTF-8 at line 2: save it as UTF-8"):
        read_examples(path, AlpacaStats())


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32"])
def test_a_byte_order_mark_names_the_encoding(tmp_path, encoding):
    path = tmp_path / "data.json"
    path.write_bytes(
        json.dumps([{"instruction": "Łódź", "output": "咖啡"}], ensure_ascii=False).encode(encoding)
    )
    assert read_examples(path, AlpacaStats()) == [(1, "Łódź", "咖啡")]


def test_a_folder_in_place_of_the_file_is_one_line(tmp_path):
    (tmp_path / "data.json").mkdir()
    with pytest.raises(UserError, match=r"cannot read the Alpaca file .*data.json: Is a directory"):
        read_examples(tmp_path / "data.json", AlpacaStats())
