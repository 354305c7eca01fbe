"""The real stages, run as a user runs them (`python -m ...`), on the smoke profile in a temporary folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, SMOKE, STAGES, run_stage

pytestmark = pytest.mark.e2e


def test_base_build_is_deterministic_and_loads_with_auto_classes(pipeline, smoke_base_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp, _ = pipeline
    (built,) = (tmp / "base").iterdir()
    assert built.name == smoke_base_dir.name
    assert (built / "model.safetensors").read_bytes() == (smoke_base_dir / "model.safetensors").read_bytes()
    assert (built / "tokenizer.json").read_bytes() == (smoke_base_dir / "tokenizer.json").read_bytes()
    model = AutoModelForCausalLM.from_pretrained(built)
    tokenizer = AutoTokenizer.from_pretrained(built)
    assert model.config.model_type == "llama"
    assert tokenizer.pad_token is None
    assert (tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token) == ("<unk>", "<s>", "</s>")


def test_dataset_artifacts(pipeline):
    from datasets import load_from_disk

    _, run = pipeline
    dataset = load_from_disk(str(run / "dataset" / "data"))
    assert set(dataset) == {"train", "validation"}
    assert {"prompt", "completion", "source", "source_id"} <= set(dataset["train"].column_names)
    assert len(dataset["validation"]) == 8
    stats = json.loads((run / "dataset" / "stats.json").read_text())
    assert stats["train_rows"] == len(dataset["train"])
    assert stats["kept_by_source"] == {"stackoverflow": 40, "alpaca": 20}
    assert set(stats["dropped"]) == {
        "empty question or answer",
        "longer than train.max_length",
        "duplicate question",
    }
    assert stats["token_lengths"]["p50"] <= stats["token_lengths"]["max"] <= 512
    assert sorted(path.name for path in (run / "dataset").iterdir()) == ["README.md", "data", "stats.json"]
    card = (run / "dataset" / "README.md").read_text()
    assert "CC-BY-SA 3.0" in card
    assert all(row["prompt"].startswith("[INST] <<SYS>>\n") for row in dataset["train"])


def test_curation_is_byte_deterministic(pipeline, tmp_path):
    _, run = pipeline
    again = tmp_path / "again"
    run_stage("data_prep", pipeline[0], "--set", f"run.output_dir={again}")
    for name in ("train", "validation"):
        (first,) = (run / "dataset" / "data" / name).glob("data-*.arrow")
        (second,) = (again / "smoke" / "dataset" / "data" / name).glob("data-*.arrow")
        assert first.read_bytes() == second.read_bytes()


def test_adapter_and_train_report(pipeline):
    _, run = pipeline
    adapter = run / "adapter"
    assert (adapter / "adapter_model.safetensors").stat().st_size > 8_000  # r 8 on q, v of 2 layers, bf16
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    report = json.loads((run / "reports" / "train_report.json").read_text())
    assert report["steps"] == 6
    for key in ("wall_seconds", "tokens_per_second", "peak_rss_mb", "trainable_parameters", "eval_loss"):
        assert report[key] > 0
    assert report["trainable_parameters"] < report["total_parameters"]


def test_the_adapter_names_its_base_so_that_it_loads_from_any_folder(pipeline, tmp_path):
    _, run = pipeline
    adapter = run / "adapter"
    base = Path(json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"])
    assert base.is_absolute() and (base / "config.json").is_file()
    elsewhere = STAGES.run(
        [sys.executable, "-m", "inference", "--config", str(SMOKE), "--model", str(adapter), "--prompt", "?"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert elsewhere.returncode == 0, elsewhere.stderr[-2000:]


def test_merged_model_is_safetensors_and_equals_base_plus_adapter(pipeline):
    from datasets import load_from_disk
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp, run = pipeline
    merged_dir = run / "merged"
    assert list(merged_dir.glob("*.safetensors")) and not list(merged_dir.glob("*.bin"))
    check = json.loads((run / "reports" / "merge_check.json").read_text())
    assert check["passed"]

    (base_dir,) = (tmp / "base").iterdir()
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    rows = load_from_disk(str(run / "dataset" / "data"))["validation"].select(range(3))
    inputs = tokenizer([r["prompt"] + r["completion"] for r in rows], return_tensors="pt", padding=True)
    with torch.no_grad():
        base_plus_adapter = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_dir), run / "adapter"
        )
        expected = base_plus_adapter(**inputs).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir)
        actual = merged(**inputs).logits
        base_only = AutoModelForCausalLM.from_pretrained(base_dir)(**inputs).logits
    mask = inputs["attention_mask"].bool()
    assert torch.allclose(actual[mask], expected[mask], atol=1e-4)
    assert not torch.allclose(base_only[mask], expected[mask], atol=1e-3)  # the adapter changed something
    assert merged.generation_config.eos_token_id == tokenizer.eos_token_id


def test_infer_streams_only_the_answer_for_new_model_and_base(pipeline):
    from core.prompts import render_prompt
    from inference.generate import generate
    from inference.loading import load_model
    from inference.models import resolve_model
    from tests.conftest import smoke_config

    tmp, _ = pipeline
    fine_tuned = run_stage("inference", tmp, "--model", "new_model", "--prompt", "How do I reverse a list?")
    base = run_stage("inference", tmp, "--model", "base", "--prompt", "How do I reverse a list?")
    assert "[INST]" not in fine_tuned.stdout and "[/INST]" not in base.stdout
    config = smoke_config(tmp)
    model, tokenizer = load_model(resolve_model(config, "base"), config)
    prompt = render_prompt("How do I reverse a list?", config.data.system_prompt)
    (expected,) = generate(model, tokenizer, [prompt], config.inference)
    assert base.stdout.strip() == expected.text  # what was streamed is exactly the answer
    assert f"({expected.new_tokens} tokens, " in base.stderr


def test_infer_answers_a_prompts_file_in_batches(pipeline):
    tmp, _ = pipeline
    lines = [
        {"prompt": "How do I reverse a list?"},
        {"prompt": "Sort a dict by value", "system": "Answer in one line."},
        {"prompt": "What is a generator?", "system": None},
    ]
    jsonl = tmp / "prompts.jsonl"
    jsonl.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    result = run_stage("inference", tmp, "--model", "base", "--prompts-file", str(jsonl))
    headers = [line for line in result.stdout.splitlines() if line.startswith("### ")]
    assert headers == [f"### {number}. {line['prompt']}" for number, line in enumerate(lines, 1)]
    assert "[INST]" not in result.stdout and "answering 3 prompts in batches" in result.stderr


def test_chat_keeps_the_conversation_switches_model_and_clears(pipeline):
    tmp, _ = pipeline
    turns = (
        "How do I reverse a list?\n/base\nAnd a tuple?\n/clear\n/nope\n/tuned\nThanks\n/quit\nnever read\n"
    )
    out = run_stage("inference.chat", tmp, stdin=turns).stdout
    order = ["(model: new_model)", "new_model> ", "(model: base)", "base> ", "(conversation cleared)",
             "unknown command /nope", "(model: new_model)", "new_model> "]  # fmt: skip
    position = 0
    for expected in order:
        position = out.index(expected, position) + len(expected)
    assert "[INST]" not in out and "never read" not in out


def test_compare_reports_both_models(pipeline):
    from lxml import etree

    tmp, run = pipeline
    result = run_stage("inference.compare", tmp)
    report = json.loads((run / "reports" / "compare.json").read_text())
    assert set(report["summary"]) == {"base", "fine-tuned"}
    hand_written = sum(1 for line in (REPO / "data" / "compare_prompts.jsonl").open() if line.strip())
    assert report["examples"] == {"validation": 4, "hand_written": hand_written}
    assert len(report["items"]) == 4 + hand_written
    for values in report["summary"].values():
        assert values["validation_loss"] > 0 and 0 <= values["stop_rate"] <= 1
        assert 0 <= values["rouge_l"] <= 1 and values["tokens_per_second"] > 0
    assert report["summary"]["fine-tuned"]["validation_loss"] < report["summary"]["base"]["validation_loss"]
    assert "| validation loss (answer tokens) |" in result.stdout  # the summary table on the terminal
    markdown = (run / "reports" / "compare.md").read_text()
    assert markdown.count("<table>") == len(report["items"])
    page = etree.fromstring((run / "reports" / "compare.html").read_bytes())
    prompts = [pre.text for pre in page.iter("pre") if pre.get("class") == "prompt"]
    assert prompts == [item["prompt"] for item in report["items"]]
    # make compare runs make eval's evaluation on the models it loaded: HumanEval's first six problems
    evaluation = report["evaluation"]
    assert evaluation["problems"]["count"] == 6 and evaluation["styles"] == ["instruct", "completion"]
    assert set(evaluation["summary"]["completion"]) == {"base", "fine-tuned"}
    assert "| style | model | pass@k |" in result.stdout and "Does the code work?" in markdown
    eval_report = json.loads((run / "reports" / "eval.json").read_text())
    assert [item["task_id"] for item in eval_report["items"][:6]] == [f"HumanEval/{i}" for i in range(6)]


def test_eval_runs_a_users_problems_through_the_sandbox_and_keeps_every_program(pipeline, tmp_path):
    from lxml import etree

    from evaluation.sandbox import isolation, run_program

    tmp, run = pipeline
    problems = tmp_path / "mine.jsonl"
    problem = {
        "task_id": "mine/add",
        "prompt": 'def add(a, b):\n    """a + b"""\n',
        "canonical_solution": "    return a + b\n",
        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
        "entry_point": "add",
    }
    problems.write_text(json.dumps(problem) + "\n" + json.dumps({**problem, "task_id": "mine/two"}) + "\n")
    result = run_stage("inference.evaluate", tmp, "--set", f"eval.problems={problems}")
    report = json.loads((run / "reports" / "eval.json").read_text())
    assert report["problems"] == {"source": str(problems), "count": 2}
    assert report["sandbox"]["isolation"] == isolation()
    for style in ("instruct", "completion"):
        for label in ("base", "fine-tuned"):
            summary = report["summary"][style][label]
            assert summary["problems"] == 2 and sum(summary["outcomes"].values()) == 2
            low, high = summary["interval"]
            assert 0 <= low <= summary["passed"] / 2 <= high <= 1
        assert {"difference", "p_value", "b", "c"} <= set(report["paired"][style])
    assert len(report["items"]) == 4
    answer = report["items"][0]["answers"]["fine-tuned"][0]
    assert answer["program"].startswith(problem["prompt"].rstrip()) and answer["program"].endswith(
        "check(add)\n"
    )
    assert run_program(answer["program"]).status == answer["status"]  # anyone can run it again
    assert "| style | model | pass@k |" in result.stdout
    assert "## Per problem" in (run / "reports" / "eval.md").read_text()
    etree.fromstring((run / "reports" / "eval.html").read_bytes())


@pytest.mark.parametrize(
    ("module", "extra", "message"),
    [
        ("fine_tune.train", ["--set", "train.max_stepz=3"], "train.max_stepz: unknown field"),
        ("data_prep", ["--set", "data.alpaca.path=missing.json"], "Alpaca file not found: missing.json"),
        (
            "data_prep",
            ["--set", "run.name=nothing-here", "--set", "train.max_length=16"],
            "rule 'longer than train.max_length' removed all",
        ),
        ("fine_tune.train", ["--set", "run.name=nothing-here"], "curated dataset not found"),
        ("fine_tune.train", ["--set", "train.optim=adamw_torh"], "unknown optimizer 'adamw_torh' (did"),
        ("fine_tune.train", ["--set", "lora.target_modules=[foo_proj]"], "foo_proj not in the base model"),
        ("fine_tune.train", ["--set", "model.name_or_path=./no-such-base"], "the folder ./no-such-base does"),
        ("fine_tune.train", ["--set", "model.name_or_path=org/model"], "HF_HUB_OFFLINE is set"),
        ("fine_tune.train", ["--set", "run.name=.."], "'..' would leave run.output_dir"),
        ("fine_tune.merge", ["--set", "run.name=nothing-here"], "trained adapter not found"),
        ("inference", ["--model", "no/such-model", "--prompt", "hi"], "cannot reach model no/such-model"),
        ("inference", ["--model", "./not-a-folder", "--prompt", "hi"], "unknown model './not-a-folder'"),
        ("inference", ["--model", "base", "--prompt", " "], "empty prompt"),
        ("inference", ["--model", "base", "--prompts-file", "missing.txt"], "prompts file not found"),
        ("inference.chat", ["--model", "nothing/there"], "cannot reach model nothing/there"),
        ("fine_tune.push", [], "push needs a repo id"),
    ],
)
def test_bad_input_gives_one_line_and_exit_1(pipeline, module, extra, message):
    tmp, _ = pipeline
    assert_one_error(run_stage(module, tmp, *extra, check=False), message)
    assert not (tmp / "runs" / "nothing-here").exists()


# What a progress bar leaves in front of the next line: carriage returns and cursor movements.
PROGRESS_BAR_RESIDUE = re.compile(r"^(?:\x1b\[[0-9;]*[A-Za-z]|\s)+")


def assert_one_error(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 1
    lines = [PROGRESS_BAR_RESIDUE.sub("", line) for line in re.split(r"[\r\n]", result.stderr)]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_eval_counts_a_prompt_too_long_for_the_context_as_failed_without_asking_it(pipeline):
    tmp, run = pipeline
    # the smoke base's context is 512 tokens: no prompt leaves room for 500 new ones
    overrides = "eval.max_new_tokens=500 eval.samples=2 eval.pass_at=[1,2] eval.styles=[completion]"
    run_stage("inference.evaluate", tmp, "--sets", overrides)
    report = json.loads((run / "reports" / "eval.json").read_text())
    for summary in report["summary"]["completion"].values():
        assert summary["outcomes"] == {"too_long": 6}
        assert summary["pass@1"] == summary["pass@2"] == 0
    assert all(len(item["answers"]["base"]) == 2 for item in report["items"])
