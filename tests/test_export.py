"""`make export`: GGUF files made with llama.cpp's own tools and checked through llama.cpp (llama-cpp-python,
which `make test` installs with requirements-export.txt), on the smoke run; the pure parts alone.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.config import InferenceConfig
from core.errors import UserError
from core.model import chat_format, load_tokenizer
from core.prompts import Llama2Format, PlainTextFormat
from export.check import answer_nll, common_prefix, first_difference, perplexity
from export.gguf import converter_failure
from export.modelfile import modelfile, ollama_template
from synthetic.llama import LLAMA2_TOKENIZER
from tests.conftest import run_stage
from tests.test_e2e import assert_one_error

SYSTEM = "You are a careful Python tutor."
LLAMA2 = Llama2Format()
TOKENIZER_TRACEBACK = """INFO:hf-to-gguf:Set model tokenizer
Traceback (most recent call last):
  File "convert_hf_to_gguf.py", line 290, in main
  File "conversion/llama.py", line 52, in set_vocab
    self._set_vocab_gpt2()
  File "conversion/base.py", line 1460, in get_vocab_base_pre
    raise NotImplementedError("BPE pre-tokenizer was not recognized - update get_vocab_base_pre()")
NotImplementedError: BPE pre-tokenizer was not recognized - update get_vocab_base_pre()
"""


def test_answer_nll_and_perplexity_from_logits():
    ids = [1, 2, 3, 0]
    uniform = np.zeros((4, 4))
    assert answer_nll(uniform, ids, 2) == pytest.approx([math.log(4)] * 2)
    certain = np.full((4, 4), -1e4)
    certain[np.arange(3), ids[1:]] = 0.0  # logits[i] puts everything on ids[i + 1]
    assert answer_nll(certain, ids, 1) == pytest.approx([0, 0, 0])
    assert perplexity([answer_nll(uniform, ids, 1)]) == pytest.approx(4)


def test_first_difference_names_the_position_and_the_ids():
    assert common_prefix([1, 2, 3], [1, 2, 3]) == 3
    assert first_difference([1, 5, 6, 7], [1, 5, 9]) == {"position": 2, "ours": [6, 7], "gguf": [9]}


def test_a_tokenizer_the_converter_cannot_read_is_named_in_one_line():
    folder = Path("runs/x/merged")
    assert converter_failure(folder, TOKENIZER_TRACEBACK) == (
        "llama.cpp's converter cannot convert the tokenizer of runs/x/merged: NotImplementedError: BPE "
        "pre-tokenizer was not recognized - update get_vocab_base_pre()"
    )
    other = "Traceback ...\nNotImplementedError: Architecture 'BertModel' not supported!\n"
    assert converter_failure(folder, other) == (
        "llama.cpp's converter failed on runs/x/merged: NotImplementedError: Architecture 'BertModel' not "
        "supported!"
    )


def test_modelfile_gives_the_system_prompt_stops_and_decoding():
    text = modelfile("r-Q4_K_M.gguf", SYSTEM, LLAMA2, 1024, InferenceConfig(), ["r-Q8_0.gguf"])
    lines = text.splitlines()
    assert "FROM ./r-Q4_K_M.gguf" in lines and "# Or FROM ./r-Q8_0.gguf" in lines
    assert f'SYSTEM """{SYSTEM}"""' in lines
    assert {'PARAMETER stop "</s>"', 'PARAMETER stop "[INST]"', "PARAMETER num_ctx 1024"} <= set(lines)
    assert "PARAMETER temperature 0" in lines  # greedy, as make infer's default
    assert f'TEMPLATE """{ollama_template(LLAMA2)}"""' in text
    sampled = InferenceConfig(do_sample=True, temperature=0.5, top_p=0.8, seed=3)
    blank = modelfile("r.gguf", "  ", LLAMA2, 64, sampled, []).splitlines()
    assert not [line for line in blank if line.startswith("SYSTEM")]
    assert {"PARAMETER temperature 0.5", "PARAMETER top_p 0.8", "PARAMETER seed 3"} <= set(blank)
    with pytest.raises(UserError, match='data.system_prompt holds """'):
        modelfile("r.gguf", 'say """hi"""', LLAMA2, 64, sampled, [])


# ---- through llama.cpp ----------------------------------------------------------------------------------
# conftest.py's llama2_exported: the smoke run's curated data, and as its merged model a small random Llama
# with Meta's Llama-2 tokenizer (the 7B profile's): the tokenizer llama.cpp must reproduce.


@pytest.fixture
def exported(llama2_exported):
    return llama2_exported


@pytest.mark.e2e
def test_export_writes_checked_gguf_files_and_a_modelfile(exported):
    _, run, result = exported
    files = sorted(path.name for path in (run / "gguf").iterdir())
    assert files == ["Modelfile", "smoke-F16.gguf", "smoke-Q4_K_M.gguf", "smoke-Q8_0.gguf"]
    assert not list(run.glob(".gguf.*"))  # no staging folder left
    report = json.loads((run / "reports" / "export_check.json").read_text())
    assert report["passed"] and report["tokenizer"]["passed"] and report["chat_template"]["passed"]
    assert report["tokenizer"]["identical"] == report["tokenizer"]["texts"] == 2 * 8 + 1
    assert report["tokenizer"]["special_token_ids"] == {"bos": [1, 1], "eos": [2, 2]}
    assert report["chat_template"] == {**report["chat_template"], "identical": 4, "stop": ["</s>"]}
    sixteen = report["sixteen_bit"]
    assert sixteen["file"] == "smoke-F16.gguf" and sixteen["passed"] and sixteen["prompts"] == 4
    assert sixteen["max_abs_logit_difference"] <= sixteen["tolerance"] == 0.05
    perplexities = report["perplexity"]
    assert perplexities["F16"] == pytest.approx(perplexities["merged model (transformers)"], rel=1e-3)
    assert (
        set(report["quantized"])
        == set(perplexities) - {"F16", "merged model (transformers)", "validation_examples"}
        == {"Q8_0", "Q4_K_M"}
    )
    assert 0.5 < report["quantized"]["Q8_0"]["greedy_token_agreement_with_16_bit"] <= 1
    assert "export check passed" in result.stderr
    assert "FROM ./smoke-Q4_K_M.gguf" in (run / "gguf" / "Modelfile").read_text()


@pytest.mark.e2e
def test_llama_cpp_chats_with_the_4_bit_file_in_the_trained_format(exported):
    from llama_cpp import Llama

    from core.patches import llama_cpp_without_amx

    _, run, _ = exported
    with llama_cpp_without_amx():  # docs/cpus.md: llama.cpp's AMX kernels crash on this small model
        llm = Llama(model_path=str(run / "gguf" / "smoke-Q4_K_M.gguf"), n_ctx=512, verbose=False)
    question = "How do I reverse a list in Python?"
    answer = llm.create_chat_completion([{"role": "user", "content": question}], max_tokens=4, temperature=0)
    expected = llm.tokenize(("<s>" + LLAMA2.prompt(question)).encode(), add_bos=False, special=True)
    assert answer["usage"]["prompt_tokens"] == len(expected)
    llm.close()


def copy_run(run: Path, tmp_path: Path) -> Path:
    """A run's dataset and merged model in a new output folder, to damage."""
    target = tmp_path / "runs" / "smoke"
    for name in ("dataset", "merged"):
        shutil.copytree(run / name, target / name)
    return target


@pytest.mark.e2e
def test_a_failing_check_leaves_no_gguf_folder_and_says_why_in_one_line(exported, tmp_path):
    tmp, run, _ = exported
    target = copy_run(run, tmp_path)
    template = target / "merged" / "chat_template.jinja"  # another chat format than the one trained
    template.write_text(template.read_text().replace("[INST]", "[USER]"))
    result = run_stage("export", tmp, "--set", f"run.output_dir={tmp_path / 'runs'}", check=False)
    assert_one_error(result, "error: export check failed: the GGUF's chat template renders another prompt")
    assert not (target / "gguf").exists() and not list(target.glob(".gguf.*"))
    report = json.loads((target / "reports" / "export_check.json").read_text())
    assert report["passed"] is False and report["chat_template"]["identical"] == 0


@pytest.mark.e2e
def test_a_tokenizer_llama_cpp_cannot_convert_is_one_line(exported, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tmp, run, _ = exported
    target = copy_run(run, tmp_path)
    vocab = json.loads((target / "merged" / "tokenizer.json").read_text())["model"]["vocab"]
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level.save(str(target / "merged" / "tokenizer.json"))
    result = run_stage("export", tmp, "--set", f"run.output_dir={tmp_path / 'runs'}", check=False)
    merged = target / "merged"
    assert_one_error(result, f"error: llama.cpp's converter cannot convert the tokenizer of {merged}: ")
    assert not (target / "gguf").exists()


@pytest.mark.e2e
def test_the_smoke_runs_own_model_exports_and_llama_cpp_agrees(pipeline, tmp_path):
    """The embedded base's tokenizer is one llama.cpp reproduces (no pre-tokenizer, merges ranked as
    SentencePiece ranks pieces), so the smoke run's merged model exports, checked token for token."""
    pytest.importorskip("llama_cpp", reason="make test installs requirements-export.txt")
    run = tmp_path / "runs" / "smoke"
    for folder in ("dataset", "merged"):
        shutil.copytree(pipeline[1] / folder, run / folder)
    (tmp_path / "base").symlink_to(pipeline[0] / "base")
    run_stage("export", tmp_path)
    report = json.loads((run / "reports" / "export_check.json").read_text())
    assert report["passed"] and report["tokenizer"]["identical"] == report["tokenizer"]["texts"] == 17
    assert report["chat_template"]["identical"] == 4
    assert report["sixteen_bit"]["identical_greedy_answers"] == 4


@pytest.mark.e2e
def test_export_needs_the_merged_model(tmp_path):
    result = run_stage("export", tmp_path, check=False)
    assert_one_error(result, "error: merged model not found at")


@pytest.mark.e2e
def test_gguf_files_go_to_the_gguf_repo_with_a_card(exported):
    from huggingface_hub import ModelCard

    from tests.hub_server import HubServer
    from tests.test_hub import TOKEN, client_env

    tmp, run, _ = exported
    with HubServer(TOKEN) as hub:
        env = client_env(hub, tmp / "hf-home")
        repo = ["--set", "hub.model_repo=user/smoke"]
        skipped = run_stage("export.push", tmp, *repo, env=env)
        assert "GGUF push skipped: hub.push_gguf is false" in skipped.stderr and not hub.state.repos
        run_stage("export.push", tmp, *repo, "--set", "hub.push_gguf=true", env=env)
        files = hub.state.files("model", "user/smoke-gguf")
    local = {path.name: path.read_bytes() for path in (run / "gguf").iterdir()}
    assert {name: files[name] for name in local} == local
    card = ModelCard(files["README.md"].decode())
    assert {"gguf", "ollama"} <= set(card.data.tags)
    for expected in ("llama-cli -m smoke-Q4_K_M.gguf --jinja", "ollama create smoke -f Modelfile", "[INST]"):
        assert expected in card.text, expected


# Ollama renders a TEMPLATE that uses .Messages with Go's text/template, given `System` (the system messages
# joined) and `Messages` (every message, the system ones included), as its template/template.go does.
OLLAMA_RENDER = """package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct{ Role, Content string }
type Case struct {
	Template string
	Messages []Message
}

func main() {
	var cases []Case
	json.NewDecoder(os.Stdin).Decode(&cases)
	var out []string
	for _, c := range cases {
		tmpl := template.Must(template.New("").Option("missingkey=zero").Parse(c.Template))
		var system []string
		for _, m := range c.Messages {
			if m.Role == "system" {
				system = append(system, m.Content)
			}
		}
		var b strings.Builder
		joined := strings.Join(system, "\\n\\n")
		data := map[string]any{"System": joined, "Messages": c.Messages, "Response": ""}
		if err := tmpl.Execute(&b, data); err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""


def test_the_modelfile_template_renders_our_prompts_in_go_as_ollama_does(tmp_path):
    """The TEMPLATE executed by Go's text/template (`go`, Debian's golang-go, where installed), for Meta's
    Llama-2 format, for Llama-3's chat template read as the run's format, and for Firefly's (no system)."""
    import subprocess

    from tests.test_prompts import llama3_format

    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed (apt-get install golang-go)")
    history = [("How do I reverse a list?", "Use `items[::-1]`."), ("And a tuple?", "The same: `t[::-1]`.")]
    cases, expected = [], []
    firefly = chat_format(load_tokenizer(str(LLAMA2_TOKENIZER), prompt_format="firefly"))
    formats = [*itertools.product((LLAMA2, llama3_format()), (SYSTEM, None)), (firefly, None)]
    for chat, system in formats:
        for turns in ([], history[:1], history):
            messages = [{"Role": "system", "Content": system}] if system else []
            for question, answer in turns:
                messages += [{"Role": "user", "Content": question}, {"Role": "assistant", "Content": answer}]
            final = {"Role": "user", "Content": "And a string?"}
            cases.append({"Template": ollama_template(chat), "Messages": [*messages, final]})
            expected.append(chat.prompt("And a string?", system, turns))
    (tmp_path / "main.go").write_text(OLLAMA_RENDER)
    request = json.dumps(cases)
    env = {"HOME": str(tmp_path), "GOCACHE": str(tmp_path / "cache"), "GOPATH": str(tmp_path / "go"),
           "GO111MODULE": "off", "PATH": "/usr/bin:/bin"}  # fmt: skip
    result = subprocess.run(
        [go, "run", str(tmp_path / "main.go")],
        input=request,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == expected


def test_a_plain_text_modelfile_sends_the_text_as_typed_and_stops_at_eos():
    text = modelfile("model.gguf", None, PlainTextFormat("</s>"), 512, InferenceConfig(), [])
    assert 'TEMPLATE """{{ .Prompt }}"""' in text
    assert 'PARAMETER stop "</s>"' in text and "SYSTEM" not in text
