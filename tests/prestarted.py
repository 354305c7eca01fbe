"""`python -m <stage>` without the four seconds of imports: a Python that has imported the pipeline's
libraries once forks a process for each stage a test runs, which runs the stage's module as `python -m` does.

Every heavy stage spends about 4 of its first 5 CPU-seconds importing torch, transformers, peft, trl and
bitsandbytes (which compiles its CPU kernels' wrappers at import); the suite runs a hundred of them. The fork
is a process of its own, with the command line, working folder, environment, standard streams and exit status
the stage would have had, so a test sees what `python -m` gives:

- libraries read some environment variables when they are imported (huggingface_hub its endpoint and offline
  switch), so a stage whose environment differs from the one the libraries were imported under, in any
  variable, runs in a fresh Python;
- a fork keeps only the thread that forks: the server checks that the imports started no Python thread;
- Python's and numpy's global random state are drawn afresh in each fork, as a fresh process draws them;
- two differences are left: every fork has the server's hash seed, where each fresh process draws its own;
  and a fork skips the interpreter's teardown of its modules, so a file a stage left open and unflushed
  would lose its tail there, where a fresh Python flushes it.

Tests that send signals, `make` targets and CI's `make all` start fresh processes; `pytest --fresh-stages`
runs every stage so.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

# What the heavy stages import; importing them here is what a forked stage saves.
PRELOADED = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate")
# Variables that change in the tests' own process and that nothing reads at import: pytest's current test, and
# the cache folder torch's inductor sets to its default when a test first compiles (the folder a fresh
# process would take).
IGNORED_VARIABLES = {"PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR"}

SERVER = r"""
import atexit, importlib, json, os, random, runpy, socket, sys, threading

channel = socket.socket(fileno=int(sys.argv[1]))
for name in sys.argv[2:]:
    importlib.import_module(name)
if threading.active_count() != 1:
    sys.exit(f"importing {sys.argv[2:]} started threads: {threading.enumerate()}")


def run(request):
    # In the fork: become the process `python -m <module> <args>` would be, run it, and end as Python ends it
    # (an error's traceback and status 1, its threads waited for, atexit, the streams flushed); then leave at
    # once, without the interpreter's teardown of every module (1.2 CPU-seconds a stage: docs/testing.md).
    code = 1
    try:
        os.close(channel.detach())
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path, flags in ((0, request["stdin"], os.O_RDONLY), (1, request["stdout"], os.O_WRONLY),
                                (2, request["stderr"], os.O_WRONLY)):
            opened = os.open(path, flags)
            os.dup2(opened, fd)
            os.close(opened)
        sys.argv = ["-m", *request["args"]]
        sys.path[0] = request["cwd"]
        random.seed()
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit:
        if exit.code is None or isinstance(exit.code, int):
            code = exit.code or 0
        else:
            print(exit.code, file=sys.stderr)
    except BaseException:
        sys.excepthook(*sys.exc_info())
    finally:
        try:
            for thread in threading.enumerate():
                if thread is not threading.current_thread() and not thread.daemon:
                    thread.join()
            atexit._run_exitfuncs()  # CPython's own exit step; tests/test_prestarted.py sees it run
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def reply(message):
    channel.sendall((json.dumps(message) + "\n").encode())


reply({"ready": True})
for line in channel.makefile("r"):
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        run(request)
    reply({"pid": pid})
    _, status = os.waitpid(pid, 0)
    reply({"returncode": os.waitstatus_to_exitcode(status)})
"""


class PrestartedPython:
    """A server (SERVER) started under `environment`, lazily, that runs `[sys.executable, "-m", module, ...]`
    commands in forks; any other command, one whose environment differs, or every command when not `enabled`,
    goes to subprocess.run."""

    def __init__(self, environment: dict[str, str], preloaded: tuple[str, ...] = PRELOADED) -> None:
        self.environment = environment
        self.preloaded = preloaded
        self.enabled = True
        self.forks = 0  # commands run in a fork
        self.server: subprocess.Popen | None = None
        self.channel: socket.socket | None = None
        self.replies = None

    def run(
        self,
        command: list[str],
        *,
        cwd: str | Path | None = None,
        input: str | None = None,
        capture_output: bool = False,
        text: bool = False,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """subprocess.run with these arguments, forked from the server when it can be: a `python -m` command
        whose output is captured as text, under the server's environment."""
        env = dict(os.environ) if env is None else env
        forkable = self.enabled and command[:2] == [sys.executable, "-m"] and capture_output and text
        if not forkable or self._differs(env):
            options = {"capture_output": capture_output, "text": text, "timeout": timeout, "env": env}
            return subprocess.run(command, cwd=cwd, input=input, **options)
        with tempfile.TemporaryDirectory(prefix="stage-") as folder:
            streams = {name: Path(folder, name) for name in ("stdin", "stdout", "stderr")}
            streams["stdin"].write_text(input or "")
            streams["stdout"].touch()
            streams["stderr"].touch()
            working_folder = os.path.abspath(cwd or ".")
            request = {"module": command[2], "args": command[3:], "cwd": working_folder, "env": env}
            returncode = self._run(request | {name: str(path) for name, path in streams.items()}, timeout)
            stdout, stderr = streams["stdout"].read_text(), streams["stderr"].read_text()
        if returncode is None:
            raise subprocess.TimeoutExpired(command, timeout, stdout, stderr)
        return subprocess.CompletedProcess(command, returncode, stdout, stderr)

    def close(self) -> None:
        if self.server is not None:
            self.channel.close()
            self.server.kill()
            self.server.wait()
            self.server = None

    def _differs(self, env: dict[str, str]) -> bool:
        def relevant(variables: dict[str, str]) -> dict[str, str]:
            return {name: value for name, value in variables.items() if name not in IGNORED_VARIABLES}

        return relevant(env) != relevant(self.environment)

    def _run(self, request: dict, timeout: float | None) -> int | None:
        """The fork's exit status, or None when it ran past `timeout` and was killed."""
        if self.server is None:
            self._start()
        self.channel.settimeout(None)
        self.channel.sendall((json.dumps(request) + "\n").encode())
        pid = self._reply()["pid"]
        self.forks += 1
        try:
            self.channel.settimeout(timeout)
            return self._reply()["returncode"]
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            self.close()
            return None
        except BaseException:  # pytest-timeout's failure, Ctrl-C: the fork must not outlive the test
            os.kill(pid, signal.SIGKILL)
            self.close()
            raise

    def _reply(self) -> dict:
        line = self.replies.readline()
        if not line:
            self.close()
            raise RuntimeError("the prestarted Python that runs the stages ended")
        return json.loads(line)

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        with tempfile.TemporaryFile() as errors:
            self.server = subprocess.Popen(
                [sys.executable, "-c", SERVER, str(theirs.fileno()), *self.preloaded],
                pass_fds=[theirs.fileno()], env=self.environment, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=errors,
            )  # fmt: skip
            theirs.close()
            self.channel, self.replies = ours, ours.makefile("r")
            if not self.replies.readline():
                self.server.wait()
                errors.seek(0)
                self.server = None
                raise RuntimeError(f"the prestarted Python did not start:\n{errors.read().decode()[-3000:]}")
