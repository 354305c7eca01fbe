"""The driver: what runs inside the sandbox, as `python -I -S -c <this file's text> <config>`.

It must stay standard-library only and import nothing of this project: `-I -S` leaves the sandboxed
interpreter the standard library alone (anything else fails to import, and every program with it), and
whatever is imported here runs again in each sandbox, next to the model's code. The harness,
evaluation/sandbox.py, sends this whole file and keeps the rest: the isolation, the limits, the processes
and the outcomes. tests/test_sandbox.py checks the imports.

It reads a per-run nonce from stdin, closes stdin, sets the limits (CPU time, address space, file size,
which caps the output, number of processes), drops to `nobody` when it started as root (RLIMIT_NPROC does
not bind root), then runs the program in a fresh namespace and writes `nonce status detail` to a pipe only
the driver's own process reaches once the whole source has run or raised. A program that ends early
(`sys.exit(0)`, `os._exit(0)`, a signal) never writes the nonce, so it can never pass.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import sys
import traceback
from typing import Any

_MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC = 0x2, 0x4, 0x1000, 0x4000


def _private_mounts(config: dict[str, Any]) -> None:
    """unshare only, still root in a private mount namespace: empty file systems over what the program
    must not see or write, and the interpreter mounted back when one of them hid it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
        encoded = [None if value is None else value.encode() for value in (source, target, fstype, data)]
        if libc.mount(encoded[0], encoded[1], encoded[2], flags, encoded[3]) != 0:
            number = ctypes.get_errno()
            raise OSError(number, os.strerror(number), target)

    prefix = config["prefix"]
    prefix_fd = os.open(prefix, os.O_RDONLY | os.O_DIRECTORY)
    for target, options in config["tmpfs"]:
        if os.path.isdir(target) and not os.path.islink(target):
            mount("tmpfs", target, "tmpfs", _MS_NOSUID | _MS_NODEV, options)
    if not os.path.isdir(prefix):
        os.makedirs(prefix, mode=0o755)
        mount(f"/proc/self/fd/{prefix_fd}", prefix, None, _MS_BIND | _MS_REC, None)
    os.close(prefix_fd)


def _classify(error: BaseException) -> tuple[str, str]:
    try:
        detail = traceback.format_exception_only(type(error), error)[-1].strip()
    except Exception:
        detail = type(error).__name__
    detail = " ".join(detail.split())[:500]
    if isinstance(error, AssertionError):
        return "wrong_answer", detail
    if isinstance(error, MemoryError):
        return "killed", f"memory limit ({detail})"
    if isinstance(error, OSError) and error.errno == errno.EFBIG:
        return "killed", f"output limit ({detail})"
    return "error", detail


def _drive(config: dict[str, Any]) -> None:
    nonce = sys.stdin.readline().strip()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    with open(config["program"], encoding="utf-8") as file:
        code = compile(file.read(), "program.py", "exec", dont_inherit=True)
    if config["tmpfs"]:
        _private_mounts(config)
    for limit, soft, hard in config["rlimits"]:
        resource.setrlimit(limit, (soft, hard))
    if config["uid"] >= 0:
        os.setgroups([])
        os.setgid(config["uid"])
        os.setuid(config["uid"])
    os.chdir(config["workdir"])
    # Bound before the program runs, so that one which rebinds os.write or os._exit cannot steer them.
    write, exit_now, report_fd, pid = os.write, os._exit, config["report_fd"], os.getpid()
    sys.argv = ["program.py"]
    try:
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit:
        raise  # an exit before the end: no report, so never a pass
    except BaseException as error:
        status, detail = _classify(error)
    else:
        status, detail = "passed", ""
    if os.getpid() != pid:  # a forked child that ran on to the end is not the program
        exit_now(1)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException as error:  # the output limit, or a stream the program replaced
            if status == "passed":
                status, detail = _classify(error)
    write(report_fd, f"{nonce} {status} {detail}\n".encode())
    exit_now(0 if status == "passed" else 1)


if __name__ == "__main__":
    _drive(json.loads(sys.argv[1]))
