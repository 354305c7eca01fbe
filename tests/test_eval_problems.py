"""The evaluation's problems, the programs that test an answer, code taken from answers, and the n-gram
contamination check: pure functions, checked on HumanEval's own data and on small hand-made cases."""

from __future__ import annotations

import gzip
import json

import pytest

from core.errors import UserError
from evaluation.contamination import find_overlaps, longest_runs, normalized_tokens
from evaluation.problems import (
    Problem,
    as_body,
    defines,
    evaluation_program,
    instruction,
    read_problems,
    truncate_completion,
)
from inference.evaluate import answer_code
from tests.conftest import built

ADD = Problem(
    task_id="t/0",
    prompt='from typing import List\n\n\ndef add(a: int, b: int) -> int:\n    """Sum of a and b."""\n',
    canonical_solution="    return a + b\n",
    test="def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    entry_point="add",
)


def run(program: str) -> dict:
    namespace: dict = {}
    exec(compile(program, "<test>", "exec"), namespace)  # our own hand-written programs, not a model's
    return namespace


def test_humaneval_has_its_164_problems_in_order():
    problems = read_problems()
    assert len(problems) == 164
    assert [p.task_id for p in problems[:2]] == ["HumanEval/0", "HumanEval/1"]
    assert problems[0].entry_point == "has_close_elements"


@pytest.mark.e2e  # 328 programs through the sandbox
def test_every_canonical_solution_passes_in_the_sandbox_in_both_styles():
    from evaluation.sandbox import run_programs

    problems = read_problems()
    programs = [evaluation_program(p, p.canonical_solution) for p in problems]  # the completion style
    answers = [f"Here it is:\n```python\n{p.prompt}{p.canonical_solution}```\n" for p in problems]
    programs += [
        evaluation_program(p, answer_code(answer)) for p, answer in zip(problems, answers, strict=True)
    ]
    outcomes = run_programs(programs)
    failed = [(problems[i % 164].task_id, o.status, o.detail) for i, o in enumerate(outcomes) if not o.passed]
    assert failed == []
    assert len(outcomes) == 2 * 164


def test_a_users_problems_file_in_the_same_shape(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(ADD.__dict__) + "\n\n")
    assert read_problems(path) == [ADD]
    gzipped = tmp_path / "mine.jsonl.gz"
    gzipped.write_bytes(gzip.compress(path.read_bytes()))
    assert read_problems(gzipped) == [ADD]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json\n", "line 1: not valid JSON"),
        ('{"task_id": "a"}\n', "line 1: missing or not text: prompt, canonical_solution, test, entry_point"),
        ("[1, 2]\n", "line 1: expected an object"),
        (
            json.dumps(ADD.__dict__) + "\n" + json.dumps(ADD.__dict__) + "\n",
            "line 2: task_id 't/0' appears twice",
        ),
        ("\n\n", "holds no problems"),
    ],
)
def test_a_bad_problems_file_is_one_error_naming_the_line(tmp_path, text, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        read_problems(path)


def test_a_missing_problems_file_is_named(tmp_path):
    with pytest.raises(UserError, match="eval.problems: file not found"):
        read_problems(tmp_path / "nope.jsonl")


def test_the_canonical_solution_passes_in_both_styles_and_a_wrong_one_fails():
    run(evaluation_program(ADD, ADD.canonical_solution))  # completion style: the body follows the prompt
    run(
        evaluation_program(
            ADD, answer_code(f"Here:\n```python\n{ADD.prompt}{ADD.canonical_solution}```\nDone.")
        )
    )
    run(evaluation_program(ADD, "return a + b"))  # a body written at column 0 is indented as one
    with pytest.raises(AssertionError):
        run(evaluation_program(ADD, "    return a - b\n"))


def test_the_entry_point_is_found_by_the_syntax_tree():
    assert defines("import os\n\ndef add(a, b):\n    return a + b\n", "add")
    assert not defines("def adder(a, b):\n    return 1\n", "add")
    assert not defines("class A:\n    def add(self):\n        pass\n", "add")  # a method is not the function
    assert defines("def add(a, b:\n", "add")  # does not parse: the definition line still counts


def test_as_body_keeps_an_indented_body_and_indents_one_at_column_zero():
    assert as_body("    x = 1\n    return x\n") == "    x = 1\n    return x"
    assert as_body("x = 1\nif x:\n    return x") == "    x = 1\n    if x:\n        return x"


def test_a_completion_ends_where_the_function_ends():
    text = "    return a + b\n\n\ndef main():\n    print(add(1, 2))\n"
    assert truncate_completion(text) == "    return a + b\n\n"
    assert truncate_completion("    return 1\n#comment\n") == "    return 1"
    assert truncate_completion("    return 1") == "    return 1"


def test_the_code_of_an_answer():
    assert answer_code("a\n```python\nx = 1\n```\nb\n```python\ny = 2\n```") == "x = 1"
    assert answer_code("```\nx = 1\n```") == "x = 1"  # untagged blocks are Python here
    assert answer_code("see:\n```python\nx = 1\n") == "x = 1\n"  # left open: cut at the token limit
    assert answer_code("```bash\nls\n```\nreturn 1") == "```bash\nls\n```\nreturn 1"  # no Python block
    assert answer_code("return a + b") == "return a + b"


def test_the_instruction_shows_the_function_in_a_fenced_block():
    text = instruction(ADD)
    assert f"```python\n{ADD.prompt.strip()}\n```" in text


def test_normalized_tokens_ignore_case_spacing_and_indentation():
    assert normalized_tokens("def  Add(a,b):\n\treturn a+b") == normalized_tokens(
        "def add( a , b ):\n return a + b"
    )
    assert normalized_tokens("x_1 = 'A' [1, 2]") == ["x_1", "a", "1", "2"]


def test_longest_runs_of_consecutive_ngram_positions():
    # positions 3, 4, 5 are one run: it spans 5 - 3 + n tokens; 9 alone spans n
    assert longest_runs([9, 4, 3, 5], n=13) == (3, 15)
    assert longest_runs([7], n=13) == (7, 13)


def test_overlaps_find_the_longest_copy_and_its_row():
    words = [f"w{i}" for i in range(40)]
    probe = " ".join(words)
    training = [
        "nothing in common here at all",
        " ".join(["x", *words[5:20], "y"]),  # 15 tokens of the probe: w5 .. w19
        " ".join(words[0:14]),  # 14 tokens: shorter
    ]
    (overlap,) = find_overlaps([probe, "unrelated probe text"], training, n=13)
    assert (overlap.probe, overlap.row, overlap.tokens) == (0, 1, 15)
    assert overlap.text == " ".join(words[5:20])


def test_no_overlap_below_n_tokens():
    words = [f"w{i}" for i in range(40)]
    assert find_overlaps([" ".join(words)], [" ".join(words[:12])], n=13) == []


def test_rows_compared_by_content_leave_the_shared_system_prompt_out():
    from core.prompts import render_completion, render_prompt, without_system

    system = "  You are a careful assistant who writes small, well-tested Python functions for every task."
    prompt = render_prompt("Reverse a list", system)
    assert without_system(prompt + render_completion("Use reversed()."), system) == (
        "[INST] Reverse a list [/INST] Use reversed(). "
    )
    assert without_system(prompt, None) == prompt
    rows = [render_prompt(f"Question {i}", system) for i in range(3)]
    assert find_overlaps(rows[:1], rows[1:]) != []  # the system prompt alone is a long shared run
    assert (
        find_overlaps(
            [without_system(r, system) for r in rows[:1]], [without_system(r, system) for r in rows[1:]]
        )
        == []
    )


@pytest.mark.parametrize("name", [built("smoke_tokenizer"), "llama2_tokenizer"])
def test_a_continuation_keeps_the_indentation_it_opens_with(name, request):
    from inference.generate import continuation

    tokenizer = request.getfixturevalue(name)
    prompt = ADD.prompt
    body = "    return a + b\n"
    ids = tokenizer(prompt + body)["input_ids"]
    prompt_ids = tokenizer(prompt)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids
    answer = continuation(tokenizer, prompt_ids, [*ids[len(prompt_ids) :], tokenizer.eos_token_id, 0, 0])
    assert answer.text == body and answer.stopped and answer.new_tokens == len(ids) - len(prompt_ids)
    run(evaluation_program(ADD, truncate_completion(answer.text)))
