"""Every make variable reaches the program literally: never expanded by make, never re-parsed by a shell.

Each test runs `make` for real. A value holds what make or a shell would act on; every command in it
would create a file under the test's folder, so an empty folder shows that nothing ran. The exact
arguments are read from a stand-in `.venv` (`VENV=` on make's command line) whose `python` and
`accelerate` record them; the real stages show the same values in their one-line errors.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import shortened
from inference.models import NAME_SHOWN
from tests.conftest import REPO

STAGE_VARIABLES = ("CONFIG", "SET", "MODEL", "PROMPT", "PROMPTS_FILE", "HUB_REPO")
NODE_VARIABLES = ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
SERVE_VARIABLES = ("BESIDE", "HOST", "PORT")
VARIABLES = (
    *STAGE_VARIABLES,
    "PYTHON",
    "BENCH",
    "NPROC",
    "ACCELERATE_CONFIG",
    *NODE_VARIABLES,
    *SERVE_VARIABLES,
)
# An outer make (`make test`) passes its command line down through these.
MAKE_ENVIRONMENT = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")
# The stand-in interpreter: records its name and arguments, one JSON list a line, next to its bin/.
RECORDER = """\
import json, sys
from pathlib import Path
program = Path(sys.argv[0])
with open(program.parent.parent / "calls.jsonl", "a", encoding="utf-8") as calls:
    calls.write(json.dumps([program.name, *sys.argv[1:]]) + "\\n")
"""


def hostile(tmp: Path) -> str:
    """Quotes, `$`, backticks, `;`, `#`, a glob, a comma, a backslash, a newline, a leading `-`."""
    return (
        f'-it\'s "quoted" `touch {tmp}/ran1` $(touch {tmp}/ran2) $(shell touch {tmp}/ran3) $HOME ${{HOME}}'
        f"; touch {tmp}/ran4 # 100% a,b \\ *\n\tsecond line"
    )


def make(*args: str) -> subprocess.CompletedProcess:
    """`make` in the repository as a user runs it: none of the variables, nor an outer make's, inherited."""
    inherited = {*VARIABLES, *MAKE_ENVIRONMENT}
    env = {key: value for key, value in os.environ.items() if key not in inherited}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        ["make", "-C", str(REPO), *args], env=env, capture_output=True, text=True, timeout=120
    )


def nothing_ran(tmp: Path) -> None:
    assert not list(tmp.glob("ran*"))


def recorder(script: Path) -> None:
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(f"#!{sys.executable}\n{RECORDER}", encoding="utf-8")
    script.chmod(0o755)


def calls(folder: Path) -> list[list[str]]:
    """What the recorders under `folder`/<dir>/ were called with, in order."""
    lines = (folder / "calls.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A stand-in `.venv`, already installed, whose `python` and `accelerate` record their arguments."""
    for program in ("python", "accelerate"):
        recorder(tmp_path / "venv" / "bin" / program)
    (tmp_path / "venv" / ".installed").touch()
    (tmp_path / "venv" / ".export-installed").touch()
    return tmp_path / "venv"


@pytest.mark.parametrize(
    "target, module, extra",
    [
        ("base", "fine_tune.base", []),
        ("data", "data_prep", []),
        ("train", "fine_tune.train", []),
        ("merge", "fine_tune.merge", []),
        ("chat", "inference.chat", ["--model={}"]),
        ("compare", "inference.compare", ["--model={}"]),
        ("eval", "inference.evaluate", ["--model={}"]),
        ("export", "export", ["--model={}"]),
        ("infer", "inference", ["--model={}", "--prompt={}", "--prompts-file={}"]),
        ("push-data", "data_prep.push", ["--set=hub.dataset_repo={}"]),
    ],
)
def test_each_target_passes_its_variables_as_single_arguments(tmp_path, venv, target, module, extra):
    value = hostile(tmp_path)
    result = make(target, f"VENV={venv}", *(f"{name}={value}" for name in STAGE_VARIABLES))
    assert result.returncode == 0, result.stderr
    expected = ["-m", module, f"--config={value}", f"--sets={value}", *(arg.format(value) for arg in extra)]
    assert calls(venv) == [["python", *expected]]
    nothing_ran(tmp_path)


def test_serve_exports_what_it_serves_then_serves_it_on_host_and_port(tmp_path, venv):
    value = hostile(tmp_path)
    variables = [f"{name}={value}" for name in ("CONFIG", "SET", "MODEL", *SERVE_VARIABLES)]
    result = make("serve", f"VENV={venv}", *variables)
    assert result.returncode == 0, result.stderr
    common = ["--config=" + value, f"--sets={value}"]
    assert calls(venv) == [
        ["python", "-m", "export", *common, f"--model={value}", "--if-missing"],
        ["python", "-m", "export", *common, f"--model={value}", "--if-missing"],
        [
            "python",
            "-m",
            "inference.serve",
            *common,
            *(f"--{name}={value}" for name in ("model", "beside", "host", "port")),
        ],
    ]
    nothing_ran(tmp_path)


def test_push_gives_hub_repo_to_the_model_and_gguf_pushes(tmp_path, venv):
    value = hostile(tmp_path)
    result = make("push", f"VENV={venv}", f"HUB_REPO={value}", f"SET={value}")
    assert result.returncode == 0, result.stderr
    common = ["--config=configs/tiny.yaml", f"--sets={value}", f"--set=hub.model_repo={value}"]
    assert calls(venv) == [["python", "-m", module, *common] for module in ("fine_tune.push", "export.push")]
    nothing_ran(tmp_path)


def test_push_if_configured_gives_hub_repo_to_the_model_push(tmp_path, venv):
    value = hostile(tmp_path)
    result = make("push-if-configured", f"VENV={venv}", f"HUB_REPO={value}", f"SET={value}")
    assert result.returncode == 0, result.stderr
    common = ["--config=configs/tiny.yaml", f"--sets={value}"]
    assert calls(venv) == [
        ["python", "-m", "fine_tune.push", *common, f"--set=hub.model_repo={value}", "--if-configured"],
        ["python", "-m", "export.push", *common, f"--set=hub.model_repo={value}", "--if-configured"],
        ["python", "-m", "data_prep.push", *common, "--if-configured"],
    ]
    nothing_ran(tmp_path)


def test_empty_variables_pass_no_value_and_the_defaults_hold(venv):
    assert make("infer", f"VENV={venv}").returncode == 0
    defaults = ["--config=configs/tiny.yaml", "--sets=", "--model=new_model", "--prompt="]
    assert calls(venv) == [["python", "-m", "inference", *defaults]]


def test_nproc_launches_torchrun_with_the_value(tmp_path, venv):
    value = hostile(tmp_path)
    assert make("train", f"VENV={venv}", f"NPROC={value}").returncode == 0
    (call,) = calls(venv)
    launcher = ["python", "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={value}", "-m"]
    assert call[:6] == launcher
    nothing_ran(tmp_path)


def test_accelerate_config_and_nproc_reach_accelerate(tmp_path, venv):
    value = hostile(tmp_path)
    assert make("train", f"VENV={venv}", f"NPROC={value}", f"ACCELERATE_CONFIG={value}").returncode == 0
    (call,) = calls(venv)
    assert call[:5] == ["accelerate", "launch", f"--config_file={value}", f"--num_processes={value}", "-m"]
    nothing_ran(tmp_path)


def test_one_node_of_several_machines_reaches_torchrun(tmp_path, venv):
    value = hostile(tmp_path)
    variables = [f"{name}={value}" for name in ("NPROC", *NODE_VARIABLES)]
    assert make("train", f"VENV={venv}", *variables).returncode == 0
    (call,) = calls(venv)
    options = ["nnodes", "node_rank", "master_addr", "master_port", "nproc_per_node"]
    assert call[:8] == ["python", "-m", "torch.distributed.run", *(f"--{name}={value}" for name in options)]
    assert call[8:10] == ["-m", "fine_tune.train"]
    nothing_ran(tmp_path)


def test_one_node_of_several_machines_reaches_accelerate(tmp_path, venv):
    value = hostile(tmp_path)
    variables = [f"{name}={value}" for name in ("NPROC", "ACCELERATE_CONFIG", *NODE_VARIABLES)]
    assert make("train", f"VENV={venv}", *variables).returncode == 0
    (call,) = calls(venv)
    # NPROC is not a number, so it goes as typed (accelerate refuses it) rather than multiplied.
    options = ["num_processes", "num_machines", "machine_rank", "main_process_ip", "main_process_port"]
    assert call[:3] == ["accelerate", "launch", f"--config_file={value}"]
    assert call[3:8] == [f"--{name}={value}" for name in options]
    assert call[8:10] == ["-m", "fine_tune.train"]
    nothing_ran(tmp_path)


@pytest.mark.parametrize("nproc, nnodes, total", [("4", "2", "8"), ("08", "3", "24"), ("1", "1", "1")])
def test_accelerate_counts_the_processes_of_every_machine(venv, nproc, nnodes, total):
    config = "configs/accelerate/ddp.yaml"
    node = ["NODE_RANK=1", "MASTER_ADDR=10.0.0.1"]
    assert make("train", f"VENV={venv}", f"NPROC={nproc}", f"NNODES={nnodes}", f"ACCELERATE_CONFIG={config}",
                *node).returncode == 0  # fmt: skip
    (call,) = calls(venv)
    assert call[:4] == ["accelerate", "launch", f"--config_file={config}", f"--num_processes={total}"]
    if nnodes == "1":  # one machine: no rendezvous options
        assert call[4:6] == ["-m", "fine_tune.train"]
    else:
        machines = [f"--num_machines={nnodes}", "--machine_rank=1", "--main_process_ip=10.0.0.1"]
        assert call[4:9] == [*machines, "--main_process_port=29500", "-m"]


def test_several_machines_need_the_main_machines_address(venv):
    result = make("train", f"VENV={venv}", "NNODES=2", "NODE_RANK=1")
    assert result.returncode == 2
    assert "NNODES=2 needs MASTER_ADDR=<the address of the machine with NODE_RANK=0>" in result.stderr
    assert not (venv / "calls.jsonl").exists()


def test_bench_names_are_split_on_spaces_and_never_globbed(tmp_path, venv):
    value = hostile(tmp_path)
    assert make("bench", f"VENV={venv}", f"BENCH={value}").returncode == 0
    assert calls(venv) == [["python", "-m", "benchmarks", *value.split()]]
    nothing_ran(tmp_path)


def test_python_is_the_interpreter_that_creates_the_venv(tmp_path):
    # A file name cannot hold `/`, so its commands could not write under tmp_path (and would do nothing if
    # run): that the program at this exact path ran is the check.
    python = tmp_path / "bin" / 'it\'s "q" `false` $(false) $(shell false) $HOME ; false # *'
    recorder(python)
    fresh = tmp_path / "fresh"
    result = make("install", f"VENV={fresh}", f"PYTHON={python}")
    assert result.returncode != 0  # the stand-in creates no venv, so installing into it fails
    assert calls(tmp_path) == [[python.name, "-m", "venv", str(fresh)]]


# The real stages, stopped by their own one-line errors before any heavy work.


def test_infer_receives_model_and_prompt_as_typed(tmp_path):
    value = hostile(tmp_path)
    result = make("infer", f"MODEL={value}", f"PROMPT={value}")
    assert result.returncode == 2
    assert f"error: unknown model {shortened(value, NAME_SHOWN)!r}" in result.stderr  # as long as tmp_path
    nothing_ran(tmp_path)


def test_infer_receives_the_prompts_file_as_typed(tmp_path):
    path = hostile(tmp_path)
    result = make("infer", f"PROMPTS_FILE={path}")
    assert result.returncode == 2
    assert f"error: prompts file not found: {Path(path)}" in result.stderr
    nothing_ran(tmp_path)


def test_a_config_path_with_spaces_is_read_and_hub_repo_validated(tmp_path):
    folder = tmp_path / "my configs $HOME `false` $(false)"
    folder.mkdir()
    profile = folder / "a b; #.yaml"
    profile.write_text((REPO / "configs" / "smoke.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    result = make("push", f"CONFIG={profile}", f"HUB_REPO=x/y; touch {tmp_path}/ran3 #")
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: config error in {profile}: hub.model_repo")
    nothing_ran(tmp_path)


def test_set_splits_by_shell_rules_and_keeps_each_value_whole(tmp_path):
    # On one line: an override's value is read as YAML, where a bare line break is a syntax error.
    value = hostile(tmp_path).replace("\n\t", " ")
    # Split on spaces, `are` would be refused first; run.name is a value in the profile, so the stage
    # refuses the second override by quoting it whole.
    overrides = f'data.system_prompt="You are a helpful assistant" {shlex.quote("run.name.x=" + value)}'
    result = make("data", f"SET={overrides}")
    assert result.returncode == 2
    message = f"error: bad override {'run.name.x=' + value!r}: name is a value, not a section"
    assert message in result.stderr.splitlines()
    nothing_ran(tmp_path)


def test_an_unbalanced_quote_in_set_is_one_line():
    result = make("data", "SET=data.system_prompt='You are")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if not line.startswith("make: ***")]
    assert errors == [
        'error: bad override list "data.system_prompt=\'You are" (SET= or --sets): no closing quotation; '
        "quote a value with spaces as a shell does: a.b='x y'"
    ]
    assert "] Error 1" in result.stderr


def test_bench_receives_each_name(tmp_path):
    value = hostile(tmp_path)
    result = make("bench", f"BENCH={value[1:]}")  # argparse would take a leading `-` for an option
    assert result.returncode == 2
    for name in value[1:].split():
        assert name in result.stderr
    nothing_ran(tmp_path)
