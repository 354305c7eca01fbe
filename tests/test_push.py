"""Push pieces on their own: the file allowlist, the adapter config for the Hub, cards, retries, errors."""

from __future__ import annotations

import json

import httpx2
import pytest
from huggingface_hub import DatasetCard, ModelCard
from huggingface_hub.errors import HfHubHTTPError

from core.errors import UserError
from core.hub import with_retries
from core.prompts import render_prompt
from core.runs import RunPaths, write_json_atomic
from data_prep.push import card_with_hub_metadata
from fine_tune.card import base_hub_id, model_card
from fine_tune.push import adapter_config_for_hub, files_to_push
from tests.conftest import smoke_config

PUSHABLE = [
    "adapter_config.json", "adapter_model.safetensors", "added_tokens.json", "chat_template.jinja",
    "config.json", "generation_config.json", "merges.txt", "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors", "model.safetensors.index.json", "special_tokens_map.json",
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
]  # fmt: skip
NEVER_PUSHED = [
    "training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "pytorch_model.bin",
    "trainer_state.json", "README.md", "events.out.tfevents.1700000000.host", "train.log", "model.pkl",
]  # fmt: skip


def http_error(status: int) -> HfHubHTTPError:
    request = httpx2.Request("POST", "https://hub.example/api/repos/create")
    return HfHubHTTPError(f"{status} error", response=httpx2.Response(status, request=request))


def test_only_allowlisted_top_level_files_are_pushed(tmp_path):
    for name in PUSHABLE + NEVER_PUSHED:
        (tmp_path / name).write_text("x")
    for folder in ("checkpoint-3", "logs", "runs"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "adapter_model.safetensors").write_text("x")
    assert [path.name for path in files_to_push(tmp_path)] == sorted(PUSHABLE)


def test_the_pushed_adapter_config_names_a_hub_base_and_keeps_the_rest(tmp_path):
    local = {"base_model_name_or_path": ".cache/base/llama-64h2l-abc", "r": 8, "revision": None}
    (tmp_path / "adapter_config.json").write_text(json.dumps(local))
    pushed = json.loads(adapter_config_for_hub(tmp_path, "user/x-base", "v1"))
    assert pushed == {"base_model_name_or_path": "user/x-base", "r": 8, "revision": "v1"}


def test_the_base_a_hub_user_loads(tmp_path):
    embedded = smoke_config(tmp_path)
    assert base_hub_id(embedded, "user/x") == "user/x-base"
    assert base_hub_id(embedded, None) is None
    hub_base = smoke_config(tmp_path, "model.name_or_path=meta-llama/Llama-2-7b-hf")
    assert base_hub_id(hub_base, "user/x") == "meta-llama/Llama-2-7b-hf"
    local_base = smoke_config(tmp_path, f"model.name_or_path={tmp_path}")
    assert base_hub_id(local_base, "user/x") is None


def test_transient_failures_are_retried_until_the_push_succeeds():
    failures = [http_error(503), httpx2.ConnectError("connection reset"), http_error(429)]
    calls = []

    def push() -> str:
        calls.append(len(calls))
        if failures:
            raise failures.pop(0)
        return "commit-url"

    assert with_retries(push, "the adapter", "user/x", first_wait=0) == "commit-url"
    assert len(calls) == 4


@pytest.mark.parametrize(
    ("status", "message", "calls"),
    [
        (401, "the Hub refused the token while pushing the adapter to user/x (401): set HF_TOKEN", 1),
        (403, "the token may not write to user/x (403): use a token with write access to user", 1),
        (404, "user/x not found while pushing the adapter (404): check the repo id", 1),
        (500, "pushing the adapter to user/x failed 3 times (HTTP 500)", 3),
    ],
)
def test_failures_left_are_one_line_naming_the_repo(status, message, calls):
    attempts = []

    def push() -> None:
        attempts.append(1)
        raise http_error(status)

    with pytest.raises(UserError) as caught:
        with_retries(push, "the adapter", "user/x", attempts=3, first_wait=0)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert len(attempts) == calls


def test_model_card_metadata_hyperparameters_results_prompt_and_snippet(tmp_path):
    config = smoke_config(tmp_path, "hub.dataset_repo=user/data")
    reports = RunPaths.of(config).reports
    write_json_atomic(reports / "train_report.json", {"steps": 6, "eval_loss": 1.5, "final_train_loss": 1.7})
    summary = {"base": {"validation_loss": 2.0}, "fine-tuned": {"validation_loss": 1.5}}
    write_json_atomic(reports / "compare.json", {"summary": summary})
    text = model_card(config, "adapter", "user/x", "user/x-base", "llama2")
    card = ModelCard(text)
    assert card.data.base_model == "user/x-base" and card.data.library_name == "peft"
    assert card.data.license == "llama2" and card.data.datasets == ["user/data"]
    assert card.data.pipeline_tag == "text-generation" and {"trl", "sft", "qlora"} <= set(card.data.tags)
    assert render_prompt("{question}", config.data.system_prompt) in card.text
    assert "| learning_rate | 0.001 |" in card.text and "| LoRA | r 8, alpha 16," in card.text
    assert "| eval_loss | 1.5 |" in card.text and "| validation_loss | 2.0 | 1.5 |" in card.text
    assert 'AutoPeftModelForCausalLM.from_pretrained("user/x")' in card.text
    assert (
        model_card(config, "adapter", "user/x", "user/x-base", "llama2") == text
    )  # pushing again: no change


def test_the_dataset_card_keeps_the_metadata_that_load_dataset_reads(tmp_path):
    pushed = tmp_path / "README.md"
    pushed.write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n"
        "dataset_info:\n  splits:\n  - name: train\n    num_examples: 3\n---\n# Generated\n"
    )
    ours = "---\nlicense: cc-by-sa-3.0\n---\n# Our card\n\nThe body.\n"
    card = DatasetCard(card_with_hub_metadata(ours, pushed))
    assert card.text == DatasetCard(ours).text
    assert card.data.license == "cc-by-sa-3.0"
    assert card.data.configs[0]["data_files"][0]["path"] == "data/train-*"
    assert card.data.dataset_info["splits"][0]["num_examples"] == 3
