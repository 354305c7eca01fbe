"""`peft.method`: each PEFT method's settings and PEFT's unsupported combinations refused by the config, the
PEFT config each method builds, and each method trained, resumed and merged (or, for prompt learning,
answering through infer without a merge) on the smoke profile."""

from __future__ import annotations

import json

import pytest

from core.config import PROMPT_LEARNING_METHODS, load_config
from core.errors import UserError
from tests.conftest import SMOKE, fresh_run, run_stage

METHODS = ["lora", "dora", "rslora", "olora", "adalora", "ia3", "prompt_tuning", "prefix_tuning", "p_tuning"]


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (
            ["peft.method=ia3", "peft.num_virtual_tokens=4"],
            "num_virtual_tokens is a setting of prompt_tuning",
        ),
        (["peft.method=lora", "peft.init_r=8"], "init_r is a setting of adalora, not of method lora"),
        (
            ["peft.method=p_tuning", "peft.prompt_init_text=Answer:"],
            "prompt_init_text is a setting of prompt_tuning",
        ),
        (["peft.method=dora", "quant.bits=8"], "dora fails on bitsandbytes' 8-bit layers"),
        (
            ["peft.method=prefix_tuning", "train.gradient_checkpointing=true"],
            "set train.gradient_checkpointing=false",
        ),
        (["peft.method=prompt_tuning", "train.packing=true"], "set train.packing=false"),
        (["peft.method=p_tuning", "hub.push_merged=true"], "cannot be merged into the base"),
        (["peft.method=qlora"], "peft.method"),
    ],
)
def test_a_setting_or_combination_the_method_cannot_take_is_one_line(overrides, words):
    with pytest.raises(UserError) as caught:
        load_config(SMOKE, overrides)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_each_method_builds_its_peft_config():
    from fine_tune.peft_methods import peft_config

    built = {}
    for method in METHODS:
        config = load_config(SMOKE, [f"peft.method={method}", "lora.r=8"])
        built[method] = peft_config(config, "llama", "unused", 100)
    kinds = {method: type(value).__name__ for method, value in built.items()}
    assert kinds == {
        "lora": "LoraConfig", "dora": "LoraConfig", "rslora": "LoraConfig", "olora": "LoraConfig",
        "adalora": "AdaLoraConfig", "ia3": "IA3Config", "prompt_tuning": "PromptTuningConfig",
        "prefix_tuning": "PrefixTuningConfig", "p_tuning": "PromptEncoderConfig",
    }  # fmt: skip
    assert (
        built["dora"].use_dora and built["rslora"].use_rslora and built["olora"].init_lora_weights == "olora"
    )
    assert (
        not built["lora"].use_dora
        and not built["lora"].use_rslora
        and built["lora"].init_lora_weights is True
    )
    adalora = built["adalora"]
    schedule = (adalora.init_r, adalora.target_r, adalora.total_step, adalora.tinit, adalora.tfinal)
    assert schedule == (12, 8, 100, 10, 0)
    assert all(built[method].num_virtual_tokens == 20 for method in PROMPT_LEARNING_METHODS)


def test_the_model_card_names_the_method(tmp_path):
    from fine_tune.card import model_card
    from tests.conftest import smoke_config

    ia3 = model_card(smoke_config(tmp_path, "peft.method=ia3"), "adapter", "user/model", None, None)
    assert "An IA3 (learned scaling vectors) adapter" in ia3 and "| PEFT method | IA3" in ia3
    assert "- ia3" in ia3 and "- qlora" in ia3 and "| LoRA |" not in ia3
    prompt = model_card(
        smoke_config(tmp_path, "peft.method=prompt_tuning"), "adapter", "user/model", None, None
    )
    assert "| virtual tokens | 20 |" in prompt and "- prompt-tuning" in prompt


# LoRA, the default, is trained, resumed and merged by test_e2e.py, test_training.py and test_resume.py.
@pytest.mark.parametrize("method", [method for method in METHODS if method != "lora"])
def test_each_method_trains_resumes_and_merges_or_answers_unmerged(curated, method):
    """Two steps, then on to four from the checkpoint; the merge within its check's tolerance, or for prompt
    learning, one line saying there is nothing to merge and infer answering with base + adapter."""
    folder = fresh_run(curated, method)
    chosen = ("--set", f"peft.method={method}")
    steps = ("--set", "train.save_steps=2", "--set", "train.eval_steps=2")
    run_stage("fine_tune.train", folder, *chosen, *steps, "--set", "train.max_steps=2")
    resumed = run_stage("fine_tune.train", folder, *chosen, *steps, "--set", "train.max_steps=4")
    assert "resuming from" in resumed.stderr and "step 2 of 4" in resumed.stderr
    run = folder / "runs" / "smoke"
    report = json.loads((run / "reports" / "train_report.json").read_text())
    assert report["steps"] == 4 and report["trainable_parameters"] > 0
    merged = run_stage("fine_tune.merge", folder, *chosen)
    if method in PROMPT_LEARNING_METHODS:
        assert "nothing to merge" in merged.stderr and not (run / "merged").exists()
        answered = run_stage("inference", folder, *chosen, "--prompt", "How do I sort a list?",
                             "--set", "inference.max_new_tokens=4")  # fmt: skip
        assert answered.stdout.strip() and "4 tokens" in answered.stderr
        run_stage("inference.compare", folder, *chosen, "--set", "eval.with_compare=false",
                  "--set", "inference.max_new_tokens=4")  # fmt: skip
        summary = json.loads((run / "reports" / "compare.json").read_text())["summary"]
        assert summary["fine-tuned"]["validation_loss"] != summary["base"]["validation_loss"]
    else:
        check = json.loads((run / "reports" / "merge_check.json").read_text())
        assert check["passed"] and check["max_abs_logit_difference"] <= check["tolerance"]


def test_adalora_moves_its_rank_budget_while_training(curated):
    folder = fresh_run(curated, "adalora-budget")
    run_stage("fine_tune.train", folder, "--set", "peft.method=adalora", "--set", "train.max_steps=6")
    from safetensors.torch import load_file

    adapter = folder / "runs" / "smoke" / "adapter"
    settings = json.loads((adapter / "adapter_config.json").read_text())
    assert settings["total_step"] == 6 and settings["init_r"] == 12 and settings["target_r"] == 8
    singular_values = [tensor for name, tensor in load_file(adapter / "adapter_model.safetensors").items()
                       if "lora_E" in name]  # fmt: skip
    assert all(values.numel() == 12 for values in singular_values)  # every rank keeps its place
    pruned = sum(int((values == 0).sum()) for values in singular_values)
    assert pruned > 0  # only update_and_allocate zeroes them


def test_an_olora_adapter_is_written_as_lora_that_fits_the_untouched_base(smoke_base_dir, tmp_path):
    """OLoRA moves part of each weight into its adapter; the adapter the run writes, converted, gives on the
    untouched base the logits the trained model gives on its mutated one."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from fine_tune.peft_methods import save_adapter, save_initial_olora
    from fine_tune.train import load_quantized_model
    from tests.conftest import smoke_config

    config = smoke_config(tmp_path, "peft.method=olora", "quant.bits=16", "lora.r=4")
    model = load_quantized_model(config, str(smoke_base_dir))
    save_initial_olora(model, tmp_path / "initial")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.add_(0.05 * torch.randn_like(parameter))  # as if trained
    ids = torch.tensor([[1, 50, 60, 70, 80, 90]])
    model.eval()
    trained = model(input_ids=ids).logits
    save_adapter(model, tmp_path / "adapter", config, tmp_path / "initial")
    written = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert written["r"] == 8 and written["init_lora_weights"] is True
    untouched = AutoModelForCausalLM.from_pretrained(smoke_base_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(untouched, tmp_path / "adapter").eval()
    assert torch.allclose(reloaded(input_ids=ids).logits, trained, atol=1e-4)
