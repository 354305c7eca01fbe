"""The suite's prestarted Python (tests/prestarted.py): a forked stage is the process `python -m` gives."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.prestarted import PrestartedPython

# A module that reports what `python -m probe ...` sees, then ends as its first argument says.
PROBE = """
import atexit, json, os, sys, threading, time
atexit.register(print, "atexit ran")
threading.Thread(target=lambda: (time.sleep(0.2), print("a thread ended"))).start()
print(json.dumps({
    "argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "name": __name__,
    "variable": os.environ.get("PROBE_VARIABLE"), "stdin": sys.stdin.read(),
    "main": sys.modules["__main__"].__spec__.name,
}))
print("to stderr", file=sys.stderr)
ending = sys.argv[1]
if ending == "raise":
    raise ValueError("a stage's error")
if ending == "message":
    sys.exit("one line naming what is wrong")
if ending == "sleep":
    time.sleep(60)
sys.exit(int(ending))
"""


@pytest.fixture(scope="module")
def prestarted():
    python = PrestartedPython(dict(os.environ), preloaded=("json",))
    yield python
    python.close()


@pytest.fixture
def probe(tmp_path: Path) -> Path:
    (tmp_path / "probe.py").write_text(PROBE)
    return tmp_path


def both(prestarted: PrestartedPython, folder: Path, *args: str, env: dict | None = None) -> tuple:
    """`python -m probe *args` run by `prestarted` and by subprocess.run; whether `prestarted` forked it."""
    command = [sys.executable, "-m", "probe", *args]
    options = {"cwd": folder, "input": "typed\ninput", "capture_output": True, "text": True, "timeout": 30}
    options["env"] = env or dict(os.environ)
    forks = prestarted.forks
    forked = prestarted.run(command, **options)
    return forked, subprocess.run(command, **options), prestarted.forks == forks + 1


@pytest.mark.parametrize("ending", ["0", "3", "raise", "message"])
def test_a_forked_stage_sees_and_gives_what_a_fresh_python_does(prestarted, probe, ending):
    forked, fresh, was_forked = both(prestarted, probe, ending, "a value with spaces", "--option=-1")
    assert was_forked
    assert (forked.returncode, forked.stdout) == (fresh.returncode, fresh.stdout)
    assert forked.stdout.endswith("a thread ended\natexit ran\n")
    assert forked.stderr.splitlines()[0] == fresh.stderr.splitlines()[0] == "to stderr"
    assert forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1]


def test_another_environment_gets_a_fresh_python(prestarted, probe):
    forked, fresh, was_forked = both(prestarted, probe, "0", env={**os.environ, "PROBE_VARIABLE": "set"})
    assert not was_forked
    assert '"variable": "set"' in forked.stdout
    assert forked.stdout == fresh.stdout


def test_a_stage_past_its_timeout_is_killed_and_the_next_one_runs(prestarted, probe):
    with pytest.raises(subprocess.TimeoutExpired):
        prestarted.run(
            [sys.executable, "-m", "probe", "sleep"], cwd=probe, input=None, capture_output=True, text=True,
            timeout=2, env=dict(os.environ),
        )  # fmt: skip
    forked, fresh, was_forked = both(prestarted, probe, "0")
    assert was_forked and forked.returncode == 0
    assert forked.stdout == fresh.stdout
