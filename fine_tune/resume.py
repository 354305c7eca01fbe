"""Which checkpoint `make train` may resume: only one of the same run, and only one that can be read.

Every checkpoint carries `run_fingerprint.json`: a digest of the curated dataset's files and every setting
that changes the model or the order of the data (the number of processes is not one of them: a run may
resume on another world size; nor are `train.epochs` and `train.max_steps`: raising them continues a run).
`train.resume: auto` resumes the newest readable checkpoint if its fingerprint matches, and otherwise stops
with one line naming what changed. A checkpoint that cannot be read (a truncated state, adapter or
optimizer file) is reported and passed over for the one before it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import Config
from core.errors import UserError

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "run_fingerprint.json"
# The world a checkpoint was saved under (processes, per-device batch, accumulation, global batch).
PROCESSES_FILE = "processes.json"
# Settings that change neither the weights a step produces nor the order of the data.
NOT_FINGERPRINTED = {
    "model.embedded.cache_dir",
    "train.epochs",
    "train.max_steps",
    "train.resume",
    "train.logging_steps",
    "train.eval_steps",
    "train.save_steps",
    "train.save_total_limit",
    "train.eval_batch_size",
    "train.early_stopping_patience",
    "train.load_best_model_at_end",
    "train.gradient_checkpointing",
}
FINGERPRINTED_SECTIONS = ("model", "quant", "lora", "train")
START_OVER = "start over with SET=train.resume=never (deletes the checkpoints) or use another run.name"


def flatten(section: dict[str, Any], prefix: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in section.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def dataset_digest(dataset_dir: Path) -> str:
    """A digest of the dataset's Arrow files (names and bytes): any change to the curated rows changes it."""
    digest = hashlib.sha256()
    for path in sorted(dataset_dir.rglob("*.arrow")):
        digest.update(str(path.relative_to(dataset_dir)).encode() + b"\0")
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def training_length(config: Config) -> dict[str, Any]:
    """How long the run is meant to be: changing it continues a run rather than making another one."""
    return {"train.epochs": config.train.epochs, "train.max_steps": config.train.max_steps}


def training_fingerprint(config: Config, dataset_dir: Path) -> dict[str, Any]:
    """What a checkpoint was trained on: the dataset's digest and the settings that shape the model, and
    the run's length."""
    dumped = config.model_dump(mode="json")
    settings = {"run.seed": config.run.seed}
    for section in FINGERPRINTED_SECTIONS:
        settings.update(flatten(dumped[section], section))
    if config.peft.method != "lora":  # LoRA's runs keep the fingerprint they had before peft.method existed
        settings.update(flatten(dumped["peft"], "peft"))
    settings = {key: value for key, value in sorted(settings.items()) if key not in NOT_FINGERPRINTED}
    return {"dataset": dataset_digest(dataset_dir), "settings": settings, "length": training_length(config)}


def fingerprint_changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints but their lengths, in words: `lora.r 8 -> 4`, `the curated
    dataset`."""
    changes = []
    if before.get("dataset") != now["dataset"]:
        changes.append("the curated dataset, which make data has rewritten since")
    old, new = before.get("settings", {}), now["settings"]
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key):
            changes.append(f"{key} {json.dumps(old.get(key))} -> {json.dumps(new.get(key))}")
    return changes


class UnreadableCheckpoint(Exception):
    """A checkpoint whose files are missing, truncated or garbage."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    max_steps: int  # the run's length when it was saved
    stopped: bool  # training had ended (the planned steps done, or stopped early)
    tokens_seen: int
    best_checkpoint: Path | None
    fingerprint: dict[str, Any]
    progress: float = 0.0  # the trainer's epoch progress: epochs done plus the fraction of the current one
    world_size: int | None = None  # the processes it was trained on; None when that was not recorded

    @property
    def length(self) -> dict[str, Any] | None:
        return self.fingerprint.get("length")


def step_of(path: Path) -> int:
    return int(path.name.rpartition("-")[2])


def saved_checkpoints(checkpoints: Path) -> list[Path]:
    """The checkpoints whose save finished (the trainer writes trainer_state.json last), newest first."""
    complete = [path for path in checkpoints.glob("checkpoint-*") if (path / "trainer_state.json").is_file()]
    return sorted(complete, key=step_of, reverse=True)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnreadableCheckpoint(f"{path.name} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UnreadableCheckpoint(f"{path.name} cannot be read ({error})") from None
    if not isinstance(data, dict):
        raise UnreadableCheckpoint(f"{path.name} is not a JSON object")
    return data


def check_weights(path: Path) -> None:
    """Every weight and state file is whole: safetensors headers cover their files, zip archives (torch's
    .pt/.pth files) pass their CRC checks."""
    from safetensors import SafetensorError, safe_open

    for weights in path.glob("*.safetensors"):
        try:
            with safe_open(str(weights), "pt"):
                pass
        except (SafetensorError, OSError) as error:
            raise UnreadableCheckpoint(f"{weights.name} is damaged ({error})") from None
    for archive in [*path.glob("*.pt"), *path.glob("*.pth")]:
        try:
            with zipfile.ZipFile(archive) as opened:
                bad = opened.testzip()
        except (zipfile.BadZipFile, OSError) as error:
            raise UnreadableCheckpoint(f"{archive.name} is damaged ({error})") from None
        if bad is not None:
            raise UnreadableCheckpoint(f"{archive.name} is damaged ({bad} fails its CRC check)")


def saved_world_size(path: Path) -> int | None:
    """The number of processes a checkpoint was saved under: recorded in processes.json, or for a checkpoint
    older than that file, told by the trainer's random-state files (rng_state.pth for one process,
    rng_state_<rank>.pth for each of several)."""
    try:
        recorded = json.loads((path / PROCESSES_FILE).read_text(encoding="utf-8"))["world_size"]
        if isinstance(recorded, int) and recorded > 0:
            return recorded
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        pass
    ranks = [name.stem.rpartition("_")[2] for name in path.glob("rng_state_*.pth")]
    if ranks and all(rank.isdigit() for rank in ranks):
        return max(int(rank) for rank in ranks) + 1
    return 1 if (path / "rng_state.pth").is_file() else None


def read_checkpoint(path: Path) -> Checkpoint:
    state = read_json(path / "trainer_state.json")
    fingerprint = read_json(path / FINGERPRINT_FILE)
    if not (path / "adapter_model.safetensors").is_file():
        raise UnreadableCheckpoint("adapter_model.safetensors is missing")
    check_weights(path)
    control = state.get("stateful_callbacks", {}).get("TrainerControl", {}).get("args", {})
    try:
        return Checkpoint(
            path=path,
            step=int(state["global_step"]),
            max_steps=int(state["max_steps"]),
            stopped=bool(control.get("should_training_stop", False)),
            tokens_seen=int(state.get("num_input_tokens_seen", 0)),
            best_checkpoint=Path(best) if (best := state.get("best_model_checkpoint")) else None,
            fingerprint=fingerprint,
            progress=float(state.get("epoch") or 0.0),
            world_size=saved_world_size(path),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise UnreadableCheckpoint(f"trainer_state.json lacks {error}") from None


def newest_readable(checkpoints: Path) -> Checkpoint | None:
    """The newest checkpoint that can be read; the unreadable ones newer than it are reported and passed
    over. None when there is no checkpoint; an error when none of them can be read."""
    candidates = saved_checkpoints(checkpoints)
    for path in candidates:
        try:
            return read_checkpoint(path)
        except UnreadableCheckpoint as problem:
            log.warning("checkpoint %s cannot be used: %s; trying the one before it", path, problem)
    if candidates:
        raise UserError(f"no checkpoint in {checkpoints} can be read (see above): {START_OVER}")
    return None


def checkpoint_to_resume(config: Config, checkpoints: Path, fingerprint: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint this run continues from, or None to start from the base."""
    if config.train.resume == "never":
        return None
    if config.train.resume != "auto":
        path = Path(config.train.resume)
        try:
            chosen = read_checkpoint(path)
        except UnreadableCheckpoint as problem:
            raise UserError(f"train.resume: {path} is not a usable checkpoint: {problem}") from None
        changes = fingerprint_changes(chosen.fingerprint, fingerprint)
        if changes:
            log.warning("resuming %s although it was trained on other settings: %s", path, "; ".join(changes))
        return chosen
    chosen = newest_readable(checkpoints)
    if chosen is None:
        return None
    changes = fingerprint_changes(chosen.fingerprint, fingerprint)
    if changes:
        raise UserError(
            f"{chosen.path} was trained on other settings than this run's ({'; '.join(changes)}): "
            + START_OVER
        )
    return chosen


def write_fingerprint(folder: Path, fingerprint: dict[str, Any]) -> None:
    (folder / FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=2) + "\n")


def save_fingerprint_callback(fingerprint: dict[str, Any]):
    """A trainer callback that writes the run's fingerprint, and the world it was saved under, into every
    checkpoint it saves."""
    from transformers import TrainerCallback

    class SaveFingerprint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                write_fingerprint(folder, fingerprint)
                batch, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
                world = {
                    "world_size": args.world_size,
                    "per_device_batch": batch,
                    "gradient_accumulation_steps": accumulation,
                    "global_batch": args.world_size * batch * accumulation,
                }
                (folder / PROCESSES_FILE).write_text(json.dumps(world, indent=2) + "\n")

    return SaveFingerprint()
