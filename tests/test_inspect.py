"""`make inspect`: what it shows is exactly what the trainer gets, and what infer sends."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_stage, smoke_config

pytestmark = pytest.mark.e2e


def inspect_json(curated, *extra: str) -> list[dict]:
    result = run_stage("fine_tune.inspect_rows", curated, "--format", "json", *extra)
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize("packing", ["false", "true"])
def test_json_rows_are_the_trainers_own_batches(curated, packing, request):
    from datasets import disable_caching, enable_caching, load_from_disk
    from trl import SFTTrainer

    from core.model import base_tokenizer
    from core.runs import RunPaths
    from fine_tune.train import load_quantized_model, sft_config

    disable_caching()  # as training does: no cache files in the curated dataset other tests copy
    request.addfinalizer(enable_caching)
    config = smoke_config(curated, f"train.packing={packing}")
    dataset = load_from_disk(str(RunPaths.of(config).dataset / "data"))
    trainer = SFTTrainer(
        model=load_quantized_model(config, str(curated / "base" / next((curated / "base").iterdir()).name)),
        args=sft_config(config, curated / "inspect-checkpoints"),
        train_dataset=dataset["train"],
        eval_dataset=dataset["validation"],
        processing_class=base_tokenizer(config),
    )
    rows = inspect_json(curated, "--rows", "3", "--set", f"train.packing={packing}")
    assert [row["row"] for row in rows] == [0, 1, 2]
    assert rows[0]["rows"] == len(trainer.train_dataset)
    for row in rows:
        batch = trainer.data_collator([trainer.train_dataset[row["row"]]])
        per_token = {key: tensor for key, tensor in batch.items() if getattr(tensor, "ndim", 0) == 2}
        assert set(row) == {"row", "rows", "input_ids", "labels", *per_token}
        for key, tensor in per_token.items():  # and attention_mask, or position_ids when packed
            assert row[key] == tensor[0].tolist(), key
        assert packing == "false" or "position_ids" in row
    (one,) = inspect_json(curated, "--row", "2", "--set", f"train.packing={packing}")
    assert one == rows[2]


def test_prompt_ids_are_what_infer_sends(curated):
    from core.config import InferenceConfig
    from inference.generate import generate_ids
    from inference.loading import load_model, model_chat_format
    from inference.models import resolve_model

    config = smoke_config(curated)
    prompt = "How do I reverse a list in Python?"
    (shown,) = inspect_json(curated, "--prompt", prompt)
    source = resolve_model(config, "base")
    model, tokenizer = load_model(source, config)
    rendered = model_chat_format(config, source).prompt(prompt, config.data.system_prompt)
    ((sent, _),) = generate_ids(model, tokenizer, [rendered], InferenceConfig(max_new_tokens=1))
    assert shown["input_ids"] == sent


def test_text_rows_show_each_token_its_id_and_whether_it_is_in_the_loss(curated):
    result = run_stage("fine_tune.inspect_rows", curated, "--row", "0")
    header, example, tokens, *_ = result.stdout.splitlines()
    assert header.startswith("row 0 of ") and "in the loss" in header
    assert example.startswith("-- example 1: tokens 0-")
    assert tokens.startswith("<s>:1 ") and "[</s>:2]" in tokens  # BOS is context, the closing EOS is learnt
    assert "\033[" not in result.stdout  # piped: no colour codes
    assert not list((curated / "runs" / "smoke" / "dataset").resolve().rglob("cache-*"))  # as curated
    bad = run_stage("fine_tune.inspect_rows", curated, "--row", "100000", check=False)
    assert bad.returncode == 1 and bad.stderr.strip().startswith("error: ROW=100000: there are")
