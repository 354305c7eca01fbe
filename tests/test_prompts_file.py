"""Prompts files for `make infer PROMPTS_FILE=...` and `make compare`: plain lines or JSONL."""

from argparse import Namespace

import pytest

from core.errors import UserError
from core.prompts import Llama2Format, render_prompt
from inference.__main__ import requests_from_args
from inference.prompts_file import PromptRequest, parse_prompt_jsonl, parse_prompt_lines, read_prompts


def test_plain_text_is_one_prompt_per_non_blank_line_named_by_its_line():
    assert parse_prompt_lines("  first?  \n\n second \n", "p.txt") == [
        PromptRequest("first?", where="p.txt line 1"),
        PromptRequest("second", where="p.txt line 3"),
    ]


def test_jsonl_reads_prompt_system_and_reference():
    text = '{"prompt": "a?"}\n\n{"prompt": "b?", "system": "", "reference": "B."}\n'
    text += '{"prompt": "c", "system": null}\n'
    assert parse_prompt_jsonl(text, "p.jsonl") == [
        PromptRequest("a?", where="p.jsonl line 1"),
        PromptRequest("b?", system="", reference="B.", where="p.jsonl line 3"),
        PromptRequest("c", where="p.jsonl line 4"),
    ]


def test_rendering_uses_the_configured_system_prompt_unless_the_line_sets_one():
    llama2 = Llama2Format()
    assert PromptRequest("a?").rendered(llama2, "Be brief.").text == render_prompt("a?", "Be brief.")
    assert PromptRequest("a?", system="").rendered(llama2, "Be brief.").text == "[INST] a? [/INST]"
    own = PromptRequest("a?", system="Own.").rendered(llama2, "Be brief.")
    assert own.text == render_prompt("a?", "Own.")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "p.jsonl line 2: not valid JSON"),
        ('["a list"]', "p.jsonl line 2: expected an object with a prompt, got list"),
        ('{"promt": "typo"}', "p.jsonl line 2: unknown field 'promt' (allowed: prompt, system, reference)"),
        ('{"prompt": "  "}', "p.jsonl line 2: `prompt` must be a non-empty string"),
        ('{"prompt": "a", "system": 3}', "p.jsonl line 2: `system` must be a string or null"),
    ],
)
def test_a_bad_jsonl_line_is_named(line, message):
    with pytest.raises(UserError) as error:
        parse_prompt_jsonl('{"prompt": "fine"}\n' + line, "p.jsonl")
    assert str(error.value).startswith(message)


def test_read_prompts_picks_the_format_by_suffix_and_rejects_missing_or_empty_files(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a?"}\n')
    (tmp_path / "p.txt").write_text('{"prompt": "a?"}\n')
    assert read_prompts(tmp_path / "p.jsonl") == [PromptRequest("a?", where=f"{tmp_path / 'p.jsonl'} line 1")]
    assert read_prompts(tmp_path / "p.txt") == [
        PromptRequest('{"prompt": "a?"}', where=f"{tmp_path / 'p.txt'} line 1")
    ]
    (tmp_path / "empty.txt").write_text(" \n\n")
    with pytest.raises(UserError, match="holds no prompts"):
        read_prompts(tmp_path / "empty.txt")
    with pytest.raises(UserError, match="prompts file not found"):
        read_prompts(tmp_path / "missing.jsonl")


def test_infer_takes_a_prompt_or_a_prompts_file_never_both_or_neither(tmp_path):
    (tmp_path / "p.txt").write_text("from a file\n")
    assert requests_from_args(Namespace(prompt=" hi ", prompts_file=None)) == [PromptRequest("hi")]
    from_file = requests_from_args(Namespace(prompt="", prompts_file=str(tmp_path / "p.txt")))
    assert from_file == [PromptRequest("from a file", where=f"{tmp_path / 'p.txt'} line 1")]
    with pytest.raises(UserError, match="not both"):
        requests_from_args(Namespace(prompt="hi", prompts_file=str(tmp_path / "p.txt")))
    with pytest.raises(UserError, match="empty prompt"):
        requests_from_args(Namespace(prompt="  ", prompts_file=None))
