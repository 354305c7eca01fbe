"""The wheels make gpu-check brings to a GPU machine that reaches no package registry: downloaded where PyPI
is reachable (`make gpu-check-wheels`), and on the GPU machine, those it lacks installed into a folder of
their own, with which the check restarts."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from gpu_check import CheckFailed
from synthetic import REPO

WHEELS = REPO / ".cache" / "gpu-wheels"
SITE = REPO / ".cache" / "gpu-site"
# The distributions the training, merge and compare stages need beyond what a PyTorch machine usually has
# (torch, transformers, accelerate, numpy, pyarrow, pandas, PyYAML, lxml, matplotlib, tensorboard,
# safetensors, tokenizers, huggingface_hub, psutil), with their own requirements that such a machine lacks.
# peft and typing-extensions come along in case the machine's are older than this project's.
BUNDLE = ("bitsandbytes", "trl", "peft", "datasets", "dill", "multiprocess", "pydantic", "pydantic-core",
          "annotated-types", "typing-inspection", "typing-extensions", "rouge-score", "nltk")  # fmt: skip
SOURCE_ONLY = {"rouge-score"}  # no wheel on PyPI: built here (pure Python, so it installs anywhere)
BUNDLE_LIMIT = 64 * 2**20  # what travels with the repository to a machine without a registry
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)
RESTARTED = "GPU_CHECK_SITE"  # set in the process that runs with the installed wheels


def download_wheels(folder: Path, python_version: str) -> int:
    """The bundle's wheels, at the versions installed in this environment, for `python_version` on x86-64
    Linux, into `folder` (emptied first); its size in bytes, which must stay within BUNDLE_LIMIT."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in BUNDLE]
    binary = [pin for pin in pins if pin.split("==")[0] not in SOURCE_ONLY]
    targets = [f"--platform={platform}" for platform in PLATFORMS]
    options = [
        "--no-deps",
        "--only-binary=:all:",
        "--implementation=cp",
        f"--python-version={python_version}",
    ]
    subprocess.run([*pip, "download", *options, *targets, f"--dest={folder}", *binary], check=True)
    built = [pin for pin in pins if pin.split("==")[0] in SOURCE_ONLY]
    subprocess.run([*pip, "wheel", "--no-deps", f"--wheel-dir={folder}", *built], check=True)
    return sum(path.stat().st_size for path in folder.glob("*.whl"))


def wheels_to_install(folder: Path) -> list[Path]:
    """The wheels in `folder` whose distribution this Python lacks or has at an older version."""
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import Version

    needed = []
    for wheel in sorted(folder.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        try:
            installed = importlib.metadata.version(canonicalize_name(name))
        except importlib.metadata.PackageNotFoundError:
            needed.append(wheel)
            continue
        if Version(installed) < version:
            needed.append(wheel)
    return needed


def install_wheels(wheels: list[Path], site: Path) -> None:
    """Install `wheels` (no dependencies, no index) into the folder `site`, replacing what it held."""
    shutil.rmtree(site, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
               "--no-deps", "--no-compile", f"--target={site}", *map(str, wheels)]  # fmt: skip
    subprocess.run(command, check=True)


def with_dependencies(argv: list[str]) -> None:
    """Make sure this process can import what the stages need: install the bundled wheels that are missing
    or older here into SITE, then restart with SITE first on the path. Returns when nothing is missing."""
    needed = wheels_to_install(WHEELS) if WHEELS.is_dir() else []
    if not needed:
        missing = [name for name in ("trl", "bitsandbytes", "peft", "datasets", "pydantic", "rouge_score")
                   if importlib.util.find_spec(name) is None]  # fmt: skip
        if missing:
            raise CheckFailed(
                f"this Python lacks {', '.join(missing)} and {WHEELS} holds no wheels for them: run `make "
                "gpu-check-wheels` where PyPI is reachable and bring that folder along, or `make install`"
            )
        return
    if os.environ.get(RESTARTED):
        raise CheckFailed(f"{', '.join(w.name for w in needed)} still missing after installing into {SITE}")
    print(f"gpu-check: installing {len(needed)} bundled wheels into {SITE}", flush=True)
    install_wheels(needed, SITE)
    path = os.pathsep.join(filter(None, [str(SITE), os.environ.get("PYTHONPATH")]))
    os.environ.update({"PYTHONPATH": path, RESTARTED: "1"})
    os.execv(sys.executable, [sys.executable, "-m", "gpu_check", *argv])
