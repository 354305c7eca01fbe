"""The one-row transforms the curation workers run: conversion, the one-row rules, keys, token counts."""

import pickle

import pytest

from core.prompts import Llama2Format, Rendered, render_completion, render_prompt
from core.tokens import encode
from data_prep.rows import (
    Example,
    RowSettings,
    TokenCounter,
    failed_rule,
    has_code_block,
    load_row_tokenizer,
    normalized_question,
    prepare_batch,
    question_key,
    user_and_answer,
)
from data_prep.rules import EMPTY, NO_CODE_BLOCK
from tests.conftest import built, smoke_config

SETTINGS = RowSettings(system_prompt="Be exact.", require_code_block=False, chat=Llama2Format())


def test_a_real_fenced_block_counts_as_code():
    assert has_code_block("Try this:\n\n```\nfor x in y:\n    print(x)\n```")
    assert has_code_block("```python\nx = 1\n```")
    assert has_code_block("- step\n\n  ```\n  pip install x\n  ```")  # inside a list item
    assert has_code_block("~~~\nx = 1\n~~~")
    assert has_code_block("````\ns = '```'\n````")  # a longer fence around backticks


def test_code_words_inline_code_and_broken_fences_do_not_count():
    assert not has_code_block("for each item, if it is (odd) print it")  # the notebook's substring test: yes
    assert not has_code_block("Use `for x in y:` here, or ```inline``` text.")
    assert not has_code_block("```\nnever closed")
    assert not has_code_block("```\n   \n```")  # a fence around nothing
    assert not has_code_block("````\nx = 1\n```")  # a closing fence shorter than the opening one


def test_normalized_question_collapses_whitespace_and_case():
    assert normalized_question("  How do I\n\tSORT a   list? ") == "how do i sort a list?"
    assert question_key("How do I sort?") == question_key("how  do i\nSORT?")
    assert question_key("How do I sort?") != question_key("How do I sort!")
    assert len(question_key("x")) == 16


def test_stackoverflow_user_message_is_title_blank_line_converted_body():
    example = Example(
        "stackoverflow", "7", "<p>Why <code>x &lt; y</code>?</p>", "<p>Because.</p>", "T &", True
    )
    assert user_and_answer(example) == ("T &\n\nWhy `x < y`?", "Because.")


def test_alpaca_text_is_kept_as_written_but_trimmed():
    example = Example("alpaca", "3", "  Fix <b>this</b>\n\nx = [1  ", " Done. ")
    assert user_and_answer(example) == ("Fix <b>this</b>\n\nx = [1", "Done.")


def test_one_row_rules_in_order():
    code = RowSettings(None, require_code_block=True, chat=Llama2Format())
    assert failed_rule("", "answer", SETTINGS) == EMPTY
    assert failed_rule("question", "", code) == EMPTY
    assert failed_rule("question", "no code here", code) == NO_CODE_BLOCK
    assert failed_rule("question", "no code here", SETTINGS) is None
    assert failed_rule("question", "```\nx = 1\n```", code) is None


def test_prepared_rows_are_rendered_by_the_prompt_function():
    examples = [
        Example(
            "stackoverflow", "1", "<p>Body</p>", "<pre><code>print(1)\n</code></pre>", "Title", True, 5, 3
        ),
        Example("alpaca", "2", "Task", ""),
    ]
    batch = prepare_batch(examples, SETTINGS)
    first, second = batch.rows.to_pylist()
    assert first == {
        "prompt": render_prompt("Title\n\nBody", "Be exact."),
        "completion": render_completion("```\nprint(1)\n```"),
        "source": "stackoverflow",
        "source_id": "1",
        "question_score": 5,
        "answer_score": 3,
        "controls": [],  # Llama-2's single-turn rows: the format writes no control token
        "earlier_answers": [],  # a single turn: only the completion is in the loss
    }
    assert (second["source"], second["question_score"]) == ("alpaca", None)
    assert batch.failed_rules == [None, EMPTY]
    assert batch.question_keys == [question_key("Title\n\nBody"), question_key("Task")]


@pytest.mark.parametrize("base", [built("smoke"), "llama2"])
def test_token_counter_matches_the_tokenizer_and_survives_pickling(request, base):
    tokenizer = request.getfixturevalue(f"{base}_tokenizer")
    texts = ["[INST] héllo wörld [/INST] ```\n    x = 1\n```", "", "🙂 " * 50]
    expected = [len(ids) + 1 for ids in tokenizer(texts)["input_ids"]]
    counter = TokenCounter(tokenizer.backend_tokenizer)
    assert counter(texts) == expected
    assert pickle.loads(pickle.dumps(counter))(texts) == expected


@pytest.mark.parametrize("base", [built("smoke"), built("llama2")])
def test_curation_counts_the_tokens_of_the_tokenizer_training_loads(request, base, tmp_path):
    """The length rule counts what training tokenizes. The embedded base's tokenizer.json is read directly;
    another base's tokenizer is loaded as training loads it: for Meta's Llama-2 files, with `legacy: true`,
    which puts a `▁` before text written right after a special token (`</s>indeed`: `▁indeed`, one token,
    where `legacy: false` gives `inde`, `ed`)."""
    tokenizer = request.getfixturevalue(f"{base}_tokenizer")
    if base == "smoke":
        config = smoke_config(request.getfixturevalue("smoke_base_dir").parent.parent)  # the session base's
    else:
        config = smoke_config(tmp_path, f"model.name_or_path={request.getfixturevalue('llama2_base_dir')}")
    texts = ["def f(x):\n        return x  # ünïcode", "[INST] <<SYS>>\nBe exact.\n<</SYS>>\n\nhi [/INST] ok",
             "strike <s>old</s>indeed"]  # fmt: skip
    counter, chat = load_row_tokenizer(config)
    assert chat == Llama2Format(tokenizer.bos_token, tokenizer.eos_token)
    # The format's control tokens count one each; the same characters in a row's text are text.
    written = Rendered(texts[2], ((7, 10), (13, 17)))
    plain = [len(ids) + 1 for ids in tokenizer([*texts[:2], texts[2]])["input_ids"]]
    assert counter([*map(Rendered, texts[:2]), written]) == plain
    assert (
        counter([Rendered(texts[2])]) == [len(encode(tokenizer, texts[2])) + 1]
        and plain[2] < counter([Rendered(texts[2])])[0]
    )
    assert pickle.dumps(counter) == pickle.dumps(TokenCounter(tokenizer.backend_tokenizer))
