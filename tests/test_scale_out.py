"""Scale-out: two machines (two torchrun nodes on 127.0.0.1, gloo on the CPU), a resume on another number of
processes, the dataset tokenized once for every process, and FSDP refused where it cannot shard."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch

from fine_tune.resume import PROCESSES_FILE, saved_world_size
from fine_tune.scale import ResumePlan, plan_resume, tokenization_source
from tests.conftest import REPO, SMOKE, STAGES, fresh_run, smoke_config

# Six steps of the smoke profile, a checkpoint after three, every step's loss logged.
SIX_STEPS = ["--set", "train.max_steps=6", "--set", "train.save_steps=3", "--set", "train.eval_steps=3",
             "--set", "train.logging_steps=1", "--set", "train.save_total_limit=5"]  # fmt: skip


def train_command(run: Path, processes: int, *extra: str, launcher: tuple[str, ...] = ()) -> list[str]:
    """`fine_tune.train` on the smoke profile in `run`, launched as make does for NPROC=processes, or by
    `launcher`."""
    if not launcher and processes > 1:
        launcher = ("-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}")
    return [sys.executable, *launcher, "-m", "fine_tune.train", "--config", str(SMOKE),
            "--set", f"run.output_dir={run / 'runs'}", "--set", f"model.embedded.cache_dir={run / 'base'}",
            *extra]  # fmt: skip


def train(run: Path, processes: int, *extra: str) -> subprocess.CompletedProcess:
    result = STAGES.run(
        train_command(run, processes, *extra), cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def report_of(run: Path) -> dict:
    return json.loads((run / "runs" / "smoke" / "reports" / "train_report.json").read_text())


def logged(run: Path, key: str) -> dict[int, float]:
    return {entry["step"]: entry[key] for entry in report_of(run)["log_history"] if key in entry}


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def assert_complete_adapter(folder: Path, reference: Path) -> None:
    """Every LoRA tensor of a one-process run's adapter is there, with its shape, and nothing else."""
    tensors, expected = adapter_tensors(folder), adapter_tensors(reference)
    assert {name: value.shape for name, value in tensors.items()} == {
        name: value.shape for name, value in expected.items()
    }
    assert len(expected) == 8  # 2 layers x (q_proj, v_proj) x (lora_A, lora_B)
    assert all(torch.isfinite(value).all() for value in tensors.values())


def copied_at(source: Path, name: str, step: int) -> Path:
    """A copy of a trained run as a kill after checkpoint-`step` leaves it: no later checkpoint, no
    adapter."""
    target = source.parent / name
    shutil.copytree(source, target, symlinks=True)
    smoke = target / "runs" / "smoke"
    for checkpoint in (smoke / "checkpoints").glob("checkpoint-*"):
        if int(checkpoint.name.rpartition("-")[2]) > step:
            shutil.rmtree(checkpoint)
    shutil.rmtree(smoke / "adapter")
    shutil.rmtree(smoke / "reports")
    return target


def checkpoint_loss(run: Path, step: int, batches: list[int]) -> float:
    """The training loss of checkpoint-`step`'s model on batches of the seeded order of epoch 1 (what a
    continued run's next step computes): answer tokens only, averaged over all of them."""
    from peft import set_peft_model_state_dict

    from core.runs import RunPaths
    from fine_tune.resume import training_fingerprint
    from fine_tune.train import build_trainer

    config = smoke_config(run)
    paths = RunPaths.of(config)
    trainer = build_trainer(config, paths, training_fingerprint(config, paths.dataset / "data"))
    set_peft_model_state_dict(trainer.model, adapter_tensors(paths.checkpoints / f"checkpoint-{step}"))
    order = list(trainer.get_train_dataloader())  # one process: the order that every world size shares
    total, count = 0.0, 0
    with torch.no_grad():
        for index in batches:
            batch = order[index]
            inputs = {key: batch[key] for key in ("input_ids", "attention_mask")}
            logits = trainer.model(**inputs).logits
            labels = batch["labels"][:, 1:]
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100, reduction="none"
            )
            total += float(losses.sum())
            count += int((labels != -100).sum())
    return total / count


@pytest.fixture(scope="module")
def single(curated):
    """The smoke run on one process: six steps, checkpoints at 3 and 6."""
    run = fresh_run(curated, "single")
    train(run, 1, *SIX_STEPS)
    return run


@pytest.fixture(scope="module")
def double(curated):
    """The same run on two processes (DDP over gloo), and what it printed."""
    run = fresh_run(curated, "double")
    return run, train(run, 2, *SIX_STEPS)


# Where a resumed run continues (no training).


def trainer_progress(step: int, steps_per_epoch: int, per_process: int, accumulation: int) -> float:
    """The Trainer's `epoch` after `step` optimizer steps: the epoch, plus this process's batches in it over
    its batches per epoch."""
    if step == 0:
        return 0.0
    epoch, into = divmod(step, steps_per_epoch)
    if into == 0:  # the last step of an epoch
        return epoch - 1 + per_process / per_process
    return epoch + (into * accumulation) / per_process


@pytest.mark.parametrize("rows, batch, accumulation", [(52, 4, 1), (53, 4, 3), (9, 1, 2), (7, 4, 1)])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_on_the_same_world_size_the_position_is_the_trainers(rows, batch, accumulation, world):
    per_process = math.ceil(math.ceil(rows / batch) / world)
    steps_per_epoch = math.ceil(per_process / accumulation)
    for step in range(1, 3 * steps_per_epoch):
        plan = plan_resume(
            step=step, progress=trainer_progress(step, steps_per_epoch, per_process, accumulation),
            old_world_size=world, world_size=world, rows=rows, batch_size=batch, accumulation=accumulation,
            checkpoint_max_steps=3 * steps_per_epoch, max_steps=-1, epochs=3, length_changed=False,
        )  # fmt: skip
        # transformers' own arithmetic (Trainer._init_training_state)
        epoch, into = divmod(step, steps_per_epoch)
        assert (plan.epoch, plan.skip_batches) == (epoch, into * accumulation)
        assert plan.max_steps == 3 * steps_per_epoch and plan.num_train_epochs == 3 and plan.rows_again == 0
        assert plan.rows_at_end == 3 * rows


def smoke_plan(step: int, progress: float, old: int, new: int, **length) -> ResumePlan:
    """The smoke run's 52 training rows in batches of 4."""
    settings = {"checkpoint_max_steps": 6, "max_steps": 6, "epochs": 1.0, "length_changed": False, **length}
    return plan_resume(step=step, progress=progress, old_world_size=old, world_size=new, rows=52,
                       batch_size=4, accumulation=1, **settings)  # fmt: skip


def test_a_resume_on_another_world_size_continues_at_the_row_it_reached():
    # Step 3 of one process: 3 batches (12 rows) of the seeded order. The Trainer would skip 3 batches on each
    # of 2 processes (24 rows, 12 never trained); a step now takes 2 batches, so 1 each, and rows 8-11 again.
    plan = smoke_plan(3, 3 / 13, old=1, new=2)
    assert (plan.epoch, plan.skip_batches, plan.rows_seen, plan.rows_again) == (0, 1, 12, 4)
    assert (plan.max_steps, plan.old_global_batch, plan.global_batch, plan.rows_at_end) == (6, 4, 8, 32)
    # Step 3 of two processes: 6 batches (24 rows). The Trainer would skip 3 (rows 12-23 trained twice).
    plan = smoke_plan(3, 3 / 7, old=2, new=1)
    assert (plan.epoch, plan.skip_batches, plan.rows_seen, plan.rows_again) == (0, 6, 24, 0)
    assert plan.rows_at_end == 36
    # A run counted in epochs keeps its length in steps (13 at 4 rows), and so its learning-rate schedule: at
    # 8 rows a step it goes into a second epoch (epoch 1 has 7 steps of 2 batches, the last one filled in).
    plan = smoke_plan(8, 8 / 13, old=1, new=2, max_steps=-1, checkpoint_max_steps=13)
    assert (plan.epoch, plan.skip_batches, plan.max_steps, plan.num_train_epochs) == (0, 4, 13, 2)
    assert plan.rows_at_end == 52 + 16
    # ... or, when train.epochs changed, as many steps as reach it from here: 2 epochs of 7 steps, 4 done.
    plan = smoke_plan(8, 8 / 13, old=1, new=2, max_steps=-1, checkpoint_max_steps=13, epochs=2.0,
                      length_changed=True)  # fmt: skip
    assert (plan.max_steps, plan.num_train_epochs, plan.rows_at_end) == (8 + 14 - 4, 2, 104)
    # Two processes' epoch end (progress lands just below 1.0): the next epoch from its start.
    plan = smoke_plan(7, 6.999999999999999 / 7, old=2, new=1, max_steps=20)
    assert (plan.epoch, plan.skip_batches, plan.rows_seen) == (1, 0, 52)


def test_the_world_size_of_a_checkpoint(tmp_path):
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    (recorded / PROCESSES_FILE).write_text(json.dumps({"world_size": 3}))
    older = tmp_path / "older"  # saved before processes.json: the trainer's random-state files tell
    older.mkdir()
    for rank in range(4):
        (older / f"rng_state_{rank}.pth").touch()
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "rng_state.pth").touch()
    assert [saved_world_size(path) for path in (recorded, older, alone, tmp_path)] == [3, 4, 1, None]


def make_source(arguments: tuple[Path, Path, str]) -> Path:
    return tokenization_source(*arguments)


def test_the_copy_to_tokenize_is_made_once_of_links_and_leaves_the_dataset_alone(tmp_path):
    dataset = tmp_path / "dataset" / "data"
    (dataset / "train").mkdir(parents=True)
    (dataset / "train" / "data-00000-of-00001.arrow").write_bytes(b"rows")
    (dataset / "dataset_dict.json").write_text("{}")
    before = sorted(path.relative_to(dataset) for path in dataset.rglob("*"))
    tokenized = tmp_path / "tokenized"
    with ProcessPoolExecutor(4) as pool:  # processes starting together
        sources = set(pool.map(make_source, [(dataset, tokenized, "ab" * 32)] * 8))
    assert sources == {tokenized / ("ab" * 8)}
    (source,) = sources
    assert sorted(path.name for path in tokenized.iterdir()) == ["ab" * 8]  # no staging folder left
    arrow = "train/data-00000-of-00001.arrow"
    assert (source / arrow).stat().st_ino == (dataset / arrow).stat().st_ino
    # A new curated dataset gets its own copy; the old one goes, and so does a staging folder an hour old (a
    # killed process's), not a newer one (it may be another machine's, in the making).
    stale, fresh = tokenized / ".cd.tmp-1-1", tokenized / ".cd.tmp-2-2"
    stale.mkdir()
    fresh.mkdir()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    assert tokenization_source(dataset, tokenized, "cd" * 32) == tokenized / ("cd" * 8)
    assert sorted(path.name for path in tokenized.iterdir()) == [fresh.name, "cd" * 8]
    assert sorted(path.relative_to(dataset) for path in dataset.rglob("*")) == before


# Real runs.


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.e2e
def test_two_machines_of_one_process_each_train_to_the_end(curated, single):
    run = fresh_run(curated, "two-nodes")
    port = free_port()
    nodes, logs = [], [run / "node-0.log", run / "node-1.log"]
    for rank in (0, 1):  # what `make train NNODES=2 NODE_RANK=<rank> MASTER_ADDR=127.0.0.1 ...` runs on each
        launcher = ("-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
                    "--master_addr=127.0.0.1", f"--master_port={port}", "--nproc_per_node=1")  # fmt: skip
        command = train_command(run, 1, "--set", "train.max_steps=4", "--set", "train.save_steps=2",
                                "--set", "train.eval_steps=2", launcher=launcher)  # fmt: skip
        with logs[rank].open("w") as log:
            node = subprocess.Popen(
                command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
            )
            nodes.append(node)
    deadline = time.monotonic() + 600
    try:
        while any(node.poll() is None for node in nodes):
            if any(node.poll() for node in nodes):
                break  # a node that failed leaves the other waiting for it for good: both logs are shown
            assert time.monotonic() < deadline, "two nodes did not finish within 10 minutes"
            time.sleep(0.5)
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
        errors = [log.read_text() for log in logs]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(error[-2000:] for error in errors)
    report = report_of(run)
    assert (report["world_size"], report["steps"], report["global_batch"]) == (2, 4, 8)
    assert report["examples_seen"] == 4 * 8
    assert "process 1 of 2: read the tokenized dataset" in errors[1]
    assert_complete_adapter(run / "runs" / "smoke" / "adapter", single / "runs" / "smoke" / "adapter")


@pytest.mark.e2e
def test_the_dataset_is_tokenized_once_by_the_main_process(double, single):
    run, result = double
    (made,) = [line for line in result.stderr.splitlines() if line.startswith("process 0 of 2:")]
    prepared = r"process 0 of 2: tokenized the dataset into \S+ \((\d+) steps computed, \d+ read\)"
    computed = re.fullmatch(prepared, made)
    (read,) = [line for line in result.stderr.splitlines() if line.startswith("process 1 of 2:")]
    assert read.startswith("process 1 of 2: read the tokenized dataset from") and "none computed" in read
    # The cache holds the steps of one preparation: the second process wrote none of its own.
    (cache,) = (run / "runs" / "smoke" / "tokenized").iterdir()
    assert computed and len(list(cache.rglob("cache-*.arrow"))) == int(computed[1]) > 0
    # A run on one process has nobody to share with: it leaves no cache.
    assert not (single / "runs" / "smoke" / "tokenized").exists()
    # and the curated dataset is as make data wrote it
    assert not list((run / "runs" / "smoke" / "dataset").resolve().rglob("cache-*"))


@pytest.mark.e2e
def test_a_run_checkpointed_on_one_process_resumes_on_two(single):
    run = copied_at(single, "one-then-two", 3)
    result = train(run, 2, *SIX_STEPS)
    announced = (
        "step 3 of 6; checkpointed on 1 process(es), now 2: global batch 4 -> 8 rows per step; the data "
        "order is kept but not the exact position: 4 rows before row 12 of 52 in epoch 1 are trained again"
    )
    assert announced in result.stderr
    report = report_of(run)
    assert (report["steps"], report["steps_this_run"], report["world_size"]) == (6, 3, 2)
    assert (report["resumed_from_world_size"], report["examples_seen"]) == (1, 8 + 3 * 8)
    # The schedule goes on: the same learning rate at each step as the run that never stopped.
    rates, uninterrupted = logged(run, "learning_rate"), logged(single, "learning_rate")
    assert [rates[step] for step in (4, 5, 6)] == [uninterrupted[step] for step in (4, 5, 6)]
    # Step 4 starts from checkpoint-3's weights, on batches 2 and 3 of the order (rows 8-15): the Trainer's
    # own arithmetic would have taken batches 6 and 7.
    assert logged(run, "loss")[4] == pytest.approx(checkpoint_loss(run, 3, [2, 3]), abs=1e-4)
    adapter = run / "runs" / "smoke" / "adapter"
    assert_complete_adapter(adapter, single / "runs" / "smoke" / "adapter")
    before = adapter_tensors(run / "runs" / "smoke" / "checkpoints" / "checkpoint-3")
    assert any(not torch.equal(value, before[name]) for name, value in adapter_tensors(adapter).items())


@pytest.mark.e2e
def test_a_run_checkpointed_on_two_processes_resumes_on_one(double, single):
    source, _ = double
    run = copied_at(source, "two-then-one", 3)
    result = train(run, 1, *SIX_STEPS)
    announced = (
        "step 3 of 6; checkpointed on 2 process(es), now 1: global batch 8 -> 4 rows per step; the data "
        "continues in the same order at row 24 of 52 in epoch 1"
    )
    assert announced in result.stderr
    report = report_of(run)
    assert (report["steps"], report["steps_this_run"], report["world_size"]) == (6, 3, 1)
    assert (report["resumed_from_world_size"], report["examples_seen"]) == (2, 24 + 3 * 4)
    rates, uninterrupted = logged(run, "learning_rate"), logged(source, "learning_rate")
    assert [rates[step] for step in (4, 5, 6)] == [uninterrupted[step] for step in (4, 5, 6)]
    # Step 4 is checkpoint-3's model on batch 6 of the order (rows 24-27), not batch 3 (trained already).
    assert logged(run, "loss")[4] == pytest.approx(checkpoint_loss(run, 3, [6]), abs=1e-4)
    adapter = run / "runs" / "smoke" / "adapter"
    assert_complete_adapter(adapter, single / "runs" / "smoke" / "adapter")
    before = adapter_tensors(run / "runs" / "smoke" / "checkpoints" / "checkpoint-3")
    assert any(not torch.equal(value, before[name]) for name, value in adapter_tensors(adapter).items())


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU FSDP runs")
def test_fsdp_is_refused_in_one_line_on_a_machine_without_gpus(tmp_path):
    # accelerate 1.15 makes a run FSDP only on GPUs: on CPUs the config would train with plain DDP, or stop in
    # a traceback (fsdp_sync_module_states looks for a device).
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "configs" / "accelerate" / "fsdp_qlora.yaml"), "--num_processes=2",
               *train_command(tmp_path, 1)[1:]]  # fmt: skip
    result = STAGES.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    errors = {line for line in result.stderr.splitlines() if line.startswith("error:")}
    assert errors == {
        "error: FSDP (an accelerate config with distributed_type: FSDP) needs CUDA GPUs and this machine has "
        "none: accelerate shards a model only on GPUs. On CPUs train with NPROC=N (DDP over gloo), with or "
        "without ACCELERATE_CONFIG=configs/accelerate/ddp.yaml"
    }
    assert not (tmp_path / "runs").exists()
