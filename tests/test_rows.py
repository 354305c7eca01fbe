"""The one-row transforms the curation workers run: conversion, the one-row rules, keys, token counts."""

import pickle

import pytest

from core.prompts import Llama2Format, Rendered, render_completion, render_prompt
from core.tokens import WordCounts, encode, encode_batch, words_of
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
from synthetic import REPO
from synthetic.llama import LLAMA2_TOKENIZER
from tests.conftest import LLAMA3_TOKENIZER, built, smoke_config

# Texts whose words are cut at their edges: leading and trailing spaces, runs, other whitespace, a ▁ written
# in the text, special tokens' text, characters the tokenizer has no piece for, the NUL words_of cuts with.
WORD_EDGES = [" lead", "  two leading", "trail  ", "x \u2581 y", "\u2581\u2581x y", "</s> <s>x",
              "tab\t x\n y", "é z 🙂 w", " ", "nul\0 inside it", "a"]  # fmt: skip
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
    rows = [*long_rows(), *map(Rendered, WORD_EDGES)]
    expected = [len(ids) + 1 for ids in encode_batch(tokenizer, rows)]
    assert counter(rows) == expected  # counted by words, each encoded once
    assert counter(rows) == expected  # and again, from the words it remembers


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


def long_rows() -> list[Rendered]:
    """Rows of every length around the limits below: the Stack Overflow sample's posts run together, cut at
    varied places, with indentation, blank lines, runs of spaces, non-ASCII text and Llama-2's controls."""
    import csv
    import random

    with open(REPO / "data/samples/stackoverflow/Answers.csv", encoding="utf-8", newline="") as file:
        bodies = [row["Body"] for row in csv.DictReader(file)]
    text = "\n\n".join(bodies) + " ünïcode  🙂   x\n    indented\tcode  "
    rng = random.Random(0)
    rows = []
    for _ in range(120):
        start = rng.randrange(len(text) // 2)
        middle = text[start : start + rng.choice([5, 50, 400, 1500, 4000, 12000])]
        chat = Llama2Format()
        rows.append(chat.rendered_prompt(f"Q {rng.random()}", "Be exact.") + chat.rendered_completion(middle))
    return rows


@pytest.mark.parametrize("limit", [48, 256, 1024, 3000])
def test_counting_a_long_rows_start_first_tells_the_same_rows_over_the_limit(llama2_tokenizer, limit):
    """TokenCounter.up_to on Meta's Llama-2 tokenizer: a row within the limit gets its exact count, a row over
    it a count over it too and never more than its own; a tokenizer whose merges may join two words (Llama-3's
    regex-split byte-level BPE) is counted whole."""
    from tokenizers import Tokenizer

    rows = long_rows()
    counter = TokenCounter(llama2_tokenizer.backend_tokenizer)
    exact = counter(rows)
    assert sum(count > limit for count in exact) and sum(count <= limit for count in exact)
    for first in (True, False):  # the first call guesses the characters per token; the second has measured
        bounds = [
            count
            for start in range(0, len(rows), 32)
            for count in counter.up_to(rows[start : start + 32], limit)
        ]
        for count, bound in zip(exact, bounds, strict=True):
            assert bound == count if count <= limit else limit < bound <= count, first
    llama3 = TokenCounter(Tokenizer.from_file(str(LLAMA3_TOKENIZER / "tokenizer.json")))
    assert llama3.up_to(rows, limit) == llama3(rows)


def test_which_tokenizers_never_merge_across_words(llama2_tokenizer):
    import json

    from tokenizers import Tokenizer

    from core.tokens import splits_between_words

    raw = Tokenizer.from_file(str(LLAMA2_TOKENIZER / "tokenizer.json"))
    assert splits_between_words(raw) and splits_between_words(llama2_tokenizer.backend_tokenizer)
    assert not splits_between_words(Tokenizer.from_file(str(LLAMA3_TOKENIZER / "tokenizer.json")))
    spec = json.loads(raw.to_str())
    spec["model"]["vocab"]["a\u2581b"] = len(spec["model"]["vocab"])  # a piece across two words
    assert not splits_between_words(Tokenizer.from_str(json.dumps(spec)))


def test_a_text_is_cut_into_words_before_each_space_that_follows_another_character():
    assert words_of("one two  three") == ["one", " two", "  three"]
    assert words_of("  lead x") == ["  lead", " x"]
    assert words_of("trail  ") == ["trail", "  "]
    assert words_of("a\n b\t c") == ["a\n", " b\t", " c"]
    assert words_of("x \u2581 y\u2581 z") == ["x", " \u2581 y\u2581 z"]  # no cut after a ▁
    assert words_of("") == [""]
    assert words_of("a\0 b") is None


def test_counting_by_words_forgets_them_all_at_its_capacity_and_stays_exact(monkeypatch):
    """Meta's tokenizer.json as written (a Prepend normalizer, where transformers builds a Metaspace
    pre-tokenizer), counted with room for 40 words: forgotten and encoded again, never wrong."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(LLAMA2_TOKENIZER / "tokenizer.json"))
    texts = [row.text for row in long_rows()[:40]] + WORD_EDGES
    monkeypatch.setattr(WordCounts, "CAPACITY", 40)
    counts = WordCounts(backend)
    assert [counts(text) for text in texts] == [len(ids) for ids in encode_batch(backend, texts, False)]
    assert len(counts._later) < 40 + max(len(words_of(text) or ()) for text in texts)


def test_a_rows_start_ends_where_a_word_ends_and_never_inside_a_control():
    from core.tokens import start_of

    assert start_of(Rendered("short text"), 50) == Rendered("short text")
    assert start_of(Rendered("one two  three four"), 12) == Rendered("one two")  # the cut after `two`
    assert start_of(Rendered("one two  three four"), 16) == Rendered("one two  three")
    assert start_of(Rendered("nospacesatallhere"), 5) == Rendered("nospacesatallhere")
    controlled = Rendered("ab [INST] cd ef", ((3, 9),))  # a control spelled with a space inside, say
    assert start_of(Rendered("ab [IN ST] cd ef", ((3, 10),)), 8) == Rendered("ab")
    assert start_of(controlled, 12) == Rendered("ab [INST]", ((3, 9),))
