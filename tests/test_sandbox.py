"""The sandbox against hostile programs: each is stopped and scored a failure in bounded time, the harness
survives, the other programs of the batch keep their results, and nothing is left running or on disk.

These run real programs under the isolation this machine allows; no sandbox here skips them."""

from __future__ import annotations

import ast
import os
import random
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from evaluation import sandbox, sandbox_driver
from evaluation.sandbox import Isolation, Limits, run_program, run_programs

SMALL = Limits(
    wall_seconds=2.0, cpu_seconds=1, memory_bytes=128 * 1024**2, output_bytes=16 * 1024, processes=24
)
PASSING = "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n"
WRONG = "def add(a, b):\n    return a - b\n\nassert add(2, 3) == 5\n"


@pytest.fixture(scope="module")
def strongest() -> Isolation:
    try:
        return sandbox.strongest()
    except sandbox.SandboxUnavailable as error:
        pytest.skip(str(error))


def available() -> list[Isolation]:
    return sandbox.available_isolations()


def test_the_isolation_in_use_is_described(strongest: Isolation) -> None:
    assert sandbox.isolation() == strongest.description
    assert strongest.name in strongest.description or strongest.name == "rlimits"


@pytest.mark.parametrize("isolation", available(), ids=lambda isolation: isolation.name)
def test_hostile_programs_fail_in_bounded_time_and_spare_the_batch(
    isolation: Isolation, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    secret = tmp_path / "secret.txt"
    secret.write_text("token")
    hostile = {
        "loop": "while True:\n    pass\n",
        "sleep": "import time\ntime.sleep(60)\n",
        # Bounded even if the process limit failed: at most 300 children, each gone within 30 s.
        "fork bomb": "import os, time\nfor _ in range(300):\n    if os.fork() == 0:\n        time.sleep(30)\n"
        "        os._exit(0)\n",
        "allocate": "blocks = []\nwhile True:\n    blocks.append(bytearray(8 * 1024 * 1024))\n",
        "flood": "while True:\n    print('x' * 1000)\n",
        "sys.exit(0)": "import sys\nsys.exit(0)\nassert 1 == 2\n",
        "os._exit(0)": "import os\nos._exit(0)\nassert 1 == 2\n",
        "kill parent": "import os, signal, time\nos.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(60)\n",
        "kill group 0": "import os, signal, time\nos.killpg(0, signal.SIGKILL)\ntime.sleep(60)\n",
        "write outside": f"open({str(outside)!r}, 'w').write('escaped')\n",
        "read a secret": f"assert open({str(secret)!r}).read() != 'token'\n",
        "read stdin": "input()\n",
    }
    if isolation.own_pid_namespace:
        hostile["kill everything"] = "import os, signal, time\nos.kill(-1, signal.SIGKILL)\ntime.sleep(60)\n"
    sources = [PASSING, *hostile.values(), WRONG]
    started = time.monotonic()
    outcomes = run_programs(sources, SMALL, using=isolation)
    elapsed = time.monotonic() - started

    first, *middle, last = outcomes
    assert first.status == "passed", first
    assert last.status == "wrong_answer" and last.detail == "AssertionError", last
    results = dict(zip(hostile, middle, strict=True))
    for name, outcome in results.items():
        assert not outcome.passed, (name, outcome)
        assert outcome.seconds < SMALL.wall_seconds + 1.0, (name, outcome)
    assert results["sleep"].status == "timeout"
    assert results["loop"].status in ("timeout", "killed")
    assert results["fork bomb"].status == "error" and "BlockingIOError" in results["fork bomb"].detail
    assert results["allocate"].status == "killed" and "memory" in results["allocate"].detail
    assert results["flood"].status == "killed" and "output limit" in results["flood"].detail
    assert len(results["flood"].output) <= 4096
    for name in ("sys.exit(0)", "os._exit(0)"):
        assert results[name].status == "error" and "before the end" in results[name].detail, results[name]
    assert results["read stdin"].status == "error" and "EOFError" in results["read stdin"].detail
    assert results["write outside"].status == "error"
    assert not outside.exists()
    assert results["read a secret"].status == "error"  # not readable, or not there at all
    # 13 to 14 programs on every core: the timeouts overlap.
    assert elapsed < 5 * SMALL.wall_seconds + 10


@pytest.mark.parametrize("isolation", available(), ids=lambda isolation: isolation.name)
def test_the_network_is_unreachable_when_the_isolation_says_so(isolation: Isolation) -> None:
    if not isolation.no_network:
        pytest.skip(f"{isolation.name} keeps the network")
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list[object] = []

    def serve() -> None:
        deadline = time.monotonic() + SMALL.wall_seconds + 1
        while time.monotonic() < deadline:
            try:
                accepted.append(server.accept())
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        source = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        outcome = run_program(source, SMALL, using=isolation)
    finally:
        thread.join()
        server.close()
    assert outcome.status == "error" and "Error" in outcome.detail, outcome
    assert accepted == []


@pytest.mark.parametrize("isolation", available(), ids=lambda isolation: isolation.name)
def test_each_isolation_scores_the_basic_cases(isolation: Isolation) -> None:
    cases = {
        PASSING: "passed",
        WRONG: "wrong_answer",
        "import sys\nsys.exit(0)\n": "error",
        "import time\ntime.sleep(60)\n": "timeout",
        "b = b'x' * 2**40\n": "killed",
    }
    outcomes = run_programs(list(cases), SMALL, using=isolation)
    assert [outcome.status for outcome in outcomes] == list(cases.values())


@pytest.mark.parametrize("isolation", available(), ids=lambda isolation: isolation.name)
def test_nothing_is_left_running(isolation: Isolation) -> None:
    """A grandchild that leaves the program's session (where a pid namespace can catch it) and sleeps
    outlives neither its run nor run_programs; its unique sleep duration finds it in /proc."""
    duration = f"{random.uniform(40, 50):.6f}"
    leave = "os.setsid()\n        " if isolation.own_pid_namespace else ""
    source = (
        "import os\n"
        "if os.fork() == 0:\n"
        "    if os.fork() == 0:\n"
        f"        {leave}os.execv('/bin/sleep', ['sleep', {duration!r}])\n"
        "    os._exit(0)\n"
        "os.wait()\n"
    )
    outcomes = run_programs([source, PASSING], SMALL, using=isolation)
    assert [outcome.status for outcome in outcomes] == ["passed", "passed"]
    time.sleep(0.3)
    assert not [pid for pid in _pids() if duration in _cmdline(pid)]


def test_the_temporary_directory_goes_even_when_the_program_locks_it(
    strongest: Isolation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    source = (
        "import os\n"
        "os.makedirs('locked/deeper')\n"
        "for i in range(300):\n"
        "    open(f'locked/deeper/{i}', 'w').close()\n"
        "    os.chmod(f'locked/deeper/{i}', 0)\n"
        "os.chmod('locked/deeper', 0o500)\n"
        "os.chmod('locked', 0)\n"
    )
    assert run_program(source, SMALL).status == "passed"
    assert list(tmp_path.iterdir()) == []


def test_a_syntax_error_is_found_without_running_anything(strongest: Isolation, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    outcome = run_program(f"open({str(marker)!r}, 'w')\ndef broken(:\n    pass\n", SMALL)
    assert outcome.status == "syntax_error" and "(line 2)" in outcome.detail
    assert outcome.seconds == 0.0 and not marker.exists()


def test_errors_say_what_went_wrong(strongest: Isolation) -> None:
    outcomes = run_programs(["print(undefined_name)\n", "assert 1 == 2, 'one is not two'\n"], SMALL)
    assert outcomes[0].status == "error"
    assert outcomes[0].detail == "NameError: name 'undefined_name' is not defined"
    assert outcomes[1].status == "wrong_answer" and outcomes[1].detail == "AssertionError: one is not two"


def test_our_environment_does_not_reach_the_program(
    strongest: Isolation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    outcome = run_program("import os\nassert 'HF_TOKEN' not in os.environ\n", SMALL)
    assert outcome.passed, outcome


def test_a_batch_runs_in_parallel_and_reports_progress(strongest: Isolation) -> None:
    sources = [f"assert {i} * 2 == {2 * i}\n" for i in range(20)]
    calls: list[tuple[int, int]] = []
    started = time.monotonic()
    outcomes = run_programs(sources, SMALL, progress=lambda done, total: calls.append((done, total)))
    elapsed = time.monotonic() - started
    assert all(outcome.passed for outcome in outcomes)
    assert calls == [(done, 20) for done in range(1, 21)]
    serial = sum(outcome.seconds for outcome in outcomes)
    cores = len(os.sched_getaffinity(0))
    if cores > 1:
        assert elapsed < serial * 0.9, (elapsed, serial)
    assert elapsed < 20


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="wall_seconds"):
        Limits(wall_seconds=0)


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_a_signal_unshare_could_not_pass_on_is_a_kill_not_an_error():
    """unshare --fork exits 1 with this line when it fails to re-raise its child's death signal (seen once
    under the CPU-time limit on a busy machine): the program was killed, it did not exit."""
    unshare = Isolation("unshare", "", no_network=True, own_pid_namespace=True)
    lost = sandbox._unreported(unshare, 1, 2.0, "unshare: sigprocmask unblock failed: Invalid argument\n")
    assert lost.status == "killed" and "unshare could not pass on" in lost.detail
    exited = sandbox._unreported(unshare, 1, 0.1, "Traceback ...\nValueError: x\n")
    assert exited.status == "error" and "ValueError" in exited.detail


DRIVER = Path(sandbox_driver.__file__)


def test_the_driver_imports_the_standard_library_only() -> None:
    """The sandboxed interpreter (`-I -S`) has the standard library alone, and what the driver imports
    runs again in every sandbox: nothing third-party, nothing of this project, not even lazily."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(DRIVER.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            relative = "." * node.level + (node.module or "")
            assert node.level == 0 and node.module, f"relative import from {relative}: this project's code"
            imported.add(node.module.partition(".")[0])
    assert {"os", "resource", "ctypes"} <= imported  # the walk found them, the one inside a function too
    outside = imported - sys.stdlib_module_names
    assert not outside, f"the driver imports from outside the standard library: {sorted(outside)}"


def test_the_sandbox_runs_the_driver_file_whole(tmp_path: Path) -> None:
    """What the sandboxed interpreter runs is the driver file's text, so the check above covers it all."""
    bubblewrap = next(candidate for candidate in sandbox.ISOLATIONS if candidate.name == "bubblewrap")
    command = sandbox._command(bubblewrap, tmp_path, 3, SMALL)
    assert command[command.index("-c") + 1] == DRIVER.read_text(encoding="utf-8")
