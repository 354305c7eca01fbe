"""Ctrl-C in `make chat`, as a user presses it: a real SIGINT to the chat process, on the smoke base model.
During an answer it stops the answer and the chat goes on; at the prompt it leaves, exit status 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, SMOKE

pytestmark = pytest.mark.e2e

# The smoke base's greedy answer to this runs to the token limit (about 7 s on a busy 2-core machine), so
# the signal lands while it is being generated.
QUESTION = "Tell me a long story about lists"
LONG_ANSWER = "inference.max_new_tokens=400"


class ChatProcess:
    """`python -m inference.chat` on the smoke profile, its stdout collected as it comes."""

    def __init__(self, tmp: Path, *extra: str) -> None:
        command = [
            sys.executable, "-m", "inference.chat", "--config", str(SMOKE),
            "--set", f"run.output_dir={tmp / 'runs'}", "--set", f"model.embedded.cache_dir={tmp / 'base'}",
            *extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # As in a terminal: a shell's background job (a test run started with `&`) ignores SIGINT, and
            # Python then leaves it ignored instead of raising KeyboardInterrupt.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.output = ""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while character := self.process.stdout.read(1):
            self.output += character

    def wait_for(self, text: str, after: int = 0, timeout: float = 120) -> int:
        """The position just past the first `text` in stdout after position `after`, once it is there."""
        deadline = time.monotonic() + timeout
        while (found := self.output.find(text, after)) < 0:
            assert self.process.poll() is None, (
                f"chat ended early:\n{self.output}\n{self.process.stderr.read()}"
            )
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.output}"
            time.sleep(0.02)
        return found + len(text)

    def wait_for_output(self, after: int, characters: int, timeout: float = 60) -> None:
        """Until stdout holds `characters` more characters than at position `after`."""
        deadline = time.monotonic() + timeout
        while len(self.output) < after + characters:
            assert time.monotonic() < deadline and self.process.poll() is None, self.output
            time.sleep(0.02)

    def send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()


def test_ctrl_c_stops_the_answer_not_the_chat_and_at_the_prompt_leaves(pipeline):
    tmp, _ = pipeline
    chat = ChatProcess(tmp, "--model", "base", "--set", LONG_ANSWER)
    try:
        position = chat.wait_for("you> ")
        chat.send(QUESTION)
        answer_start = chat.wait_for("base> ", position)
        chat.wait_for_output(answer_start, 10)  # the answer is streaming
        chat.process.send_signal(signal.SIGINT)
        stopped = chat.wait_for("(answer stopped; this turn is left out of the conversation)", answer_start)

        position = chat.wait_for("you> ", stopped)  # the chat goes on
        chat.send("/clear")
        position = chat.wait_for("(conversation cleared)", position)
        position = chat.wait_for("you> ", position)
        chat.process.send_signal(signal.SIGINT)  # at the prompt: leave
        assert chat.process.wait(timeout=30) == 0
        stderr = chat.process.stderr.read()
        assert "Traceback" not in stderr and "error:" not in stderr, stderr
    finally:
        chat.process.kill()
