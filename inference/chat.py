"""`make chat MODEL=...`: a multi-turn chat in the run's format, each answer streamed as it comes.

Commands: /base and /tuned switch model and keep the conversation, so the other model continues it;
/clear forgets the conversation; /help; /quit, Ctrl-D or Ctrl-C at the prompt leaves. Ctrl-C during an
answer stops that answer and leaves its turn out of the conversation. When the conversation outgrows the
model's context, its oldest turns are dropped.
"""

from __future__ import annotations

import argparse
import gc
from collections.abc import Sequence

from core.cli import run_stage, stage_parser
from core.config import Config, InferenceConfig
from core.errors import UserError
from core.model import chat_format, prompt_ids
from core.prompts import Rendered
from inference.generate import stream_answer
from inference.loading import context_length, load_model, too_long
from inference.models import add_model_option, resolve_model

HELP = "commands: /base, /tuned (switch model, keep the conversation), /clear (forget it), /help, /quit"


def fitted_prompt(
    tokenizer,
    user: str,
    system: str | None,
    history: Sequence[tuple[str, str]],
    context: int,
    settings: InferenceConfig,
) -> tuple[Rendered, int]:
    """The rendered prompt with as many recent turns as leave room for the answer in the context, and how
    many were dropped."""
    for dropped in range(len(history) + 1):
        prompt = chat_format(tokenizer).rendered_prompt(user, system, history[dropped:])
        tokens = len(prompt_ids(tokenizer, prompt))
        if tokens <= context - settings.max_new_tokens:
            return prompt, dropped
    raise too_long("your message", tokens, context, settings)


class ChatSession:
    def __init__(self, config: Config, model_name: str) -> None:
        self.config = config
        self.tuned_name = "new_model" if model_name == "base" else model_name
        self.history: list[tuple[str, str]] = []
        self.name = model_name
        self.model = self.tokenizer = self.source = None
        self.context = 0
        self.switch(model_name)

    def switch(self, name: str) -> None:
        """Load another model; an unknown, missing or damaged one leaves the current one in place."""
        source = resolve_model(self.config, name)
        context = context_length(self.config, source)
        self.model = None  # freed first: two 7B models may not fit in memory together
        gc.collect()
        try:
            self.model, self.tokenizer = load_model(source, self.config)
        except UserError:
            if self.source is not None:
                self.model, self.tokenizer = load_model(self.source, self.config)
            raise
        self.name, self.context, self.source = name, context, source
        print(f"(model: {name})", flush=True)

    def reply(self, user: str) -> None:
        settings = self.config.inference
        system = self.config.data.system_prompt
        prompt, dropped = fitted_prompt(self.tokenizer, user, system, self.history, self.context, settings)
        if dropped:
            del self.history[:dropped]
            print(f"(dropped the {dropped} oldest turn(s) to fit the context)", flush=True)
        print(f"{self.name}> ", end="", flush=True)
        try:
            answer = stream_answer(self.model, self.tokenizer, prompt, settings)
        except KeyboardInterrupt:
            print("\n(answer stopped; this turn is left out of the conversation)", flush=True)
            return
        self.history.append((user, answer.text))

    def command(self, line: str) -> bool:
        """Run a /command; False when the chat should end."""
        if line in ("/quit", "/exit"):
            return False
        if line == "/clear":
            self.history.clear()
            print("(conversation cleared)", flush=True)
        elif line in ("/base", "/tuned"):
            self.switch("base" if line == "/base" else self.tuned_name)
        else:
            print(HELP if line == "/help" else f"unknown command {line}; {HELP}", flush=True)
        return True


def main(config: Config, args: argparse.Namespace) -> None:
    if config.data.prompt_format == "text":
        raise UserError(
            "this run trains on plain text (data.prompt_format: text): its model continues a text and holds "
            'no conversation; use make infer PROMPT="..." to continue one'
        )
    session = ChatSession(config, args.model)
    print(HELP, flush=True)
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C at the prompt: leave
            print()
            return
        try:
            if line.startswith("/"):
                if not session.command(line):
                    return
            elif line:
                session.reply(line)
        except UserError as error:  # a bad switch or an overlong message: say so and go on chatting
            print(f"error: {error}", flush=True)


if __name__ == "__main__":
    parser = stage_parser(__doc__.splitlines()[0])
    add_model_option(parser)
    run_stage(main, parser)
