"""The comparison's metrics, each on hand-made cases with known values."""

import math

import pytest
import torch

from inference.generate import Answer
from inference.metrics import (
    Segment,
    code_parse_counts,
    completion_labels,
    parses,
    python_blocks,
    rouge_l,
    split_fenced,
    summarize,
    summed_token_loss,
)
from tests.conftest import built


def test_loss_of_uniform_logits_is_log_vocab_size_per_labelled_token():
    logits = torch.zeros(1, 4, 8)
    labels = torch.tensor([[-100, 3, 5, -100]])  # positions 1 and 2 are predicted by positions 0 and 1
    total, tokens = summed_token_loss(logits, labels)
    assert tokens == 2
    assert total == pytest.approx(2 * math.log(8))


def test_loss_uses_the_logits_one_position_before_the_label():
    logits = torch.zeros(1, 2, 3)
    logits[0, 0, 2] = math.log(3)  # softmax at position 0: [1, 1, 3] / 5
    logits[0, 1, 2] = 100.0  # position 1 predicts nothing: must not count
    total, tokens = summed_token_loss(logits, torch.tensor([[-100, 2]]))
    assert (total, tokens) == (pytest.approx(-math.log(3 / 5)), 1)


@pytest.mark.parametrize("base", [built("smoke"), "llama2"])
def test_completion_labels_cover_the_answer_and_eos_only(request, base):
    tokenizer = request.getfixturevalue(f"{base}_tokenizer")
    prompt, completion = "[INST] Reverse a list? [/INST]", " Use `items[::-1]`. "
    input_ids, labels = completion_labels(tokenizer, prompt, completion)
    prompt_length = len(tokenizer(prompt)["input_ids"])
    assert input_ids[0] == tokenizer.bos_token_id and input_ids[-1] == tokenizer.eos_token_id
    assert labels[:prompt_length] == [-100] * prompt_length
    assert labels[prompt_length:] == input_ids[prompt_length:]
    assert tokenizer.decode(labels[prompt_length:]) == completion[1:] + tokenizer.eos_token


def test_split_fenced_separates_prose_and_code_and_keeps_an_open_block():
    text = "Try:\n```python\nx = 1\n```\nthen\n~~~\ny\n~~~\nand\n````\ns = '```'\n````\nlast\n```py\nopen("
    assert split_fenced(text) == [
        Segment("text", "Try:"),
        Segment("code", "x = 1", "python"),
        Segment("text", "then"),
        Segment("code", "y"),
        Segment("text", "and"),
        Segment("code", "s = '```'"),
        Segment("text", "last"),
        Segment("code", "open(", "py", closed=False),
    ]


def test_python_blocks_are_untagged_or_tagged_python():
    text = "```\na = 1\n```\n```bash\nls -l\n```\n```Python\nb = 2\n```\n```json\n{}\n```"
    assert python_blocks(text) == ["a = 1", "b = 2"]
    assert python_blocks("no code, only `inline` code") == []


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("def f(x):\n    return x * 2", True),
        ("    indented = True\n    again = 1", True),  # a block indented as a whole still parses
        ("print('\\d')", True),  # an invalid escape warns but parses
        ("def f(:\n    pass", False),
        ("for x in items\n    print(x)", False),
        ("x = 1\x00", False),
    ],
)
def test_parses(code, expected):
    assert parses(code) is expected


def test_code_parse_counts_over_answers():
    answers = ["```python\nx = 1\n```\n```\ny = (\n```", "```bash\nrm -rf\n```", "no code", "```\nz = 3"]
    assert code_parse_counts(answers) == (2, 3)  # x = 1 and the open block z = 3 parse; y = ( does not


def test_rouge_l_known_values():
    # Longest common subsequence "the cat on the mat": 5 of 6 words each side: P = R = F = 5/6.
    assert rouge_l("the cat lay on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    assert rouge_l("The cat, sat!", "the cat sat") == pytest.approx(1.0)  # lowercased, punctuation ignored
    assert rouge_l("dog", "the cat sat") == 0.0
    assert rouge_l("", "the cat sat") == 0.0
    # LCS "a c" of "a b c" (3 words) and "a c d e" (4 words): P = 2/3, R = 2/4, F = 2PR / (P + R) = 4/7.
    assert rouge_l("a b c", "a c d e") == pytest.approx(4 / 7)


def test_summarize_known_values():
    answers = [
        Answer("```python\nx = 1\n```", new_tokens=10, stopped=True),
        Answer("```\ndef f(:\n```", new_tokens=20, stopped=False),
        Answer("plain words", new_tokens=0, stopped=True),
        Answer("more words", new_tokens=30, stopped=True),
    ]
    references = ["```python\ny = 2\n```", None, "```py\nz = 3\n```", "no code"]
    summary = summarize(math.log(2), answers, references, [1.0, None, 0.5, 0.0], seconds=2.0)
    assert summary == {
        "validation_loss": round(math.log(2), 4),
        "perplexity": 2.0,
        "stop_rate": 0.75,
        "empty_answers": 0.0,
        "code_when_expected": 0.5,  # references 1 and 3 have code; answer 1 has some, answer 3 none
        "code_blocks": 2,
        "code_parse_rate": 0.5,
        "rouge_l": 0.5,  # the mean of 1.0, 0.5 and 0.0; None has no reference
        "mean_answer_tokens": 15.0,
        "tokens_per_second": 30.0,
    }


def test_an_empty_answer_counts_as_empty_not_as_a_stop():
    answers = [
        Answer("", 0, True),
        Answer("  \n", 1, True),
        Answer("words", 3, True),
        Answer("more", 9, False),
    ]
    summary = summarize(1.0, answers, [None] * 4, [None] * 4, seconds=1.0)
    assert summary["stop_rate"] == 0.25
    assert summary["empty_answers"] == 0.5


def test_summarize_without_code_or_references_says_none():
    summary = summarize(1.0, [Answer("words", 3, True)], [None], [None], seconds=1.0)
    assert summary["code_blocks"] == 0
    assert summary["code_parse_rate"] is None and summary["rouge_l"] is None
    assert summary["code_when_expected"] is None
