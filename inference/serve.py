"""`make serve`: the run's model behind an OpenAI-compatible API (inference/openai_api.py), on llama.cpp.

`--model` (make's MODEL=, default new_model) and, optionally, `--beside` (BESIDE=base) name what is served,
each under the name typed: new_model and base serve the files `make export` wrote (runs/<run>/gguf/ and
gguf-base/; the Makefile exports first when they are missing or older than the model), a model folder its
gguf-<folder name>/, a .gguf file itself with this run's tokenizer. `serve.quantization` picks the file.
Both models stay loaded, so a chat UI can switch between them at once.

It listens on 127.0.0.1:8000 unless HOST= and PORT= (serve.host, serve.port) say otherwise; on any other
address it refuses to start without SERVE_API_KEY, which every request must then send as a Bearer token.
Each generation is logged to runs/<run>/logs/serve.jsonl. Ctrl-C stops it: requests in flight are
cancelled, the models closed, and the exit status is 130.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from core.cli import run_stage, stage_parser
from core.config import Config
from core.errors import UserError
from core.model import chat_format, load_tokenizer, resolve_base
from core.patches import llama_cpp_without_amx
from core.runs import RunPaths
from inference.openai_api import ServedModel, create_app

log = logging.getLogger(__name__)

API_KEY_VARIABLE = "SERVE_API_KEY"
# Which of make export's files each serve.quantization names; the 16-bit file is BF16 or F16, as the model.
FILE_KINDS = {"16-bit": ("BF16", "F16"), "Q8_0": ("Q8_0",), "Q4_K_M": ("Q4_K_M",)}


def gguf_file(config: Config, paths: RunPaths, name: str) -> Path:
    """The GGUF file served for `name`: make export's file of the configured quantization, or the file
    named."""
    if name.endswith(".gguf"):
        if not Path(name).is_file():
            raise UserError(f"no GGUF file at {name}")
        return Path(name)
    kinds = FILE_KINDS[config.serve.quantization]
    for kind in kinds:
        if paths.gguf_file(name, kind).is_file():
            return paths.gguf_file(name, kind)
    raise UserError(
        f"no {' or '.join(kinds)} GGUF file of {name} in {paths.gguf(name)}: run `make export MODEL={name}` "
        "(make serve runs it when the folder is missing)"
    )


def tokenizer_location(config: Config, paths: RunPaths, name: str) -> str:
    """Where the tokenizer the model was trained with lives: prompts are encoded with it, as in training."""
    if name == "base":
        return resolve_base(config)
    if name == "new_model" or name.endswith(".gguf"):  # a GGUF file is this run's model, quantized otherwise
        if not (paths.merged / "config.json").is_file():
            raise UserError(f"no merged model in {paths.merged} to read the tokenizer from: run `make merge`")
        return str(paths.merged)
    return name


def load(config: Config, paths: RunPaths, name: str) -> ServedModel:
    from llama_cpp import Llama

    file = gguf_file(config, paths, name)
    tokenizer = load_tokenizer(
        tokenizer_location(config, paths, name), prompt_format=config.data.prompt_format
    )
    log.info("loading %s: %s", name, file)
    with llama_cpp_without_amx():  # docs/cpus.md: llama.cpp's AMX kernels crash on small quantized models
        llama = Llama(
            model_path=str(file),
            n_ctx=config.serve.context or 0,
            n_threads=config.serve.threads,
            verbose=False,
        )
    if llama.n_vocab() != len(tokenizer):
        llama.close()
        raise UserError(
            f"{file} has {llama.n_vocab():,} tokens and the tokenizer it would be served with "
            f"({tokenizer.name_or_path}) {len(tokenizer):,}: serve a GGUF file exported from this run"
        )
    return ServedModel(name, llama, tokenizer, chat_format(tokenizer), config.data.system_prompt)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def request_log(path: Path, with_ids: bool):
    """Appends one JSON line per generation; the prompt's ids only when serve.log_prompt_ids is on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def write(record: dict[str, Any]) -> None:
        if not with_ids:
            record = {key: value for key, value in record.items() if key != "prompt_ids"}
        with lock, path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")

    return write


def main(config: Config, args: argparse.Namespace) -> None:
    import uvicorn

    host = config.serve.host if args.host is None else args.host
    port = config.serve.port if args.port is None else args.port
    api_key = os.environ.get(API_KEY_VARIABLE) or None
    if api_key is None and not is_loopback(host):
        raise UserError(
            f"serving on {host}, which other machines can reach, needs an API key: set {API_KEY_VARIABLE} "
            "(clients send it as Authorization: Bearer ...), or serve on 127.0.0.1"
        )
    names = [args.model, *([args.beside] if args.beside else [])]
    if len(set(names)) != len(names):
        raise UserError(f"BESIDE={args.beside} names the model MODEL already serves")
    os.environ.setdefault(
        "OMP_WAIT_POLICY", "PASSIVE"
    )  # export/gguf.py: spinning threads slow a busy machine
    paths = RunPaths.of(config)
    models: list[ServedModel] = []
    try:
        for name in names:
            models.append(load(config, paths, name))
        logs = paths.logs / "serve.jsonl"
        app = create_app(models, config.inference, api_key, request_log(logs, config.serve.log_prompt_ids))
        server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        )
        threading.Thread(
            target=announce, args=(server, models, api_key is not None, logs), daemon=True
        ).start()
        try:
            server.run()  # Ctrl-C: uvicorn shuts down, then raises KeyboardInterrupt
        except KeyboardInterrupt:
            log.info("server stopped (Ctrl-C)")
            raise SystemExit(130) from None
        except SystemExit:  # uvicorn has logged why it could not start
            raise UserError(
                f"cannot listen on {host}:{port}: the port is taken, or the address is not this machine's"
            ) from None
    finally:
        for model in models:
            model.llama.close()


def announce(server: Any, models: list[ServedModel], keyed: bool, logs: Path) -> None:
    """Says where the server listens once it does (with the port it got, for PORT=0)."""
    while not server.started and not server.should_exit:
        threading.Event().wait(0.05)
    if not server.started:
        return
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    names = ", ".join(f"{model.name} ({model.context} tokens of context)" for model in models)
    log.info("serving %s at http://%s:%d/v1%s; requests logged to %s; Ctrl-C stops", names, host, port,
             " (API key required)" if keyed else "", logs)  # fmt: skip


if __name__ == "__main__":
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="new_model", help="new_model, base, a model folder or a .gguf file"
    )
    parser.add_argument("--beside", default="", help="a second model served beside it (e.g. base)")
    parser.add_argument("--host", default=None, help="the address to listen on (default serve.host)")
    parser.add_argument("--port", type=int, default=None, help="the port (default serve.port; 0: a free one)")
    run_stage(main, parser)
