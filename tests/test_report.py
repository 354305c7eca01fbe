"""The comparison reports: a well-formed, escaped HTML page and Markdown holding every prompt and answer."""

from lxml import etree

from core.config import InferenceConfig
from inference.generate import decoding_settings
from inference.report import html_report, markdown_report, summary_table

HOSTILE = "Close </pre><script>alert(\"x\")</script> & <b>bold</b>\x00 'quoted'"


def make_report() -> dict:
    summary_values = {
        "validation_loss": 2.5, "perplexity": 12.18, "stop_rate": 0.5, "empty_answers": 0.0,
        "code_when_expected": 0.0, "code_blocks": 0, "code_parse_rate": None, "rouge_l": 0.25,
        "mean_answer_tokens": 12.0, "tokens_per_second": 99.5,
    }  # fmt: skip
    prompts = ["[INST] How do I reverse a list? [/INST]", f"[INST] {HOSTILE} [/INST]", "[INST] Third [/INST]"]
    items = []
    for number, prompt in enumerate(prompts):
        answers = {
            "base": {
                "text": f"base answer {number}\n\nwith a gap\n```py\"><b a='\n1\n```",
                "new_tokens": 16, "stopped": False,
            },
            "fine-tuned": {
                "text": f"Use this:\n\n```python\nitems[::-1]  # {number}\n```\n\n{HOSTILE}",
                "new_tokens": 9, "stopped": True, "rouge_l": 0.5,
            },
        }  # fmt: skip
        reference = None if number == 2 else "Use `items[::-1]`."
        items.append(
            {"kind": f"example {number}", "prompt": prompt, "reference": reference, "answers": answers}
        )
    return {
        "run": "unit",
        "examples": {"validation": 2, "hand_written": 1},
        "decoding": {"max_new_tokens": 16, "do_sample": False, "repetition_penalty": 1.3},
        "summary": {"base": summary_values, "fine-tuned": {**summary_values, "stop_rate": 1.0}},
        "items": items,
    }


def test_html_is_well_formed_and_holds_every_prompt_and_answer_escaped():
    report = make_report()
    page = etree.fromstring(html_report(report).encode("utf-8"))  # strict XML: every tag closed
    assert page.tag == "html" and not page.findall(".//script")
    body = page.find("body")
    children = [child.tag for child in body]
    assert children.index("table") < children.index("section")  # the summary comes first
    cells = [cell.text for cell in body.find("table").iter("td")]
    assert "n/a" in cells and "99.5" in cells and "1.0" in cells

    sections = body.findall("section")
    assert len(sections) == len(report["items"])
    for section, item in zip(sections, report["items"], strict=True):
        assert section.find("pre[@class='prompt']").text == item["prompt"].replace("\x00", "\ufffd")
        columns = section.find("div[@class='columns']")
        assert len(columns) == 2  # the two answers side by side
        tuned_code = columns[1].find("pre/code[@class='language-python']")  # the fence's language
        assert tuned_code is not None and tuned_code.text.startswith("items[::-1]")
        assert "with a gap" in "".join(columns[0].itertext())
        assert columns[0].find("pre/code").get("class") == "language-pyb"  # a hostile language tag, cleaned
        assert (section.find("details") is None) == (item["reference"] is None)


def test_markdown_has_the_summary_then_every_prompt_with_both_answers():
    report = make_report()
    markdown = markdown_report(report)
    stop_row = "| stop rate (an answer, then EOS before the limit) | 0.5 | 1.0 |"
    assert markdown.index(stop_row) < markdown.index("## 1.")
    for number, item in enumerate(report["items"], 1):
        assert f"## {number}. {item['kind']}" in markdown
    assert "How do I reverse a list?" in markdown
    assert "</pre><script>" not in markdown and '&lt;/pre&gt;&lt;script&gt;alert("x")' in markdown
    # Each <pre> opens its own line, so Markdown viewers keep it raw even across blank lines.
    assert all(line.startswith("<pre>") for line in markdown.splitlines() if "<pre>" in line)
    assert markdown.count("<table>") == markdown.count("</table>") == len(report["items"])


def test_summary_table_has_one_row_per_metric_and_a_column_per_model():
    table = summary_table(make_report()["summary"]).splitlines()
    assert table[0] == "| metric | base | fine-tuned |"
    assert "| Python code blocks that parse | n/a | n/a |" in table
    assert len(table) == 2 + 10


def test_both_reports_state_every_decoding_setting():
    greedy = make_report()
    for text in (markdown_report(greedy), html_report(greedy)):
        assert "decoding: greedy (do_sample false), repetition_penalty 1.3, max_new_tokens 16" in text
    sampled = {**greedy, "decoding": decoding_settings(InferenceConfig(do_sample=True, seed=5))}
    stated = (
        "decoding: sampling (do_sample true, temperature 0.7, top_p 0.9, seed 5), repetition_penalty 1.0, "
        "max_new_tokens 128"
    )
    for text in (markdown_report(sampled), html_report(sampled)):
        assert stated in text


def test_the_decoding_settings_are_those_that_decide_the_answers():
    assert decoding_settings(InferenceConfig(repetition_penalty=1.3)) == {
        "max_new_tokens": 128, "do_sample": False, "repetition_penalty": 1.3,
    }  # fmt: skip
    assert set(decoding_settings(InferenceConfig(do_sample=True))) == {
        "max_new_tokens", "do_sample", "repetition_penalty", "temperature", "top_p", "seed",
    }  # fmt: skip
