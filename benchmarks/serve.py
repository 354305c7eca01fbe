"""serve_tokens_per_second: `make serve` under load against `make infer`'s way of answering.

The tiny profile's fine-tuned model (built into runs/bench/compare when missing, then exported) is served by
`python -m inference.serve` (its Q4_K_M file in llama.cpp) on 127.0.0.1, and 8 concurrent clients (the
official `openai` client) send 25 chat requests each: validation questions, greedy, 32 new tokens at most.
Figures: requests/s, p50/p95 latency, generated tokens/s, and the server's resident memory before and after.
The baseline is `make infer`'s engine (transformers, `inference.generate`, batched) answering the same 200
prompts with the same limits in this process, after the server has stopped.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import statistics
import subprocess
import threading
import time

from benchmarks.compare import OVERRIDES, PROFILE, build_missing
from benchmarks.results import record
from core.config import load_config
from core.runs import RunPaths
from synthetic.stages import run_stage, stage_command

CLIENTS, REQUESTS, MAX_TOKENS = 8, 25, 32


def start_server() -> tuple[subprocess.Popen, str]:
    """The server on a free port, once it says where it listens."""
    command = stage_command("inference.serve", PROFILE, OVERRIDES, "--port", "0")
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        found = re.search(r"at (http://\S+/v1)", line)
        if found:
            threading.Thread(target=process.stderr.read, daemon=True).start()  # keep its pipe drained
            return process, found.group(1)
    raise RuntimeError(f"the server did not start (exit {process.wait()})")


def load(url: str, questions: list[list[dict]]) -> dict:
    import openai

    def one_client(index: int) -> list[tuple[float, int]]:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)
        timings = []
        for request in range(REQUESTS):
            messages = questions[(index * REQUESTS + request) % len(questions)]
            started = time.perf_counter()
            answer = client.chat.completions.create(
                model="new_model", messages=messages, max_tokens=MAX_TOKENS
            )
            timings.append((time.perf_counter() - started, answer.usage.completion_tokens))
        return timings

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        timings = [timing for timings in pool.map(one_client, range(CLIENTS)) for timing in timings]
    seconds = time.perf_counter() - started
    latencies = sorted(latency for latency, _ in timings)
    tokens = sum(count for _, count in timings)
    return {
        "requests": len(timings),
        "seconds": round(seconds, 2),
        "requests_per_second": round(len(timings) / seconds, 2),
        "p50_latency_ms": round(1000 * statistics.median(latencies), 1),
        "p95_latency_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1),
        "tokens": tokens,
        "tokens_per_second": round(tokens / seconds, 1),
    }


def infer_tokens_per_second(config, questions: list[list[dict]]) -> float:
    """make infer's engine on the same prompts: transformers, batched, greedy, the same token limit."""
    from core.model import chat_format
    from core.prompts import Rendered
    from inference.generate import generate
    from inference.loading import load_model
    from inference.models import resolve_model

    model, tokenizer = load_model(resolve_model(config, "new_model"), config)
    chat = chat_format(tokenizer)
    prompts: list[Rendered] = [
        chat.rendered_prompt(messages[1]["content"], messages[0]["content"]) for messages in questions
    ]
    settings = config.inference.model_copy(update={"do_sample": False, "max_new_tokens": MAX_TOKENS})
    generate(model, tokenizer, prompts[:2], settings.model_copy(update={"max_new_tokens": 4}))  # warm
    started = time.perf_counter()
    answers = generate(model, tokenizer, prompts[: CLIENTS * REQUESTS], settings)
    return sum(answer.new_tokens for answer in answers) / (time.perf_counter() - started)


def run() -> None:
    import psutil
    from datasets import load_from_disk

    config = load_config(PROFILE, OVERRIDES)
    build_missing(config)
    run_stage("export", PROFILE, OVERRIDES, "--if-missing", capture=False)
    rows = load_from_disk(str(RunPaths.of(config).dataset / "data"))["validation"]
    system = config.data.system_prompt
    pattern = re.compile(r"\n<</SYS>>\n\n(?P<user>.*) \[/INST\]", re.S)
    questions = [
        [{"role": "system", "content": system}, {"role": "user", "content": pattern.search(prompt)["user"]}]
        for prompt in rows["prompt"]
    ]
    process, url = start_server()
    try:
        server = psutil.Process(process.pid)
        load(url, questions[:2])  # warm
        before = server.memory_info().rss
        figures = load(url, questions)
        figures["server_rss_mb_before"] = round(before / 2**20, 1)
        figures["server_rss_mb_after"] = round(server.memory_info().rss / 2**20, 1)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    baseline = infer_tokens_per_second(
        config, [questions[i % len(questions)] for i in range(CLIENTS * REQUESTS)]
    )
    record(
        "serve_tokens_per_second", figures["tokens_per_second"], round(baseline, 1), "tokens/s", "higher",
        clients=CLIENTS, requests_per_client=REQUESTS, max_tokens=MAX_TOKENS, gguf=config.serve.quantization,
        baseline_is="make infer's engine (transformers, batched), same prompts", cores=os.cpu_count(),
        **figures,
    )  # fmt: skip
