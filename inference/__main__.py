"""`make infer MODEL=... PROMPT="..."`: answer a question with the base or the fine-tuned model."""

from __future__ import annotations

import argparse

from core.cli import run_stage, stage_parser
from core.config import Config
from core.errors import UserError
from core.prompts import render_prompt
from inference.generate import generate, load_model, resolve_model


def main(config: Config, args: argparse.Namespace) -> None:
    if not args.prompt or not args.prompt.strip():
        raise UserError('empty prompt: pass PROMPT="your question" (or --prompt)')
    model, tokenizer = load_model(resolve_model(config, args.model))
    system = config.data.system_prompt if args.system is None else args.system
    (answer,) = generate(model, tokenizer, [render_prompt(args.prompt, system)], config.inference)
    print(answer.text)


if __name__ == "__main__":
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="new_model", help="new_model, base, a local folder or a Hub id")
    parser.add_argument("--prompt", required=True, help="the question")
    parser.add_argument("--system", default=None, help="system prompt (default: data.system_prompt)")
    run_stage(main, parser)
