"""Training correctness on the real stack: packing isolation, padding, checkpoints, resume, seeds, DDP."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core.prompts import render_completion, render_prompt
from core.runs import RunPaths
from fine_tune.resume import saved_checkpoints
from tests.conftest import REPO, SMOKE, STAGES, built, fresh_run, run_stage, smoke_config
from tests.test_patches import needs_avx512_bf16
from tests.test_prompts import EXAMPLES, SYSTEM

# Save and log on the same steps so that a resumed run logs exactly what an uninterrupted one does.
SHORT_RUN = ["--set", "train.max_steps=12", "--set", "train.save_steps=4", "--set", "train.logging_steps=2",
             "--set", "train.eval_steps=4", "--set", "train.save_total_limit=5"]  # fmt: skip


def logged_losses(run: Path) -> list[tuple[int, str, float]]:
    report = json.loads((run / "runs" / "smoke" / "reports" / "train_report.json").read_text())
    return [
        (entry["step"], key, entry[key])
        for entry in report["log_history"]
        for key in ("loss", "eval_loss")
        if key in entry
    ]


def assert_same_losses(first: list, second: list) -> None:
    assert [(step, key) for step, key, _ in first] == [(step, key) for step, key, _ in second]
    for (_, _, a), (_, _, b) in zip(first, second, strict=True):
        assert abs(a - b) <= 1e-4


@pytest.fixture(scope="module")
def uninterrupted(curated):
    run = fresh_run(curated, "uninterrupted")
    run_stage("fine_tune.train", run, *SHORT_RUN)
    return run


def test_same_seed_gives_the_same_losses(curated, uninterrupted):
    again = fresh_run(curated, "again")
    run_stage("fine_tune.train", again, *SHORT_RUN)
    assert len(logged_losses(again)) >= 6
    assert_same_losses(logged_losses(uninterrupted), logged_losses(again))


@needs_avx512_bf16
def test_evaluations_do_not_change_what_training_learns(curated, uninterrupted):
    """On a CPU with AVX-512 BF16, bitsandbytes would repack every 4-bit layer at the first evaluation and
    train on through its inference kernel (tests/test_patches.py checks the rule on every machine)."""
    run = fresh_run(curated, "no-evaluation")
    run_stage("fine_tune.train", run, *SHORT_RUN, "--set", "train.eval_steps=1000")
    without = [entry for entry in logged_losses(run) if entry[1] == "loss"]
    with_evaluations = [entry for entry in logged_losses(uninterrupted) if entry[1] == "loss"]
    assert len(without) == 6
    assert_same_losses(with_evaluations, without)


def test_sigkill_then_make_train_resumes_to_the_same_end(curated, uninterrupted):
    run = fresh_run(curated, "killed")
    command = [sys.executable, "-m", "fine_tune.train", "--config", str(SMOKE),
               "--set", f"run.output_dir={run / 'runs'}", "--set", f"model.embedded.cache_dir={run / 'base'}",
               *SHORT_RUN, "--set", "train.max_steps=12"]  # fmt: skip
    checkpoints = run / "runs" / "smoke" / "checkpoints"

    def latest_complete_checkpoint(checkpoints: Path) -> Path | None:
        return next(iter(saved_checkpoints(checkpoints)), None)

    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while latest_complete_checkpoint(checkpoints) is None and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = latest_complete_checkpoint(checkpoints)
    assert killed_at is not None and killed_at.name != "checkpoint-12", "the run ended before it was killed"
    assert not (run / "runs" / "smoke" / "adapter").exists()

    result = run_stage("fine_tune.train", run, *SHORT_RUN)
    report = json.loads((run / "runs" / "smoke" / "reports" / "train_report.json").read_text())
    assert report["resumed_from"] == str(killed_at)
    assert report["steps"] == 12
    assert "resuming from" in result.stderr
    assert_same_losses(logged_losses(uninterrupted), logged_losses(run))


def test_train_report_and_its_artifacts(uninterrupted):
    run = uninterrupted / "runs" / "smoke"
    report = json.loads((run / "reports" / "train_report.json").read_text())
    for key in ("wall_seconds", "tokens_per_second", "supervised_tokens_per_second", "peak_rss_mb"):
        assert report[key] > 0
    assert 0 < report["padding_fraction"] < 1  # unpacked smoke batches are right-padded
    assert report["supervised_tokens_per_epoch"] < report["positions_per_epoch"]
    assert (run / "reports" / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((run / "logs").glob("events.out.tfevents.*"))
    assert not (run / "checkpoints" / "runs").exists()  # TensorBoard writes under logs/ only
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_saved_checkpoints_are_newest_first_and_skip_an_unfinished_save(tmp_path):
    for step, complete in ((2, True), (10, True), (12, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    assert saved_checkpoints(tmp_path) == [tmp_path / "checkpoint-10", tmp_path / "checkpoint-2"]
    assert saved_checkpoints(tmp_path / "missing") == []


@pytest.mark.parametrize("base", [built("smoke"), built("llama2")])
def test_pad_token_needs_no_embedding_resize(request, base):
    from transformers import AutoConfig

    tokenizer = request.getfixturevalue(f"{base}_tokenizer")
    vocabulary = AutoConfig.from_pretrained(request.getfixturevalue(f"{base}_base_dir")).vocab_size
    assert len(tokenizer) == vocabulary
    assert tokenizer.pad_token_id < vocabulary
    assert tokenizer.padding_side == "right"


@pytest.fixture(scope="module")
def packed_trainer(smoke_base_dir, smoke_tokenizer, tmp_path_factory):
    """The real SFTTrainer with packing over the test prompts, and the same examples unpacked."""
    from datasets import Dataset
    from trl import SFTTrainer

    from fine_tune.train import load_quantized_model, sft_config

    tmp = tmp_path_factory.mktemp("packing")
    rows = Dataset.from_list(
        [{"prompt": render_prompt(q, SYSTEM), "completion": render_completion(a)} for q, a in EXAMPLES]
    )
    trainers = {}
    for packing in (True, False):
        config = smoke_config(tmp, f"train.packing={packing}", "train.max_length=512")
        trainers[packing] = SFTTrainer(
            model=load_quantized_model(config, str(smoke_base_dir)),
            args=sft_config(config, tmp / f"checkpoints-{packing}"),
            train_dataset=rows,
            eval_dataset=rows,
            processing_class=smoke_tokenizer,
        )
    return trainers[True], trainers[False]


def token_losses(model, input_ids, labels, **inputs) -> torch.Tensor:
    """Per-position loss of predicting labels[t + 1] from the prefix up to t (0 where masked)."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, use_cache=False, **inputs).logits[0, :-1].float()
    return torch.nn.functional.cross_entropy(logits, labels[0, 1:], ignore_index=-100, reduction="none")


def test_packed_sequences_do_not_see_each_other(packed_trainer):
    packed, unpacked = packed_trainer
    model = packed.model.eval()
    (row,) = list(packed.train_dataset)  # all three examples fit in one packed row
    assert len(row["seq_lengths"]) == len(EXAMPLES)
    batch = packed.data_collator([row])
    assert "attention_mask" not in batch and batch["position_ids"][0].tolist().count(0) == len(EXAMPLES)

    losses = token_losses(model, batch["input_ids"], batch["labels"], position_ids=batch["position_ids"])
    starts = [0, *torch.cumsum(torch.tensor(row["seq_lengths"]), 0).tolist()]
    packed_per_example = sorted(losses[a : b - 1].sum().item() for a, b in itertools.pairwise(starts))

    alone = []
    for example in unpacked.train_dataset:
        ids, labels = torch.tensor([example["input_ids"]]), torch.tensor([example["labels"]])
        alone.append(token_losses(model, ids, labels).sum().item())
    assert packed_per_example == pytest.approx(sorted(alone), abs=1e-4)

    # The same row with a plain 2-D mask lets later sequences read earlier ones: the check can fail.
    leaky = token_losses(
        model, batch["input_ids"], batch["labels"], attention_mask=torch.ones_like(batch["input_ids"])
    )
    leaky_per_example = sorted(leaky[a : b - 1].sum().item() for a, b in itertools.pairwise(starts))
    assert leaky_per_example != pytest.approx(sorted(alone), abs=1e-4)


def test_scoring_only_supervised_positions_keeps_loss_and_gradients(packed_trainer, monkeypatch):
    import trl.trainer.utils as trl_utils

    from core.patches import score_supervised_positions_only

    _, unpacked = packed_trainer  # padded rows with masked prompts: positions that need no scoring
    model = unpacked.model.train()
    batch = unpacked.data_collator(list(unpacked.train_dataset))
    assert (batch["labels"] == -100).float().mean() > 0.3

    def loss_and_gradients() -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        loss = model(**batch, fused_lm_head=True).loss
        loss.backward()
        trainable = [p for p in model.parameters() if p.requires_grad]
        return loss.item(), [p.grad.float().clone() for p in trainable]

    monkeypatch.setattr(trl_utils, "_use_triton", lambda device: False)  # TRL's CPU path: every position
    every_loss, every_gradients = loss_and_gradients()
    with score_supervised_positions_only():
        assert trl_utils._use_triton(torch.device("cpu"))
        only_loss, only_gradients = loss_and_gradients()
    assert not trl_utils._use_triton(torch.device("cpu"))  # TRL's own rule again once training is over
    model.zero_grad()
    assert only_loss == pytest.approx(every_loss, abs=1e-5)
    for only, every in zip(only_gradients, every_gradients, strict=True):
        torch.testing.assert_close(only, every, atol=1e-5, rtol=1e-3)


def test_a_quantized_model_trains_float32_adapters_when_it_computes_in_float32(curated, packed_trainer):
    """SFTTrainer casts a 4-bit model's LoRA weights to bf16; the stage keeps them in the compute dtype."""
    from fine_tune.train import build_trainer, training_fingerprint

    def adapter_dtypes(model) -> set[torch.dtype]:
        return {p.dtype for name, p in model.named_parameters() if p.requires_grad and "lora_" in name}

    plain, _ = packed_trainer
    assert adapter_dtypes(plain.model) == {torch.bfloat16}  # TRL's rule (if it goes, so can the stage's)
    config = smoke_config(curated)
    paths = RunPaths.of(config)
    trainer = build_trainer(config, paths, training_fingerprint(config, paths.dataset / "data"))
    assert adapter_dtypes(trainer.model) == {torch.float32}


def test_two_processes_train_with_ddp(curated):
    run = fresh_run(curated, "ddp")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "fine_tune.train", "--config", str(SMOKE),
               "--set", f"run.output_dir={run / 'runs'}", "--set", f"model.embedded.cache_dir={run / 'base'}",
               "--set", "train.max_steps=4", "--set", "train.eval_steps=2",
               "--set", "train.save_steps=2"]  # fmt: skip
    result = STAGES.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run / "runs" / "smoke" / "reports" / "train_report.json").read_text())
    assert report["world_size"] == 2
    assert report["steps"] == 4
    assert (run / "runs" / "smoke" / "adapter" / "adapter_model.safetensors").stat().st_size > 8_000


@pytest.mark.skipif(torch.cuda.is_available(), reason="runs for real on a GPU")
def test_gpu_memory_script_skips_cleanly_without_a_gpu():
    result = STAGES.run(
        [sys.executable, "-m", "benchmarks.gpu_memory"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped, no CUDA GPU" in result.stdout
