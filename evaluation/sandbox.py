"""Run programs a model wrote, each in a sandbox, and say how each one ended.

Model code is never run in our process nor with our rights (see ../shared/DESIGN.md, "Model code runs
in a sandbox"): each program runs in a fresh Python interpreter started in its own process group, under
the strongest isolation this machine allows, detected once by running a trivial program through each:

1. bubblewrap (`bwrap`): own pid, network, IPC and UTS namespaces; a new root holding only the system
   directories and the interpreter, read-only; a private, size-capped /tmp as its directory.
2. `unshare --net --pid --fork --mount-proc`: own pid, network and mount namespaces; a private,
   size-capped /tmp as its directory; /root, /home, /run, /var/tmp and /dev/shm hidden behind empty
   file systems (the interpreter, when it lives under one of them, is mounted back). The rest of the
   host's files stay visible, readable where `nobody` may read.
3. Resource limits and a process group only, in a temporary directory. The network is reachable and a
   process that leaves its group (`setsid`) can outlive the program. Only as root, so that the program
   still runs as `nobody`.

When none works, running a program raises SandboxUnavailable rather than run it unprotected.

Inside, the driver (evaluation/sandbox_driver.py, standard library only, whose text is the interpreter's
`-c` argument) sets the limits, drops to `nobody` when it started as root, runs the program and writes
`nonce status detail` to a pipe once the whole source has run or raised; a program that ends early never
writes the nonce, so it can never pass. The harness kills the whole group on the wall-clock limit; with
a pid namespace the kernel then kills every process left in it. The environment is emptied, so no token
of ours reaches the program.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

NOBODY = 65534
STATUSES = ("passed", "syntax_error", "wrong_answer", "error", "timeout", "killed")
_OUTPUT_TAIL = 4096
_REPORT_MAX = 65536
_DRAIN_SECONDS = 2.0
_PROBE_WALL_SECONDS = 30.0
# Works only if the standard library can still be read once the driver has dropped to nobody (an
# interpreter under /root cannot be, without a namespace to mount it elsewhere).
_PROBE = "import os\nassert os.listdir(os.path.dirname(os.__file__))"
# Hidden behind empty tmpfs mounts under unshare: homes (tokens, caches), runtime state, and the
# world-writable places other than the private /tmp.
_HIDDEN = ("/root", "/home", "/run", "/var/tmp", "/dev/shm")
# Its whole text is what the sandboxed interpreter runs, so that nothing imported here runs in the sandbox.
_DRIVER = Path(__file__).with_name("sandbox_driver.py")
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")


class SandboxUnavailable(RuntimeError):
    """No isolation works here; running model code unprotected is never the fallback."""


@dataclass(frozen=True)
class Limits:
    """What one program may use. Memory is address space: stdlib Python needs little of it."""

    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 2 * 1024**3
    output_bytes: int = 64 * 1024
    processes: int = 64
    scratch_bytes: int = 64 * 1024**2  # the size of its private /tmp, where the isolation has one

    def __post_init__(self) -> None:
        for field in fields(self):
            if getattr(self, field.name) <= 0:
                raise ValueError(f"Limits.{field.name} must be positive, got {getattr(self, field.name)}")


@dataclass(frozen=True)
class Outcome:
    """How one program ended: `status` is one of STATUSES; `detail` the last line of its error or the
    limit it hit; `output` the tail of what it printed (stdout and stderr together)."""

    status: str
    seconds: float
    detail: str = ""
    output: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class Isolation:
    """One way of running a program, strongest first in ISOLATIONS; `description` is what reports print."""

    name: str
    description: str
    no_network: bool
    own_pid_namespace: bool


def _identity() -> str:
    return "uid nobody" if os.geteuid() == 0 else "its own uid in a user namespace"


ISOLATIONS = (
    Isolation(
        "bubblewrap",
        "bubblewrap: no network, own pid namespace, read-only system directories, private /tmp, "
        + _identity(),
        no_network=True,
        own_pid_namespace=True,
    ),
    Isolation(
        "unshare",
        "unshare: no network, own pid and mount namespaces, private /tmp, /root /home /run hidden, "
        f"{_identity()}; the rest of the filesystem is visible, read-only through its permissions",
        no_network=True,
        own_pid_namespace=True,
    ),
    Isolation(
        "rlimits",
        "resource limits and a process group only, uid nobody: the network is reachable, and a process "
        "that leaves its group can outlive the program",
        no_network=False,
        own_pid_namespace=False,
    ),
)


@functools.cache
def works(candidate: Isolation) -> bool:
    """Whether a trivial program passes under `candidate` here; probed once per process."""
    if candidate.name == "rlimits" and os.geteuid() != 0:
        return False  # it would run the program with our own rights
    if candidate.name in ("bubblewrap", "unshare"):
        tool = "bwrap" if candidate.name == "bubblewrap" else "unshare"
        if shutil.which(tool) is None:
            return False
    return _run(candidate, _PROBE, Limits(wall_seconds=_PROBE_WALL_SECONDS)).passed


def available_isolations() -> list[Isolation]:
    """Every isolation that works here, strongest first."""
    return [candidate for candidate in ISOLATIONS if works(candidate)]


def strongest() -> Isolation:
    """The isolation programs run under by default: the first of ISOLATIONS that works here."""
    for candidate in ISOLATIONS:
        if works(candidate):
            return candidate
    raise SandboxUnavailable(
        "no sandbox works on this machine: install bubblewrap (apt-get install bubblewrap), or allow "
        "`unshare --net --pid --fork --mount-proc`, or run as root with an interpreter that nobody may read"
    )


def isolation() -> str:
    """A one-line description of the isolation programs run under here, for reports."""
    return strongest().description


def run_program(source: str, limits: Limits = Limits(), using: Isolation | None = None) -> Outcome:
    """Run one program (its asserts included) in the sandbox and say how it ended.

    A syntax error is found by compiling the text, which runs nothing, so it never reaches a sandbox.
    """
    try:
        compile(source, "program.py", "exec", dont_inherit=True)
    except SyntaxError as error:
        return Outcome("syntax_error", 0.0, f"{type(error).__name__}: {error.msg} (line {error.lineno})")
    except (ValueError, RecursionError, MemoryError) as error:  # NUL bytes, absurd nesting
        return Outcome("syntax_error", 0.0, f"{type(error).__name__}: {error}")
    return _run(using or strongest(), source, limits)


def run_programs(
    sources: Sequence[str],
    limits: Limits = Limits(),
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    using: Isolation | None = None,
) -> list[Outcome]:
    """Run programs in parallel, one per core unless `workers` says otherwise; outcomes in input order.

    `progress(done, total)` is called from the calling thread after each program ends.
    """
    chosen = using or strongest()
    count = workers or len(os.sched_getaffinity(0))
    outcomes: dict[int, Outcome] = {}
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = {pool.submit(run_program, source, limits, chosen): i for i, source in enumerate(sources)}
        for done, future in enumerate(as_completed(futures), start=1):
            outcomes[futures[future]] = future.result()
            if progress is not None:
                progress(done, len(sources))
    return [outcomes[i] for i in range(len(sources))]


def _run(chosen: Isolation, source: str, limits: Limits) -> Outcome:
    """Run one program that compiles under `chosen`; the temporary directory goes whatever happens."""
    root = Path(tempfile.mkdtemp(prefix="eval-sandbox-"))
    try:
        return _run_in(root, chosen, source, limits)
    finally:
        shutil.rmtree(root)


def _run_in(root: Path, chosen: Isolation, source: str, limits: Limits) -> Outcome:
    program = root / "program.py"
    program.write_text(source, encoding="utf-8")
    report_read, report_write = os.pipe()
    command = _command(chosen, root, report_write, limits)
    nonce = secrets.token_hex(16)
    started = time.monotonic()
    try:
        with (root / "output").open("wb") as output:
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=output,
                stderr=subprocess.STDOUT,
                pass_fds=(report_write,),
                start_new_session=True,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"},
                cwd=root,
            )
    finally:
        os.close(report_write)
    try:
        _send_nonce(process, nonce)
        timed_out = not _exited_within(process, limits.wall_seconds - (time.monotonic() - started))
        os.killpg(process.pid, signal.SIGKILL)  # the leader is not reaped yet: its group id is still ours
        process.wait()
        report = _read_until_closed(report_read)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        os.close(report_read)
    seconds = time.monotonic() - started
    output_size = (root / "output").stat().st_size
    tail = _tail(root / "output")
    if timed_out:
        return Outcome("timeout", seconds, f"wall-clock limit of {limits.wall_seconds:g} s", tail)
    if output_size >= limits.output_bytes:
        return Outcome("killed", seconds, f"output limit of {limits.output_bytes} bytes", tail)
    for line in report.decode("utf-8", "replace").splitlines():
        parts = line.split(" ", 2)
        if len(parts) >= 2 and parts[0] == nonce and parts[1] in STATUSES:
            return Outcome(parts[1], seconds, parts[2] if len(parts) == 3 else "", tail)
    return _unreported(chosen, process.returncode, seconds, tail)


def _send_nonce(process: subprocess.Popen[bytes], nonce: str) -> None:
    """Hand the driver its nonce; a driver already gone (killed, crashed) simply never reports."""
    assert process.stdin is not None
    with contextlib.suppress(OSError):
        process.stdin.write(f"{nonce}\n".encode())
        process.stdin.flush()
    with contextlib.suppress(OSError):
        process.stdin.close()


def _exited_within(process: subprocess.Popen[bytes], seconds: float) -> bool:
    """Wait for the leader to exit without reaping it (a pidfd), so that its process group cannot be
    reused by another before we kill it."""
    pidfd = os.pidfd_open(process.pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(max(0, int(seconds * 1000))))
    finally:
        os.close(pidfd)


def _read_until_closed(fd: int) -> bytes:
    """What the driver reported, read until every process that held the pipe is gone, which is also how
    we know the sandbox is empty; bounded, since a process that escaped the group (possible under the
    rlimits isolation only) may hold it open for ever."""
    deadline = time.monotonic() + _DRAIN_SECONDS
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks: list[bytes] = []
    size = 0
    while size < _REPORT_MAX and poller.poll(max(0, int((deadline - time.monotonic()) * 1000))):
        chunk = os.read(fd, _REPORT_MAX - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _tail(path: Path) -> str:
    with path.open("rb") as file:
        file.seek(max(0, path.stat().st_size - _OUTPUT_TAIL))
        return file.read().decode("utf-8", "replace")


# unshare --fork re-raises the signal its child died of; now and then (seen once under a CPU-time limit,
# with the machine busy) that fails, and it exits 1 with this line instead of dying of the signal.
_UNSHARE_LOST_SIGNAL = "unshare: sigprocmask unblock failed"


def _unreported(chosen: Isolation, returncode: int, seconds: float, tail: str) -> Outcome:
    """The driver never reported: the program ended early, by exit or by signal."""
    if chosen.name == "unshare" and returncode == 1 and _UNSHARE_LOST_SIGNAL in tail:
        return Outcome("killed", seconds, "killed by a signal that unshare could not pass on", tail)
    number = -returncode if returncode < 0 else 0
    if chosen.name == "bubblewrap" and returncode > 128:  # bwrap exits 128 + n for a child killed by n
        number = returncode - 128
    if number == signal.SIGXCPU:
        return Outcome("killed", seconds, "CPU-time limit", tail)
    if number:
        return Outcome("killed", seconds, f"killed by {signal.Signals(number).name}", tail)
    last = tail.strip().splitlines()[-1] if tail.strip() else ""
    detail = f"exited with status {returncode} before the end of the program"
    return Outcome("error", seconds, f"{detail}: {last}" if last else detail, tail)


def _command(chosen: Isolation, root: Path, report_fd: int, limits: Limits) -> list[str]:
    """The command line that runs the driver on `root`/program.py under `chosen`."""
    python = os.path.realpath(sys.executable)
    as_root = os.geteuid() == 0
    config: dict[str, Any] = {
        "program": str(root / "program.py"),
        "workdir": "/tmp",
        "report_fd": report_fd,
        "uid": NOBODY if as_root else -1,
        "rlimits": [
            (resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1),
            (resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes),
            (resource.RLIMIT_FSIZE, limits.output_bytes, limits.output_bytes),
            (resource.RLIMIT_NPROC, limits.processes, limits.processes),
            (resource.RLIMIT_CORE, 0, 0),
        ],
        "prefix": sys.base_prefix,
        "tmpfs": [],
    }
    if chosen.name == "bubblewrap":
        config["program"] = "/sandbox/program.py"
        prefix = [] if sys.base_prefix.startswith("/usr/") else _bwrap_bind(sys.base_prefix)
        identity = (
            ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
            if as_root
            else ["--unshare-user"]
        )
        wrapper = [
            "bwrap",
            "--die-with-parent",
            "--new-session",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            *identity,
            *_bwrap_system(),
            "--dev", "/dev",
            "--proc", "/proc",
            "--perms", "1777", "--size", str(limits.scratch_bytes), "--tmpfs", "/tmp",
            *prefix,
            "--ro-bind", str(root), "/sandbox",
            "--chdir", "/tmp",
        ]  # fmt: skip
    elif chosen.name == "unshare":
        config["tmpfs"] = [("/tmp", f"size={limits.scratch_bytes},mode=1777")] + [
            (path, "size=1m,mode=755") for path in _HIDDEN
        ]
        identity = [] if as_root else ["--user", "--map-root-user"]
        wrapper = [
            "unshare",
            *identity,
            "--net",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--propagation",
            "private",
        ]
    else:
        work = root / "work"
        work.mkdir(mode=0o700)
        os.chown(work, NOBODY, NOBODY)
        root.chmod(0o711)
        config["workdir"] = str(work)
        wrapper = []
    driver = _DRIVER.read_text(encoding="utf-8")
    return [*wrapper, python, "-I", "-S", "-c", driver, json.dumps(config)]


def _bwrap_system() -> list[str]:
    """The system directories, read-only; merged-/usr links stay links."""
    arguments: list[str] = []
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            arguments += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            arguments += ["--ro-bind", path, path]
    return arguments


def _bwrap_bind(prefix: str) -> list[str]:
    """Bind the interpreter's installation at its own path. bwrap would create its missing parents
    with their host modes (/root is 0700), so they are made 0755 first for nobody to pass."""
    arguments: list[str] = []
    parents = Path(prefix).parents
    for parent in reversed(parents[:-1]):
        arguments += ["--perms", "0755", "--dir", str(parent)]
    return [*arguments, "--ro-bind", prefix, prefix]
