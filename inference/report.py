"""The comparison written for people: a summary table, then every prompt with the answers side by side,
as Markdown (compare.md) and as a self-contained HTML page (compare.html). Every text is escaped."""

from __future__ import annotations

import html
import re
from typing import Any

from inference.generate import describe_decoding
from inference.metrics import split_fenced

METRICS = {
    "validation_loss": "validation loss (answer tokens)",
    "perplexity": "perplexity",
    "stop_rate": "stop rate (an answer, then EOS before the limit)",
    "empty_answers": "empty answers (EOS before any text)",
    "code_when_expected": "answers with code where the reference has some",
    "code_parse_rate": "Python code blocks that parse",
    "code_blocks": "Python code blocks",
    "rouge_l": "ROUGE-L vs reference",
    "mean_answer_tokens": "mean answer tokens",
    "tokens_per_second": "tokens/s",
}
# Characters XML forbids (C0 controls other than tab, newline, carriage return; lone surrogates; U+FFFE/F).
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def escape(text: str) -> str:
    """Text safe inside an HTML element (not an attribute), and well-formed as XML."""
    return html.escape(NOT_XML.sub("\ufffd", text), quote=False)


def _cell(value: Any) -> str:
    return "n/a" if value is None else str(value)


def summary_table(summary: dict[str, dict[str, Any]]) -> str:
    """The per-model numbers as a Markdown table, one row per metric (also printed to the terminal)."""
    names = list(summary)
    lines = [
        "| metric | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---:" for _ in names) + " |",
    ]
    lines += [
        f"| {label} | " + " | ".join(_cell(summary[name][key]) for name in names) + " |"
        for key, label in METRICS.items()
    ]
    return "\n".join(lines)


def answer_caption(answer: dict[str, Any]) -> str:
    ending = "stopped at EOS" if answer["stopped"] else "hit the token limit"
    rouge = "" if answer.get("rouge_l") is None else f", ROUGE-L {answer['rouge_l']:.2f}"
    return f"{answer['new_tokens']} tokens, {ending}{rouge}"


def describe(report: dict[str, Any]) -> str:
    counts = report["examples"]
    return (
        f"Run {report['run']}: {counts['validation']} validation examples and {counts['hand_written']} "
        f"hand-written prompts, answered by each model (decoding: {describe_decoding(report['decoding'])}). "
        "Loss and perplexity are teacher-forced on the validation answers only."
    )


def markdown_report(report: dict[str, Any], evaluation: str = "") -> str:
    """The comparison as Markdown; `evaluation` is the execution-based evaluation's summary, when it ran."""
    names = list(report["summary"])
    lines = ["# Base vs fine-tuned", "", describe(report), "", summary_table(report["summary"]), ""]
    if evaluation:
        lines += ["## Does the code work? (details: eval.md)", "", evaluation, ""]
    for number, item in enumerate(report["items"], 1):
        lines += [f"## {number}. {item['kind']}", "", "**Prompt**", "", _pre(item["prompt"]), ""]
        if item["reference"] is not None:
            lines += ["**Reference**", "", _pre(item["reference"]), ""]
        # Blank lines around each <pre> make it a raw HTML block of its own, which may hold blank lines;
        # the table's tags between them are blocks too, so a Markdown viewer shows one two-column table.
        heads = "".join(f"<th>{escape(n)}: {escape(answer_caption(item['answers'][n]))}</th>" for n in names)
        lines += [f"<table><tr>{heads}</tr><tr><td>", ""]
        for index, name in enumerate(names):
            lines += [_pre(item["answers"][name]["text"] or "(empty)"), ""]
            lines += ["</td><td>" if index < len(names) - 1 else "</td></tr></table>", ""]
    return "\n".join(lines)


def _pre(text: str) -> str:
    return f"<pre>{escape(text)}</pre>"


STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; }
table.summary { border-collapse: collapse; margin: 1em 0; }
table.summary th, table.summary td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
table.summary th:first-child, table.summary td:first-child { text-align: left; }
section { border-top: 2px solid #ddd; margin-top: 2em; }
.columns { display: grid; grid-template-columns: 1fr 1fr; gap: 1.5em; }
.caption { color: #666; font-weight: normal; font-size: 0.85em; }
pre { background: #f5f5f5; padding: 0.6em; overflow-x: auto; white-space: pre-wrap; }
pre.prompt { background: #eef3fb; }
p.prose { white-space: pre-wrap; margin: 0.4em 0; }
"""


def html_answer(text: str) -> str:
    """An answer as HTML: prose keeps its line breaks, fenced code blocks are preformatted."""
    if not text:
        return '<p class="prose"><em>(empty)</em></p>'
    parts = []
    for segment in split_fenced(text):
        if segment.kind == "code":
            language = re.sub(r"[^\w+.-]", "", segment.language)  # safe in an attribute
            language = f' class="language-{language}"' if language else ""
            parts.append(f"<pre><code{language}>{escape(segment.text)}</code></pre>")
        elif segment.text.strip():
            parts.append(f'<p class="prose">{escape(segment.text.strip(chr(10)))}</p>')
    return "\n".join(parts)


def html_report(report: dict[str, Any], evaluation: str = "") -> str:
    """The comparison as an HTML page; `evaluation` is the evaluation's summary as HTML, when it ran."""
    names = list(report["summary"])
    rows = "".join(
        f"<tr><td>{escape(label)}</td>"
        + "".join(f"<td>{escape(_cell(report['summary'][n][key]))}</td>" for n in names)
        + "</tr>"
        for key, label in METRICS.items()
    )
    head = "<tr><th>metric</th>" + "".join(f"<th>{escape(n)}</th>" for n in names) + "</tr>"
    sections = []
    for number, item in enumerate(report["items"], 1):
        reference = ""
        if item["reference"] is not None:
            reference = f"<details><summary>reference</summary>{html_answer(item['reference'])}</details>"
        columns = "".join(
            f'<div><h3>{escape(n)} <span class="caption">{escape(answer_caption(item["answers"][n]))}'
            f"</span></h3>{html_answer(item['answers'][n]['text'])}</div>"
            for n in names
        )
        sections.append(
            f'<section id="item-{number}"><h2>{number}. {escape(item["kind"])}</h2>'
            f'<pre class="prompt">{escape(item["prompt"])}</pre>{reference}'
            f'<div class="columns">{columns}</div></section>'
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>'
        f"<title>Base vs fine-tuned: {escape(report['run'])}</title><style>{STYLE}</style></head>\n"
        f"<body><h1>Base vs fine-tuned</h1><p>{escape(describe(report))}</p>\n"
        f'<table class="summary">{head}{rows}</table>\n'
        + (
            f'<h2>Does the code work? (details: <a href="eval.html">eval.html</a>)</h2>{evaluation}\n'
            if evaluation
            else ""
        )
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
