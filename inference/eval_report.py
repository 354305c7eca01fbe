"""The evaluation written for people: pass rates with intervals, the paired difference, what the training
data already holds, and every problem's answers with their outcome, as Markdown (eval.md) and as a
self-contained HTML page (eval.html). Every text is escaped."""

from __future__ import annotations

from typing import Any

from inference.generate import describe_decoding
from inference.report import STYLE, escape

OUTCOMES = {
    "passed": "passed",
    "wrong_answer": "wrong answer",
    "syntax_error": "syntax error",
    "error": "error",
    "timeout": "timeout",
    "killed": "killed (a limit)",
    "too_long": "prompt too long",
}


def describe(report: dict[str, Any]) -> str:
    problems, sandbox = report["problems"], report["sandbox"]
    limits = sandbox["limits"]
    answers = "one greedy answer" if report["samples"] == 1 else f"{report['samples']} sampled answers"
    return (
        f"Run {report['run']}: {problems['count']} problems from {problems['source']}, asked in the "
        f"{' and '.join(report['styles'])} style{'s' if len(report['styles']) > 1 else ''}, {answers} per "
        f"problem and model (decoding: {describe_decoding(report['decoding'])}). Each answer's code ran with "
        f"the problem's tests in a sandbox ({sandbox['isolation']}; {limits['wall_seconds']:g} s, "
        f"{limits['memory_bytes'] >> 20} MiB per program). Intervals are 95% Wilson intervals of the first "
        "answer's pass rate; the paired test is McNemar's exact test on the problems where the models differ."
    )


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def summary_rows(report: dict[str, Any]) -> list[list[str]]:
    """A head row, then one row per style and model: pass@k, interval, passed of all, outcome counts."""
    rows = [["style", "model", "pass@k", "95% interval", "passed", "outcomes"]]
    for style, by_model in report["summary"].items():
        for label, summary in by_model.items():
            passes = " ".join(
                f"{key} {_percent(value)}" for key, value in summary.items() if key.startswith("pass@")
            )
            low, high = summary["interval"]
            counts = ", ".join(f"{OUTCOMES.get(k, k)} {n}" for k, n in summary["outcomes"].items())
            rows.append(
                [style, label, passes, f"{_percent(low)} to {_percent(high)}",
                 f"{summary['passed']}/{summary['problems']}", counts]
            )  # fmt: skip
    return rows


def paired_rows(report: dict[str, Any]) -> list[list[str]]:
    first, second = report["models"]
    rows = []
    for style, paired in report["paired"].items():
        low, high = paired["interval"]
        rows.append(
            [style, f"{100 * paired['difference']:+.1f} points", f"{100 * low:+.1f} to {100 * high:+.1f}",
             str(paired["b"]), str(paired["c"]), f"{paired['p_value']:.3g}"]
        )  # fmt: skip
    return [
        ["style", f"{second} - {first}", "95% interval", f"{first} only", f"{second} only", "McNemar p"],
        *rows,
    ]


def markdown_table(rows: list[list[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    return "\n".join(
        lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
    )


def eval_table(report: dict[str, Any]) -> str:
    """The pass rates and the paired difference as Markdown tables (also printed to the terminal)."""
    return markdown_table(summary_rows(report)) + "\n\n" + markdown_table(paired_rows(report))


def outcome(entry: dict[str, Any]) -> str:
    """An answer's outcome in a few words: pass, or the failure and its last line."""
    if entry["passed"]:
        return "pass"
    detail = entry.get("detail") or ""
    return f"{OUTCOMES.get(entry['status'], entry['status'])}{': ' + detail if detail else ''}"


def overlap_rows(found: dict[str, Any]) -> list[list[str]]:
    rows = [["problem", "tokens", "training row", "shared text"]]
    return rows + [
        [o["task_id"], str(o["tokens"]), str(o["training_row"]), o["text"][:200]] for o in found["overlaps"]
    ]


def contamination_lines(report: dict[str, Any]) -> list[str]:
    found = report["contamination"]
    lines = [
        f"Longest run of shared {found['ngram']}-grams (normalized tokens) between each problem's prompt and "
        f"solution and the {found['training_rows']:,} training rows."
    ]
    if not found["overlaps"]:
        return [*lines, "", "No problem shares an n-gram with the training split."]
    return [*lines, "", markdown_table(overlap_rows(found))]


def eval_markdown(report: dict[str, Any]) -> str:
    labels = list(report["models"])
    lines = [
        "# Does the fine-tuned model write code that works?",
        "",
        describe(report),
        "",
        eval_table(report),
    ]
    lines += ["", "## Contamination", "", *contamination_lines(report), "", "## Per problem", ""]
    rows = [["problem", "style", *labels]]
    rows += [
        [item["task_id"], item["style"], *(outcome(item["answers"][label][0]) for label in labels)]
        for item in report["items"]
    ]
    lines += [markdown_table(rows), "", "## Answers", ""]
    for item in report["items"]:
        lines += [f"<details><summary>{escape(item['task_id'])}, {item['style']}</summary>", ""]
        for label in labels:
            entry = item["answers"][label][0]
            code = entry["code"] if entry["code"] is not None else "(not asked: the prompt is too long)"
            lines += [
                f"<p>{escape(label)}: {escape(outcome(entry))}</p>",
                "",
                f"<pre>{escape(code)}</pre>",
                "",
            ]
        lines += ["</details>", ""]
    return "\n".join(lines)


def html_table(rows: list[list[str]], css: str = "summary") -> str:
    head, *body = rows
    cells = "".join(f"<th>{escape(cell)}</th>" for cell in head)
    body_html = "".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in body
    )
    return f'<table class="{css}"><tr>{cells}</tr>{body_html}</table>'


def eval_summary_html(report: dict[str, Any]) -> str:
    """The pass rates and the paired difference as HTML tables."""
    return f"{html_table(summary_rows(report))}\n{html_table(paired_rows(report))}"


def eval_html(report: dict[str, Any]) -> str:
    labels = list(report["models"])
    found = report["contamination"]
    sections = []
    for item in report["items"]:
        columns = "".join(
            f'<div><h3>{escape(label)} <span class="caption">{escape(outcome(item["answers"][label][0]))}'
            f"</span></h3><pre>{escape(item['answers'][label][0]['code'] or '(not asked)')}</pre></div>"
            for label in labels
        )
        sections.append(
            f"<section><h2>{escape(item['task_id'])}, {escape(item['style'])}</h2>"
            f'<details><summary>prompt</summary><pre class="prompt">{escape(item["prompt"])}</pre></details>'
            f'<div class="columns">{columns}</div></section>'
        )
    contamination = (
        html_table(overlap_rows(found))
        if found["overlaps"]
        else "<p>No problem shares an n-gram with the training split.</p>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>'
        f"<title>Evaluation: {escape(report['run'])}</title><style>{STYLE}</style></head>\n"
        f"<body><h1>Does the fine-tuned model write code that works?</h1><p>{escape(describe(report))}</p>\n"
        f"{eval_summary_html(report)}\n"
        f"<h2>Contamination ({found['ngram']}-grams, {found['training_rows']:,} training rows)</h2>"
        f"{contamination}\n" + "\n".join(sections) + "\n</body></html>\n"
    )
