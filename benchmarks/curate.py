"""Curating a synthetic Stack Overflow dump: `make data` against the notebook recipe's, in time and memory.

Both sides curate the same 100k-question dump (runs/bench/stackoverflow-100k, generated if absent), each
in its own subprocess, run one after the other: ours is `python -m data_prep` on the smoke profile (its
embedded tokenizer counts the tokens), keeping every pair (`data.too_long: truncate`) as the baseline
does. Peak memory is the larger of the subprocess's `ru_maxrss` (its largest process) and the peak sum
of RSS over its process tree, sampled every 50 ms (our workers are separate processes); the same rule
for both sides.

    python -m benchmarks curate                     # the comparison: curate_seconds, curate_peak_rss_mb,
                                                    # each side run twice, interleaved
    python -m benchmarks.curate --full-scale        # ours alone on the full-size dump (607k questions,
                                                    # 2,000 validation rows), with and without the
                                                    # length rule, against the 90 s and 3 GB limits
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.results import record
from synthetic.stackoverflow import FULL_ANSWERS, FULL_QUESTIONS, write_dump
from synthetic.stages import run_stage, stage_command

BENCH = Path("runs/bench")
QUESTIONS = 100_000
ROUNDS = 2  # runs of each side; the time is the fastest, the memory the largest
FULL_SCALE_SECONDS, FULL_SCALE_MEGABYTES = 90, 3072  # the limits the full-scale run must stay within
FULL_SCALE_VALIDATION = 2000  # validation rows, each checked for overlap with every training row
SMOKE = "configs/smoke.yaml"


def baseline(dump: Path, output: Path, validation_size: int = 1000) -> int:
    """The notebook recipe's curation: pandas reads both files whole as ISO-8859-1, merges them, keeps each
    question's highest-scored answer, keeps scores >= 0, strips the HTML with BeautifulSoup (on lxml, its
    fastest parser), renders the Llama-2 text and saves a dataset with a 1,000-row validation split."""
    import pandas as pd
    from bs4 import BeautifulSoup
    from datasets import Dataset

    questions = pd.read_csv(dump / "Questions.csv", encoding="ISO-8859-1")
    answers = pd.read_csv(dump / "Answers.csv", encoding="ISO-8859-1")
    pairs = questions.merge(answers, left_on="Id", right_on="ParentId", suffixes=("_q", "_a"))
    pairs = pairs.sort_values("Score_a", ascending=False).drop_duplicates(subset="Id_q", keep="first")
    pairs = pairs[(pairs["Score_q"] >= 0) & (pairs["Score_a"] >= 0)]
    pairs["question"] = [BeautifulSoup(body, "lxml").get_text() for body in pairs["Body_q"]]
    pairs["answer"] = [BeautifulSoup(body, "lxml").get_text() for body in pairs["Body_a"]]
    system = "Given a puzzle-like code question, provide a well-reasoned, step-by-step Python solution."
    pairs["text"] = [
        f"<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{title}\n\n{question} [/INST] {answer} </s>"
        for title, question, answer in zip(pairs["Title"], pairs["question"], pairs["answer"], strict=True)
    ]
    dataset = Dataset.from_pandas(pairs[["text"]], preserve_index=False)
    dataset.train_test_split(test_size=validation_size).save_to_disk(str(output))
    return len(pairs)


def ours_command(
    dump: Path, output_dir: Path, too_long: str = "truncate", validation_size: int = 1000
) -> list[str]:
    settings = [
        f"run.output_dir={output_dir}",
        f"data.stackoverflow.questions={dump / 'Questions.csv'}",
        f"data.stackoverflow.answers={dump / 'Answers.csv'}",
        f"data.stackoverflow.tags={dump / 'Tags.csv'}",
        "data.stackoverflow.limit=null",
        "data.alpaca=null",
        f"data.validation_size={validation_size}",
        f"data.too_long={too_long}",
    ]
    return stage_command("data_prep", SMOKE, settings)


def measure(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak memory (MB) of a command: max(its ru_maxrss, its process tree's peak RSS sum)."""
    import psutil

    started = time.perf_counter()
    process = subprocess.Popen(command, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    root, tree_peak = psutil.Process(process.pid), 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)  # the child's own rusage, once it ends
        if pid:
            break
        try:
            members = [root, *root.children(recursive=True)]
            tree_peak = max(tree_peak, sum(member.memory_info().rss for member in members))
        except psutil.Error:  # a member ended while being read
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"benchmark command failed ({process.returncode}): {' '.join(command)}")
    return round(seconds, 1), round(max(tree_peak, usage.ru_maxrss * 1024) / 2**20, 1)


def dump_of(questions: int, answers: int, name: str) -> Path:
    folder = BENCH / name
    if not (folder / "Tags.csv").is_file():  # written last
        print(f"writing the synthetic dump {folder} ({questions:,} questions)")
        write_dump(folder, questions, answers, progress=print)
    return folder


def ensure_smoke_base() -> None:
    run_stage("fine_tune.base", SMOKE, capture=False)


def run(rounds: int = ROUNDS) -> None:
    dump = dump_of(QUESTIONS, round(QUESTIONS * FULL_ANSWERS / FULL_QUESTIONS), "stackoverflow-100k")
    ensure_smoke_base()
    baseline_command = [sys.executable, "-m", "benchmarks.curate", "--baseline", str(dump)]
    commands = {"ours": ours_command(dump, BENCH / "curate-ours"), "baseline": baseline_command}
    seconds: dict[str, list[float]] = {side: [] for side in commands}
    megabytes: dict[str, list[float]] = {side: [] for side in commands}
    loads = []  # other work on the machine skews the timings: the load average before each run
    for _ in range(rounds):  # interleaved, so that a slow spell of the machine hits both sides
        for side, command in commands.items():
            loads.append(os.getloadavg()[0])
            taken, peak = measure(command)
            seconds[side].append(taken)
            megabytes[side].append(peak)
    details = {"questions": QUESTIONS, "cores": len(os.sched_getaffinity(0)), "load_before_runs": loads}
    record(
        "curate_seconds", min(seconds["ours"]), min(seconds["baseline"]), "s", "lower", **details,
        rule=f"fastest of {rounds} interleaved runs per side", runs=seconds,
    )  # fmt: skip
    record(
        "curate_peak_rss_mb", max(megabytes["ours"]), max(megabytes["baseline"]), "MB", "lower", **details,
        rule=f"largest of {rounds} interleaved runs per side", runs=megabytes,
    )  # fmt: skip


def run_full_scale() -> None:
    """Ours alone on the full-size dump, against the limits (90 s, 3 GB): keeping every pair as in
    the comparison, then with the default length rule, which counts the tokens of every row. Both check
    the 2,000 validation rows for overlap with every training row."""
    dump = dump_of(FULL_QUESTIONS, FULL_ANSWERS, "stackoverflow-full")
    ensure_smoke_base()
    details = {"questions": FULL_QUESTIONS, "answers": FULL_ANSWERS, "validation_size": FULL_SCALE_VALIDATION}
    for too_long, suffix in (("truncate", ""), ("drop", "_length_rule")):
        load = {"load_before": os.getloadavg()[0], "too_long": too_long}
        command = ours_command(dump, BENCH / "curate-full", too_long, FULL_SCALE_VALIDATION)
        seconds, megabytes = measure(command)
        record(f"curate_full_scale{suffix}_seconds", seconds, FULL_SCALE_SECONDS, "s", **details, **load)
        record(
            f"curate_full_scale{suffix}_peak_rss_mb", megabytes, FULL_SCALE_MEGABYTES, "MB", **details, **load
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--full-scale", action="store_true", help="ours alone on the full-size dump")
    group.add_argument("--baseline", type=Path, metavar="DUMP", help="run the notebook's curation on DUMP")
    parser.add_argument("--validation-size", type=int, default=1000,
                        help="the baseline's validation rows (default 1000, as the notebook's)")  # fmt: skip
    args = parser.parse_args()
    if args.baseline:
        print(f"baseline: {baseline(args.baseline, BENCH / 'curate-baseline', args.validation_size)} pairs")
    elif args.full_scale:
        run_full_scale()
    else:
        run()


if __name__ == "__main__":
    main()
