"""core/patches.py: each reach into a library's internals still finds what it relies on, and does its job;
and the one the tests make (tests/conftest.py's schedule of pytest-xdist's workers).

Code paths that exist on one CPU kind only run where the CPU has them and say why they were skipped
elsewhere; the rules that decide them are checked on every machine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.patches import control_cpu_repack, cpu_has_amx, cpu_repack_fits

CPUINFO = Path("/proc/cpuinfo")
CPU_FLAGS = (
    set(next(line for line in CPUINFO.read_text().splitlines() if line.startswith("flags")).split())
    if CPUINFO.is_file()
    else set()
)
HAS_AVX512_BF16 = "avx512_bf16" in CPU_FLAGS
needs_avx512_bf16 = pytest.mark.skipif(
    not HAS_AVX512_BF16,
    reason="this CPU has no AVX-512 BF16: bitsandbytes never repacks 4-bit layers here (the rule is checked)",
)


def quantized_model(*shapes: tuple[int, int]) -> torch.nn.Sequential:
    """4-bit layers (out, in) as transformers builds them: NF4, double-quantized, float32 compute."""
    from bitsandbytes.nn import Linear4bit

    torch.manual_seed(0)
    layers = []
    for out_features, in_features in shapes:
        layer = Linear4bit(in_features, out_features, False, torch.float32, quant_type="nf4")
        layer.weight.data = torch.randn(out_features, in_features)
        layers.append(layer)
    model = torch.nn.Sequential(*layers)
    for layer in model:  # quantizes on the move, as from_pretrained does
        layer.weight = layer.weight._quantize("cpu")
    return model


def repacked(layer) -> bool:
    return bool(getattr(layer.weight.quant_state, "packing_format_for_cpu", False))


def test_the_kernel_rule():
    assert cpu_repack_fits(128, 384) and cpu_repack_fits(32, 64)
    assert not cpu_repack_fits(128, 352)  # the tiny profile's old down_proj: 352 inputs are 5.5 blocks
    assert not cpu_repack_fits(80, 128)


def test_bitsandbytes_decides_the_repack_by_the_attribute_the_patch_sets():
    """The guard: bitsandbytes 0.50's Linear4bit reads support_avx512bf16_for_cpu in forward."""
    import inspect

    from bitsandbytes.nn import Linear4bit

    layer = quantized_model((64, 64))[0]
    assert layer.support_avx512bf16_for_cpu == HAS_AVX512_BF16
    assert "self.support_avx512bf16_for_cpu" in inspect.getsource(Linear4bit.forward)


def test_training_never_repacks_and_inference_only_what_fits():
    model = quantized_model((64, 64), (64, 96))
    assert control_cpu_repack(model, training=True) == 0
    assert not any(layer.support_avx512bf16_for_cpu for layer in model)
    model = quantized_model((64, 64), (64, 96))
    assert control_cpu_repack(model, training=False) == (1 if HAS_AVX512_BF16 else 0)
    assert not model[1].support_avx512bf16_for_cpu  # 96 inputs: not whole blocks of 64


@needs_avx512_bf16
def test_an_evaluation_pass_repacks_an_unpatched_layer_and_leaves_a_patched_one_as_training_uses_it():
    model = quantized_model((64, 64))
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 64))
    assert repacked(model[0]), "bitsandbytes no longer repacks in eval: control_cpu_repack may go"

    model = quantized_model((64, 64))
    control_cpu_repack(model, training=True)
    weights = model[0].weight.data.clone()
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 64))
    assert not repacked(model[0]) and torch.equal(model[0].weight.data, weights)


@needs_avx512_bf16
def test_a_layer_that_does_not_fit_would_crash_the_repack_and_is_left_alone():
    model = quantized_model((64, 96))
    model.eval()
    with pytest.raises((RuntimeError, AssertionError)), torch.no_grad():
        model(torch.randn(2, 96))
    model = quantized_model((64, 96))
    control_cpu_repack(model, training=False)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 96)).shape == (2, 64)


def test_auto_compute_dtype_is_float32_on_every_cpu(tmp_path):
    from core.model import compute_dtype
    from tests.conftest import smoke_config

    if not torch.cuda.is_available():
        assert compute_dtype(smoke_config(tmp_path, "quant.compute_dtype=auto")) == torch.float32
    assert compute_dtype(smoke_config(tmp_path, "quant.compute_dtype=bfloat16")) == torch.bfloat16


def test_llama_cpp_still_builds_its_model_parameters_from_the_function_the_patch_swaps():
    import inspect

    llama_cpp = pytest.importorskip("llama_cpp", reason="make test installs requirements-export.txt")
    import llama_cpp.llama_cpp as low_level

    from core.patches import llama_cpp_without_amx

    assert "use_extra_bufts" in [name for name, _ in low_level.llama_model_params._fields_]
    assert "llama_model_default_params()" in inspect.getsource(llama_cpp.Llama.__init__)
    default = low_level.llama_model_default_params
    with llama_cpp_without_amx():
        assert low_level.llama_model_default_params().use_extra_bufts == (not cpu_has_amx())
    assert low_level.llama_model_default_params is default


def test_the_trainer_still_takes_the_resume_position_from_the_two_methods_resumable_trainer_overrides():
    """The guard of core/patches.py: resumable_trainer. The training loop calls both, with these parameters,
    and unpacks (epochs trained, steps to skip) from _init_training_state."""
    import inspect

    from transformers import Trainer

    parameters = ["self", "max_steps", "num_update_steps_per_epoch", "num_train_epochs"]
    assert list(inspect.signature(Trainer._init_training_state).parameters)[:4] == parameters
    initial_values = inspect.signature(Trainer.set_initial_training_values).parameters
    assert list(initial_values) == ["self", "args", "dataloader"]
    loop = inspect.getsource(Trainer._inner_training_loop)
    assert "= self.set_initial_training_values(args, train_dataloader)" in loop
    assert "epochs_trained, steps_trained_in_current_epoch = self._init_training_state(" in loop


def test_datasets_still_says_when_a_step_is_computed_and_when_it_is_read_from_the_cache(tmp_path):
    """The guard of core/patches.py: counting_dataset_steps counts datasets' log messages."""
    from datasets import Dataset, enable_caching

    from core.patches import counting_dataset_steps

    enable_caching()
    Dataset.from_dict({"x": [1, 2, 3]}).save_to_disk(str(tmp_path / "data"))
    rows = Dataset.load_from_disk(str(tmp_path / "data"))
    counts = []
    for _ in range(2):
        with counting_dataset_steps() as steps:
            rows.map(lambda row: {"y": row["x"] * 2}, new_fingerprint="doubled")
        counts.append((steps.computed, steps.read))
    assert counts == [(1, 0), (0, 1)]


def test_the_tests_schedule_still_hooks_into_xdists_scheduler():
    """tests/conftest.py's FilesPerWorker overrides LoadScopeScheduling._split_scope (pytest-xdist 3.8.0):
    the scheduler still asks it for every test's unit of work, and it gives each file, and the files that use
    `pipeline` one unit. Should pytest read a renamed node id again, xdist's loadgroup could replace it."""
    import inspect

    from xdist.scheduler import LoadScopeScheduling

    from tests.conftest import PIPELINE_FILES, FilesPerWorker

    assert inspect.getsource(LoadScopeScheduling).count("self._split_scope(nodeid)") >= 2
    assert list(inspect.signature(LoadScopeScheduling._split_scope).parameters) == ["self", "nodeid"]
    scope = FilesPerWorker._split_scope
    assert scope(None, "tests/test_rows.py::test_x[a::b]") == "tests/test_rows.py"
    assert {scope(None, f"tests/{name}::test_y") for name in PIPELINE_FILES} == {"pipeline"}
