"""Model families beyond Llama, and the three ways of holding the base in training (`quant.bits`).

End to end on a random tiny GPT-NeoX (Pythia's architecture), whose attention is one fused projection
(`query_key_value`) and whose output head is `embed_out`, with Meta's Llama-2 tokenizer as its tokenizer:
curation, training with `lora.target_modules: all-linear` on the 4-bit base, a 16-bit (bfloat16) merge and
its self-check, infer; then the same base trained with quant.bits 16 and 8 (LLM.int8, which bitsandbytes
runs on a CPU). Also: what quant.bits and lora.target_modules accept, and the lines for the old keys.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from core.errors import UserError
from synthetic.llama import LLAMA2_TOKENIZER
from tests.conftest import base_stage, fresh_run, smoke_config

# A GPT-NeoX shrunk to a model the tests train in seconds: every quantized layer's output size a multiple
# of 32 (bitsandbytes' CPU 4-bit kernel), the Llama-2 tokenizer's vocabulary and special ids.
NEOX_SMALL = {"vocab_size": 32000, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
              "num_attention_heads": 4, "max_position_embeddings": 2048, "bos_token_id": 1,
              "eos_token_id": 2, "tie_word_embeddings": False}  # fmt: skip
NEOX_LINEAR = {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}  # and the head, embed_out
ALL_LINEAR = ("--set", "lora.target_modules=all-linear", "--set", "merge.dtype=bfloat16")


@pytest.fixture(scope="module")
def neox_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny GPTNeoXForCausalLM in float16 with the Llama-2 tokenizer: a user's local base folder."""
    from transformers import GenerationConfig, GPTNeoXConfig, GPTNeoXForCausalLM

    folder = tmp_path_factory.mktemp("neox-base") / "tiny-gpt-neox"
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**NEOX_SMALL))
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2)
    model.half().save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(LLAMA2_TOKENIZER / name, folder)
    return folder


@pytest.fixture(scope="module")
def neox_curated(tmp_path_factory: pytest.TempPathFactory, neox_base_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("neox-run")
    base_stage("data_prep", tmp, neox_base_dir)
    return tmp


@pytest.fixture(scope="module")
def neox_run(neox_curated: Path, neox_base_dir: Path) -> Path:
    """The curated GPT-NeoX run trained on all linear layers of its 4-bit base and merged in bfloat16."""
    for module in ("fine_tune.train", "fine_tune.merge"):
        base_stage(module, neox_curated, neox_base_dir, *ALL_LINEAR)
    return neox_curated / "runs" / "smoke"


def report_losses(run: Path) -> list[float]:
    report = json.loads((run / "reports" / "train_report.json").read_text())
    return [entry["loss"] for entry in report["log_history"] if "loss" in entry]


def adapted_modules(adapter: Path) -> set[str]:
    """The module names (last part) that carry LoRA weights in a saved adapter."""
    from safetensors import safe_open

    with safe_open(adapter / "adapter_model.safetensors", "pt") as weights:
        names = list(weights.keys())
    assert names and all(".lora_A." in name or ".lora_B." in name for name in names)
    return {name.split(".lora_")[0].rpartition(".")[2] for name in names}


@pytest.mark.e2e
def test_all_linear_trains_every_linear_layer_of_a_fused_attention_but_the_head(neox_run):
    losses = report_losses(neox_run)
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    assert adapted_modules(neox_run / "adapter") == NEOX_LINEAR
    saved = json.loads((neox_run / "adapter" / "adapter_config.json").read_text())
    assert {name.rpartition(".")[2] for name in saved["target_modules"]} == NEOX_LINEAR


def test_the_16_bit_merge_gives_the_adapter_models_logits(neox_run, neox_base_dir):
    """The merge check passed in bfloat16, the saved weights are bfloat16, and the merged model's logits
    are base + adapter's (computed here in float32) within the merge check's tolerance."""
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fine_tune.merge import merge_tolerance

    check = json.loads((neox_run / "reports" / "merge_check.json").read_text())
    assert check["passed"] and check["dtype"] == "bfloat16"
    assert check["tolerance"] == round(merge_tolerance(torch.bfloat16, check["adapter_effect"]), 4)
    with safe_open(neox_run / "merged" / check["weight_files"][0], "pt") as weights:
        dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}  # noqa: SIM118 (no __iter__)
    assert dtypes == {"BF16"}
    tokenizer = AutoTokenizer.from_pretrained(neox_run / "merged")
    inputs = tokenizer(["[INST] How do I reverse a list? [/INST] Use reversed()."], return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(neox_base_dir, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, neox_run / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(neox_run / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        difference = (adapted(**inputs).logits - merged(**inputs).logits).abs().max().item()
    assert 0 < difference <= check["tolerance"]


@pytest.mark.e2e
def test_infer_answers_with_the_merged_gpt_neox(neox_run, neox_base_dir):
    question = ("--model", "new_model", "--prompt", "How do I reverse a list in Python?")
    answered = base_stage("inference", neox_run.parent.parent, neox_base_dir, *question, *ALL_LINEAR)
    assert answered.stdout.strip() and "[INST]" not in answered.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("bits", [16, 8])
def test_the_gpt_neox_trains_with_quant_bits(neox_curated, neox_base_dir, bits):
    """LoRA on the unquantized base, and on bitsandbytes' LLM.int8 base, which runs on a CPU: the loss is
    finite and every linear layer's adapter learned (lora_B starts at zero)."""
    from safetensors.torch import load_file

    run = fresh_run(neox_curated, f"bits-{bits}")
    trained = base_stage("fine_tune.train", run, neox_base_dir, *ALL_LINEAR, "--set", f"quant.bits={bits}")
    assert "MatMul8bitLt" not in trained.stderr  # LLM.int8's float16 cast, said on every product, is silenced
    adapter = run / "runs" / "smoke" / "adapter"
    losses = report_losses(adapter.parent)
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert adapted_modules(adapter) == NEOX_LINEAR
    weights = load_file(adapter / "adapter_model.safetensors")
    assert all(tensor.abs().sum() > 0 for name, tensor in weights.items() if ".lora_B." in name)


def test_eight_bit_inference_loads_llm_int8_and_answers(neox_run, tmp_path):
    from bitsandbytes.nn import Linear8bitLt

    from inference.generate import generate
    from inference.loading import load_model
    from inference.models import ModelSource

    config = smoke_config(tmp_path, "quant.bits=8", "inference.quantize=true", "inference.max_new_tokens=4")
    merged = ModelSource("new_model", str(neox_run / "merged"), is_adapter=False)
    model, tokenizer = load_model(merged, config)
    assert isinstance(model.gpt_neox.layers[0].attention.query_key_value, Linear8bitLt)
    (answer,) = generate(model, tokenizer, ["[INST] How do I reverse a list? [/INST]"], config.inference)
    assert answer.new_tokens > 0


def test_quant_bits_chooses_the_bitsandbytes_settings(tmp_path):
    from core.model import quantization_config

    four = quantization_config(smoke_config(tmp_path))
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4"
    eight = quantization_config(smoke_config(tmp_path, "quant.bits=8"))
    assert eight.load_in_8bit and not eight.load_in_4bit
    assert quantization_config(smoke_config(tmp_path, "quant.bits=16")) is None


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("quant.load_in_4bit=true", "quant.load_in_4bit is now quant.bits: 4 | 8 | 16 (load_in_4bit true was "
                                    "bits 4, false bits 16)"),
        ("inference.load_in_4bit=true", "inference.load_in_4bit is now inference.quantize: true | false"),
        ("quant.bits=5", "quant.bits: Input should be 4, 8 or 16"),
        ("lora.target_modules=q_proj", "lora.target_modules: 'q_proj' is not a list of module names"),
        ("lora.target_modules=[]", "lora.target_modules: name at least one module, or auto or all-linear"),
    ],
)  # fmt: skip
def test_old_and_bad_keys_get_one_line(tmp_path, override, line):
    with pytest.raises(UserError) as error:
        smoke_config(tmp_path, override)
    assert line in str(error.value) and "\n" not in str(error.value)


def test_inference_quantize_needs_bits_4_or_8(tmp_path):
    with pytest.raises(UserError) as error:
        smoke_config(tmp_path, "quant.bits=16", "inference.quantize=true")
    assert str(error.value).endswith(
        "smoke.yaml: inference.quantize loads the model as quant.bits says, and quant.bits is 16: set "
        "quant.bits to 4 or 8, or inference.quantize to false"
    )


@pytest.mark.parametrize(
    ("model_type", "expected"),
    [("llama", ["q_proj", "v_proj"]), ("gpt_neox", ["query_key_value"]), ("bloom", ["query_key_value"]),
     ("no_such_architecture", "all-linear")],
)  # fmt: skip
def test_auto_targets_are_peft_s_choice_for_the_architecture(tmp_path, model_type, expected):
    from core.model import lora_targets

    assert lora_targets(smoke_config(tmp_path, "lora.target_modules=auto"), model_type) == expected
    assert lora_targets(smoke_config(tmp_path, "lora.target_modules=all-linear"), model_type) == "all-linear"
    assert lora_targets(smoke_config(tmp_path), model_type) == ["q_proj", "v_proj"]  # the profile's list


def bloom_base(folder: Path) -> Path:
    """A Bloom's config.json alone: what check_before_work reads."""
    from transformers import BloomConfig

    BloomConfig(vocab_size=32000, hidden_size=64, n_layer=2, n_head=4).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("family", ["gpt_neox", "bloom"])
def test_check_before_work_takes_all_linear_and_auto_and_refuses_a_missing_name(
    tmp_path, neox_base_dir, family
):
    from fine_tune.train import check_before_work

    base = neox_base_dir if family == "gpt_neox" else bloom_base(tmp_path / "bloom")
    for targets in ("all-linear", "auto", "[query_key_value, dense]"):
        config = smoke_config(tmp_path, f"model.name_or_path={base}", f"lora.target_modules={targets}")
        check_before_work(config)
    with pytest.raises(UserError) as error:  # the profile's q_proj and v_proj: Llama's names
        check_before_work(smoke_config(tmp_path, f"model.name_or_path={base}"))
    line = str(error.value)
    assert line.startswith("lora.target_modules: q_proj, v_proj not in the base model (its linear layers: ")
    assert "query_key_value" in line and line.endswith("; or all-linear)")
