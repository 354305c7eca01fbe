"""make gpu-check (gpu_check/) where there is no GPU, and every part of it that runs on a CPU:
the 7B shape, the random checkpoint written in shards, the bundle's rule for what to install, and the 7B
profile's QLoRA run on a small Llama-2 shape. The run on a GPU itself is not tested here."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from gpu_check.__main__ import seven_b_table
from gpu_check.bundle import install_wheels, wheels_to_install
from gpu_check.runs import qlora_runs
from synthetic.llama import LLAMA2_7B, LLAMA2_SMALL, write_random_llama
from tests.conftest import REPO


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU make gpu-check runs for real")
def test_make_gpu_check_without_a_gpu_says_so_and_exits_0():
    result = subprocess.run(["make", "gpu-check"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "gpu-check: needs a CUDA GPU, and torch" in result.stdout and "nothing checked" in result.stdout


def test_the_7b_shape_has_llama2_7bs_parameters_and_the_profiles_lora_the_seeds():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from core.config import load_config

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA2_7B))
    assert model.num_parameters() == 6_738_415_616
    lora = load_config(REPO / "configs" / "llama2-7b-python.yaml").lora
    adapted = get_peft_model(model, LoraConfig(r=lora.r, target_modules=lora.target_modules))
    assert adapted.get_nb_trainable_parameters()[0] == 33_554_432  # the notebook recipe's LoRA


def test_a_random_checkpoint_is_written_in_shards_and_loads_whole(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig

    total = write_random_llama(tmp_path, LlamaConfig(**LLAMA2_SMALL), torch.float16, shard_bytes=2_000_000)
    assert len(list(tmp_path.glob("model-0000*-of-0000*.safetensors"))) > 2
    model, loading = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(loading.values())  # no missing, unexpected or mismatched weights
    assert model.num_parameters() == total and model.dtype == torch.float16
    assert torch.equal(model.model.norm.weight, torch.ones(64, dtype=torch.float16))
    assert model.lm_head.weight.float().std().item() == pytest.approx(0.02, rel=0.05)


def probe_wheel(folder: Path, version: str) -> Path:
    """A real, installable wheel of a one-module distribution `gpu-check-probe`."""
    wheel = folder / f"gpu_check_probe-{version}-py3-none-any.whl"
    info = f"gpu_check_probe-{version}.dist-info"
    files = {
        "gpu_check_probe.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: gpu-check-probe\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


def test_the_bundle_installs_what_this_python_lacks_or_has_older_into_its_own_folder(tmp_path):
    from packaging.version import Version

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    probe = probe_wheel(wheels, "1.0")
    newer = wheels / f"pytest-{Version(pytest.__version__).major + 1}.0-py3-none-any.whl"  # pytest: installed
    for path in (newer, wheels / "pytest-1.0-py3-none-any.whl"):  # the rule reads names only
        path.touch()
    assert wheels_to_install(wheels) == [probe, newer]

    site = tmp_path / "site"
    install_wheels([probe], site)
    command = [sys.executable, "-c", "import gpu_check_probe; print(gpu_check_probe.VERSION)"]
    result = subprocess.run(command, env={"PYTHONPATH": str(site)}, capture_output=True, text=True)
    assert result.stdout.strip() == "1.0", result.stderr


@pytest.mark.e2e
def test_the_7b_profile_trains_a_small_llama2_shape_on_a_cpu(tmp_path):
    """The GPU check's first part, shrunk: the llama2-7b-python profile (4-bit NF4, float16 compute, the
    paged optimizer, gradient checkpointing) through the training stage's trainer, on a CPU, then with
    quant.bits 8 and 16 on the same base and data."""
    from transformers import LlamaConfig

    results = qlora_runs(LlamaConfig(**LLAMA2_SMALL), tmp_path, steps=2, batch_size=2)
    assert results["parameters"] > 4_000_000 and list(results)[1:] == ["bits_4", "bits_8", "bits_16"]
    for bits in (4, 8, 16):
        result = results[f"bits_{bits}"]
        assert result["bits"] == bits
        assert (result["steps"], result["batch_size"], result["max_length"]) == (2, 2, 512)
        assert result["tokens"] > 2 * 2 * 100 and result["tokens_per_second"] > 0
        assert "peak_gb" not in result  # memory figures are a GPU's
    assert "bits 4" in seven_b_table({"bits_4": {"out_of_memory": "CUDA out of memory"}})
