"""The merged model as `make merge` leaves it: tokenizer, generation config, card, shards, refusals."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from core.config import DEFAULT_SYSTEM_PROMPT, load_config
from core.prompts import messages as messages_of
from core.prompts import render_prompt
from tests.conftest import SMOKE, run_stage

pytestmark = pytest.mark.e2e


def test_the_merged_folder_has_the_chat_template_generation_config_card_and_check(pipeline):
    from huggingface_hub import ModelCard
    from transformers import AutoTokenizer, GenerationConfig

    _, run = pipeline
    merged = run / "merged"
    tokenizer = AutoTokenizer.from_pretrained(merged)
    messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": "Why?"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == "<s>" + render_prompt(
        "Why?", DEFAULT_SYSTEM_PROMPT
    )
    generation = GenerationConfig.from_pretrained(merged)
    assert generation.eos_token_id == tokenizer.eos_token_id
    assert generation.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    profile = load_config(SMOKE, []).inference
    assert (generation.do_sample, generation.temperature, generation.top_p) == (False, None, None)
    assert (generation.max_new_tokens, generation.repetition_penalty) == (
        profile.max_new_tokens,
        profile.repetition_penalty,
    )
    card = ModelCard((merged / "README.md").read_text())
    assert card.data.library_name == "transformers" and "Merge self-check passed" in card.text
    check = json.loads((run / "reports" / "merge_check.json").read_text())
    assert check["passed"] and check["weight_files"] == ["model.safetensors"]
    assert 0 < check["weights_mb"] < check["peak_rss_mb"]


def test_vllm_serve_gets_the_trained_prompt_its_stop_token_and_the_profiles_decoding(pipeline):
    """What `vllm serve runs/<run>/merged` reads, without vLLM: it renders the tokenizer's chat template to
    text and encodes it without adding special tokens, stops on the generation config's EOS, and takes its
    sampling defaults from the generation config. The ids equal the ones training and make serve use."""
    from transformers import AutoTokenizer, GenerationConfig

    from core.model import chat_format, load_tokenizer, prompt_ids

    _, run = pipeline
    merged = run / "merged"
    as_vllm_loads = AutoTokenizer.from_pretrained(merged)
    ours = load_tokenizer(str(merged))
    system, history, user = "Be brief.", [("Sort a list?", "sorted(xs)")], "And a dict by value?"
    messages = messages_of(user, system, history)
    text = as_vllm_loads.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    vllm_ids = as_vllm_loads(text, add_special_tokens=False)["input_ids"]
    assert vllm_ids == prompt_ids(ours, chat_format(ours).rendered_prompt(user, system, history))
    generation = GenerationConfig.from_pretrained(merged)
    assert generation.eos_token_id == ours.eos_token_id and generation.max_new_tokens is not None


def test_the_cards_loading_snippet_runs(pipeline, capsys):
    from huggingface_hub import ModelCard

    _, run = pipeline
    card = ModelCard((run / "merged" / "README.md").read_text())
    snippet = card.text.split("```python\n")[1].split("```")[0]
    exec(compile(snippet.replace("max_new_tokens=256", "max_new_tokens=4"), "README.md", "exec"), {})
    assert "[INST]" not in capsys.readouterr().out  # the answer only, not the prompt


def test_shards_follow_max_shard_size_and_hold_the_same_weights(pipeline, tmp_path):
    from safetensors.torch import load_file

    tmp, run = pipeline
    for artifact in ("adapter", "dataset"):
        shutil.copytree(run / artifact, tmp_path / "smoke" / artifact)
    overrides = ["--set", f"run.output_dir={tmp_path}", "--set", "merge.max_shard_size=300KB"]
    run_stage("fine_tune.merge", tmp, *overrides)
    sharded = tmp_path / "smoke" / "merged"
    shards = sorted(sharded.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3 and (sharded / "model.safetensors.index.json").is_file()
    assert all(path.stat().st_size < 400_000 for path in shards)
    weights = {name: tensor for path in shards for name, tensor in load_file(path).items()}
    single = load_file(run / "merged" / "model.safetensors")
    assert weights.keys() == single.keys()
    assert all(torch.equal(weights[name], single[name]) for name in single)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("quantized", "is stored quantized; merging needs its unquantized 16-bit weights"),
        ("merge.max_shard_size=big", "merge.max_shard_size: 'big' is not a size such as 2GB"),
    ],
)
def test_merge_refuses_a_quantized_base_and_a_bad_shard_size(pipeline, tmp_path, override, message):
    tmp, run = pipeline
    if override == "quantized":
        (base,) = (tmp / "base").iterdir()
        shutil.copytree(base, tmp_path / "quantized")
        config = json.loads((base / "config.json").read_text())
        config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
        (tmp_path / "quantized" / "config.json").write_text(json.dumps(config))
        override = f"model.name_or_path={tmp_path / 'quantized'}"
    before = (run / "merged" / "model.safetensors").stat().st_mtime_ns
    result = run_stage("fine_tune.merge", tmp, "--set", override, check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert (run / "merged" / "model.safetensors").stat().st_mtime_ns == before


def test_merge_tolerance_is_the_dtypes_or_a_tenth_of_the_adapters_effect():
    from fine_tune.merge import TOLERANCE, merge_tolerance

    assert merge_tolerance(torch.bfloat16, 0.5) == TOLERANCE[torch.bfloat16] == 0.25  # barely trained
    assert merge_tolerance(torch.bfloat16, 10.0) == pytest.approx(1.0)  # logits moved by 10: rounding grows
    # A merge that dropped the adapter differs by the adapter's whole effect: it fails.
    assert all(effect > merge_tolerance(torch.bfloat16, effect) for effect in (0.3, 1.0, 10.0, 100.0))
    assert merge_tolerance(torch.float32, 10.0) == pytest.approx(1.0)
    assert merge_tolerance(torch.float32, 0.001) == TOLERANCE[torch.float32]
