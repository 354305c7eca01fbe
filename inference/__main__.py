"""`make infer MODEL=... PROMPT="..."`: answer a question (streamed as it is generated) or a prompts file.

One prompt streams its answer to stdout, then a line on stderr says how it ended and how it was decoded;
`--prompts-file` (one prompt per line, or JSONL with `prompt` and optional `system`) answers many, in
batches. A prompt that leaves no room for the answer in the model's context is refused before the
weights are loaded.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from core.cli import run_stage, stage_parser
from core.config import Config
from core.errors import UserError
from inference.generate import decoding_settings, describe_decoding, generate, stream_answer
from inference.loading import check_prompts_fit, load_model, model_chat_format
from inference.models import add_model_option, resolve_model
from inference.prompts_file import PromptRequest, read_prompts

log = logging.getLogger(__name__)


def requests_from_args(args: argparse.Namespace) -> list[PromptRequest]:
    """The prompt, or the prompts file's prompts; exactly one of them must be given."""
    prompt = (args.prompt or "").strip()
    if args.prompts_file:
        if prompt:
            raise UserError("give a prompt or a prompts file, not both (PROMPT= or PROMPTS_FILE=)")
        return read_prompts(Path(args.prompts_file))
    if not prompt:
        raise UserError('empty prompt: pass PROMPT="your question" (or PROMPTS_FILE=path)')
    return [PromptRequest(prompt)]


def main(config: Config, args: argparse.Namespace) -> None:
    requests = requests_from_args(args)
    source = resolve_model(config, args.model)
    system = config.data.system_prompt if args.system is None else args.system
    chat = model_chat_format(config, source)
    prompts = [request.rendered(chat, system) for request in requests]
    check_prompts_fit(config, source, [(r.where, p) for r, p in zip(requests, prompts, strict=True)])
    model, tokenizer = load_model(source, config)
    settings = config.inference
    decoding = describe_decoding(decoding_settings(settings))
    started = time.perf_counter()
    if len(prompts) == 1:
        answer = stream_answer(model, tokenizer, prompts[0], settings)
        seconds = time.perf_counter() - started
        ending = "stopped at EOS" if answer.stopped else "hit inference.max_new_tokens"
        rate = answer.new_tokens / seconds
        log.info("(%d tokens, %s, %.1f tokens/s; %s)", answer.new_tokens, ending, rate, decoding)
        return
    log.info("answering %d prompts in batches of %d", len(prompts), settings.batch_size)
    answers = generate(model, tokenizer, prompts, settings)
    for number, (request, answer) in enumerate(zip(requests, answers, strict=True), 1):
        print(f"### {number}. {request.prompt}\n\n{answer.text}\n", flush=True)
    tokens = sum(answer.new_tokens for answer in answers)
    seconds = time.perf_counter() - started
    log.info("(%d answers, %d tokens in %.1f s; %s)", len(answers), tokens, seconds, decoding)


if __name__ == "__main__":
    parser = stage_parser(__doc__.splitlines()[0])
    add_model_option(parser)
    parser.add_argument("--prompt", default="", help="the question")
    parser.add_argument("--prompts-file", default=None, help="text (one prompt per line) or .jsonl file")
    parser.add_argument("--system", default=None, help="system prompt (default: data.system_prompt)")
    run_stage(main, parser)
