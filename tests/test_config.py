from pathlib import Path

import pytest

from core.cli import stage_parser
from core.config import DEFAULT_SYSTEM_PROMPT, apply_overrides, load_config
from core.errors import UserError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("profile", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_profile_is_valid(profile):
    config = load_config(profile)
    assert config.run.name == profile.stem


def test_override_sets_nested_fields_with_yaml_types():
    config = load_config(
        CONFIGS / "tiny.yaml",
        ["train.max_steps=50", "lora.r=8", "lora.target_modules=[q_proj]", "hub.model_repo=me/model"],
    )
    assert config.train.max_steps == 50
    assert config.lora.r == 8
    assert config.lora.target_modules == ["q_proj"]
    assert config.hub.model_repo == "me/model"


def test_overrides_do_not_touch_the_input():
    raw = {"train": {"max_steps": 1}}
    assert apply_overrides(raw, ["train.max_steps=2"]) == {"train": {"max_steps": 2}}
    assert raw == {"train": {"max_steps": 1}}


def test_typo_names_the_field_and_what_is_allowed():
    with pytest.raises(UserError) as error:
        load_config(CONFIGS / "tiny.yaml", ["train.max_stepz=5"])
    message = str(error.value)
    assert "train.max_stepz: unknown field" in message
    assert "max_steps" in message
    assert "\n" not in message


def test_bad_value_names_the_field_and_the_choices():
    with pytest.raises(UserError) as error:
        load_config(CONFIGS / "tiny.yaml", ["quant.quant_type=nf5"])
    assert "quant.quant_type" in str(error.value)
    assert "'nf4' or 'fp4'" in str(error.value)


def test_unknown_section_is_rejected():
    with pytest.raises(UserError, match="trian: unknown field"):
        load_config(CONFIGS / "tiny.yaml", ["trian.max_steps=5"])


def test_malformed_override_and_missing_file():
    with pytest.raises(UserError, match="expected section.field=value"):
        load_config(CONFIGS / "tiny.yaml", ["train.max_steps"])
    with pytest.raises(UserError, match="config file not found"):
        load_config(CONFIGS / "nope.yaml")


def test_sets_splits_by_shell_rules_in_order_with_set():
    listed = "c.d=2 data.system_prompt='You are a helpful assistant'"
    args = stage_parser("test").parse_args(["--set", "a.b=1", "--sets", listed, "--set=e.f=3", "--sets="])
    assert args.overrides == ["a.b=1", "c.d=2", "data.system_prompt=You are a helpful assistant", "e.f=3"]


def test_sets_with_an_unbalanced_quote_is_one_line():
    with pytest.raises(UserError, match="no closing quotation") as error:
        stage_parser("test").parse_args(["--sets", "a.b='x\ny"])
    assert "\n" not in str(error.value)


def test_embedded_sizes_must_suit_the_cpu_4bit_kernel():
    rule = "model.embedded.intermediate_size: 352 is not a multiple of 64"
    with pytest.raises(UserError, match=rule) as error:
        load_config(CONFIGS / "tiny.yaml", ["model.embedded.intermediate_size=352"])
    assert str(error.value).endswith("use 320 or 384")
    with pytest.raises(UserError, match="model.embedded.hidden_size: 96 is not a multiple of 64"):
        load_config(CONFIGS / "tiny.yaml", ["model.embedded.hidden_size=96"])


@pytest.mark.parametrize("profile", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.name)
def test_every_profiles_embedded_layers_fit_the_cpu_4bit_kernel(profile):
    """The rule bitsandbytes' AVX-512 BF16 repack applies to each quantized layer, on every machine."""
    from core.patches import cpu_repack_fits

    spec = load_config(profile).model.embedded
    hidden, intermediate = spec.hidden_size, spec.intermediate_size
    layers = {"q/k/v/o_proj": (hidden, hidden), "gate/up_proj": (intermediate, hidden)}
    layers["down_proj"] = (hidden, intermediate)
    assert all(cpu_repack_fits(out, into) for out, into in layers.values()), layers


def test_llama2_7b_profile_reproduces_the_seed_run():
    config = load_config(CONFIGS / "llama2-7b-python.yaml")
    assert config.model.name_or_path == "meta-llama/Llama-2-7b-hf"
    assert config.quant.bits == 4
    assert config.quant.quant_type == "nf4"
    assert config.quant.compute_dtype == "float16"
    assert config.quant.double_quant is False
    assert (config.lora.r, config.lora.alpha, config.lora.dropout) == (64, 16, 0.1)
    assert config.lora.bias == "none"
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.train.optim == "paged_adamw_32bit"
    assert config.train.learning_rate == 2e-4
    assert config.train.weight_decay == 0.001
    assert config.train.max_grad_norm == 0.3
    assert config.train.lr_scheduler == "cosine"
    assert config.train.warmup_ratio == 0.03
    assert (config.train.epochs, config.train.max_steps) == (1, 1000)
    assert (config.train.batch_size, config.train.eval_batch_size) == (4, 4)
    assert config.train.gradient_accumulation_steps == 1
    assert config.train.max_length == 512
    assert config.train.packing is False
    assert config.train.group_by_length is True
    assert (config.train.logging_steps, config.train.save_steps, config.train.eval_steps) == (5, 50, 50)
    assert config.train.early_stopping_patience == 4
    assert config.train.load_best_model_at_end is True
    assert config.data.system_prompt == DEFAULT_SYSTEM_PROMPT
    assert config.data.validation_size == 1000


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path):
    profile = tmp_path / "latin1.yaml"
    profile.write_bytes("run:\n  name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.yaml is not UTF-8 text \(line 2\): save it as UTF-8"):
        load_config(profile)
