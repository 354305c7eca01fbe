"""eval_seconds: the execution-based evaluation of the fine-tuned tiny model on 32 HumanEval problems, both
styles.

Ours: `make eval`'s way, answers generated in batches per style, then every program run in the sandbox
in parallel on every core. The baseline: one problem at a time, as a notebook would: generate one answer
(batch of one), run its program, next. Both decode with the same settings on the same loaded model, run
programs in the same sandbox, and the benchmark checks that they pass the same problems. The model is
the tiny profile's, built through the real stages into runs/bench/compare when missing.
"""

from __future__ import annotations

import logging
import time

from benchmarks.compare import OVERRIDES, PROFILE, build_missing
from benchmarks.results import record
from core.config import load_config
from evaluation.problems import evaluation_program
from evaluation.sandbox import run_program, run_programs
from inference.evaluate import answer_problems, load_problems, sandbox_limits
from inference.loading import load_model
from inference.models import resolve_model

PROBLEMS = 32


def run() -> None:
    config = load_config(PROFILE, [*OVERRIDES, f"eval.limit={PROBLEMS}"])
    build_missing(config)
    problems = load_problems(config)
    limits = sandbox_limits(config)
    model, tokenizer = load_model(resolve_model(config, "new_model"), config)
    answer_problems(model, tokenizer, problems[:2], config, "warm-up")

    started = time.perf_counter()
    answers = answer_problems(model, tokenizer, problems, config, "batched")
    entries = [samples[0] for style in config.eval.styles for samples in answers[style]]
    ours = [outcome.passed for outcome in run_programs([entry["program"] for entry in entries], limits)]
    ours_seconds = time.perf_counter() - started

    one_at_a_time = config.model_copy(
        update={"inference": config.inference.model_copy(update={"batch_size": 1})}
    )
    logging.getLogger("inference.evaluate").setLevel(logging.WARNING)  # not four lines per problem
    started = time.perf_counter()
    passed = {}
    for index, problem in enumerate(problems):
        for style, (samples,) in answer_problems(model, tokenizer, [problem], one_at_a_time, "one").items():
            code = samples[0]["code"]
            passed[style, index] = run_program(evaluation_program(problem, code), limits).passed
    baseline = [passed[style, index] for style in config.eval.styles for index in range(len(problems))]
    baseline_seconds = time.perf_counter() - started
    record(
        "eval_seconds",
        round(ours_seconds, 2),
        round(baseline_seconds, 2),
        "s",
        "lower",
        problems=len(problems),
        styles=config.eval.styles,
        max_new_tokens=config.eval.max_new_tokens,
        batch_size=config.inference.batch_size,
        passed=sum(ours),
        outcomes_differ=sum(a != b for a, b in zip(ours, baseline, strict=True)),
    )
