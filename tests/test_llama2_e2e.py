"""Llama-2 itself, offline: every stage on a random tiny Llama-2-shaped base with Meta's tokenizer
(tests/conftest.py's llama2_base_dir: vocabulary 32,000, float16 weights, Meta's tokenizer files as
published), run as a user runs them with model.name_or_path=<folder>: curation with the length rule, QLoRA
training, the merge and its self-check, infer and compare, then push and download through the local Hub
server. What inference, chat and compare send is checked token for token against what training saw.

The SFTTrainer's own checks on this base (one BOS, the prompt's ids a prefix of the prompt + completion's,
the last label EOS, the loss mask) run over every curated row in tests/test_prompts.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.model import prompt_ids as prompt_ids_of
from core.prompts import render_prompt
from tests.conftest import LLAMA2_RUN, base_stage, curated_rows, sft_examples, smoke_config
from tests.hub_server import Blob, HubServer, Repo
from tests.test_hub import TOKEN, against, assert_local_outputs, download

pytestmark = pytest.mark.e2e

UNK, EOS = 0, 2
# Where the base lives on the local Hub, as meta-llama/Llama-2-7b-hf does for the 7B profile.
HUB_BASE = "test/tiny-llama-2"
ADAPTER, MERGED, DATASET = "user/llama2-smoke", "user/llama2-smoke-merged", "user/llama2-smoke-data"


@pytest.fixture(scope="module")
def run(llama2_curated: Path, llama2_base_dir: Path) -> Path:
    """The curated Llama-2-shaped run, trained and merged: its run folder."""
    for module in ("fine_tune.train", "fine_tune.merge"):
        base_stage(module, llama2_curated, llama2_base_dir)
    return llama2_curated / "runs" / "smoke"


def user_turn(prompt: str, system: str | None) -> str:
    """The user's text of a curated row's prompt."""
    opening, closing = render_prompt("\0", system).split("\0")
    assert prompt.startswith(opening) and prompt.endswith(closing)
    return prompt[len(opening) : -len(closing)]


def prompt_ids(example: dict) -> list[int]:
    """The prompt's ids in a prepared training example: those before the first supervised label."""
    first = next(index for index, label in enumerate(example["labels"]) if label != -100)
    return example["input_ids"][:first]


def test_the_length_rule_counts_llama2_tokens(llama2_curated, llama2_tokenizer):
    stats = json.loads((llama2_curated / "runs" / "smoke" / "dataset" / "stats.json").read_text())
    lengths = [  # BOS, prompt and completion, then the EOS the trainer appends
        len(llama2_tokenizer(row["prompt"] + row["completion"])["input_ids"]) + 1
        for row in curated_rows(llama2_curated)
    ]
    assert stats["dropped"]["longer than train.max_length"] > 0  # the sample data crosses the limit
    assert max(lengths) == stats["token_lengths"]["max"] <= 256


def test_training_adapts_only_lora_and_the_merge_keeps_the_vocabulary_and_pad(run):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert json.loads((run / "reports" / "train_report.json").read_text())["steps"] == 4
    with safe_open(run / "adapter" / "adapter_model.safetensors", "pt") as weights:
        names = list(weights.keys())
    assert names and all(".lora_A." in name or ".lora_B." in name for name in names)  # no embedding saved
    assert json.loads((run / "reports" / "merge_check.json").read_text())["passed"]
    merged = AutoModelForCausalLM.from_pretrained(run / "merged")
    assert merged.get_input_embeddings().weight.shape[0] == merged.lm_head.weight.shape[0] == 32000
    assert merged.generation_config.eos_token_id == EOS
    for folder in ("adapter", "merged"):
        tokenizer = AutoTokenizer.from_pretrained(run / folder)
        assert (tokenizer.pad_token, tokenizer.pad_token_id, tokenizer.eos_token_id) == ("<unk>", UNK, EOS)
        assert len(tokenizer) == 32000


def test_infer_chat_and_compare_send_what_training_saw(run, llama2_base_dir, tmp_path):
    """For every curated row, the ids that infer sends for its question (with the merged model, base +
    adapter, and the base) and those chat sends are the prompt ids training saw, and compare scores the
    ids and labels training learned from. A chat's earlier turn is its training sequence, EOS included."""
    from core.model import load_tokenizer
    from inference.chat import fitted_prompt
    from inference.generate import generate_ids
    from inference.loading import load_model
    from inference.metrics import completion_labels
    from inference.models import resolve_model

    config = smoke_config(run.parent.parent, f"model.name_or_path={llama2_base_dir}", *LLAMA2_RUN[1::2])
    rows = curated_rows(run.parent.parent)
    examples, _ = sft_examples(llama2_base_dir, load_tokenizer(str(llama2_base_dir)), rows, tmp_path)
    trained = [prompt_ids(example) for example in examples]
    system = config.data.system_prompt
    users = [user_turn(row["prompt"], system) for row in rows]
    one_token = config.inference.model_copy(update={"max_new_tokens": 1})
    prompts = [render_prompt(user, system) for user in users]
    for name in ("new_model", str(run / "adapter"), "base"):
        model, tokenizer = load_model(resolve_model(config, name), config)
        assert [ids for ids, _ in generate_ids(model, tokenizer, prompts, one_token)] == trained, name
        chat = [fitted_prompt(tokenizer, user, system, [], 4096, one_token)[0] for user in users]
        assert [prompt_ids_of(tokenizer, prompt) for prompt in chat] == trained, name
        follow_up, _ = fitted_prompt(tokenizer, users[1], system, [(users[0], rows[0]["completion"])], 4096,
                                     one_token)  # fmt: skip
        next_turn = tokenizer(render_prompt(users[1]))["input_ids"]
        assert prompt_ids_of(tokenizer, follow_up) == examples[0]["input_ids"] + next_turn, name
        for row, example in zip(rows, examples, strict=True):
            scored = completion_labels(tokenizer, row["prompt"], row["completion"])
            assert scored == (example["input_ids"], example["labels"]), name


def test_infer_and_compare_run_as_a_user_runs_them(run, llama2_base_dir):
    tmp = run.parent.parent
    question = ("--model", "new_model", "--prompt", "How do I reverse a list in Python?")
    answered = base_stage("inference", tmp, llama2_base_dir, *question)
    assert answered.stdout.strip() and "[INST]" not in answered.stdout
    # make eval's HumanEval run, which compare also does, runs in test_e2e.py; here it would only add time
    base_stage("inference.compare", tmp, llama2_base_dir, "--set", "eval.with_compare=false")
    summary = json.loads((run / "reports" / "compare.json").read_text())["summary"]
    assert summary["fine-tuned"]["validation_loss"] < summary["base"]["validation_loss"]


@pytest.fixture(scope="module")
def hub(llama2_base_dir: Path):
    """The local Hub server, holding the base as a user's Hub base: its files and a card with its license."""
    with HubServer(TOKEN) as server:
        repo = Repo("model", HUB_BASE, private=False)
        server.state.repos[("model", HUB_BASE)] = repo
        files = {
            path.name: Blob(path.read_bytes(), path.suffix == ".safetensors")
            for path in llama2_base_dir.iterdir()
        }
        files["README.md"] = Blob(b"---\nlicense: llama2\n---\n# A tiny random Llama-2\n", lfs=False)
        server.state.commit(repo, "main", files, "initial commit")
        yield server


def test_push_and_download_through_the_local_hub(run, hub, llama2_base_dir):
    """The adapter names its Hub base (the local folder is only this machine's), the merged model and the
    dataset go along, and what a Hub user downloads gives the local logits and rows."""
    from datasets import load_from_disk
    from huggingface_hub import ModelCard

    tmp, outputs = run.parent.parent, []
    against(hub, outputs, tmp, "fine_tune.push", *LLAMA2_RUN, "--set", f"model.name_or_path={HUB_BASE}",
            "--set", f"hub.model_repo={ADAPTER}", "--set", "hub.push_merged=true",
            "--set", f"hub.dataset_repo={DATASET}")  # fmt: skip
    against(hub, outputs, tmp, "data_prep.push", *LLAMA2_RUN, "--set", f"hub.dataset_repo={DATASET}")
    assert ("model", f"{ADAPTER}-base") not in hub.state.repos  # a Hub base is never pushed again
    assert json.loads(hub.state.files("model", ADAPTER)["adapter_config.json"])[
        "base_model_name_or_path"
    ] == (HUB_BASE)
    assert ModelCard(hub.state.files("model", ADAPTER)["README.md"].decode()).data.license == "llama2"

    downloaded = download(hub, outputs, tmp, ADAPTER, MERGED, DATASET)
    assert_local_outputs(downloaded, llama2_base_dir, run, HUB_BASE)
    local = load_from_disk(str(run / "dataset" / "data"))
    remote = json.loads((downloaded / "rows.json").read_text())
    assert remote == {split: local[split].to_list() for split in ("train", "validation")}
    assert not [text for text in outputs if TOKEN in text]
