"""`make serve`: the smoke run's fine-tuned model and its base behind the OpenAI-compatible API, talked to
with the official `openai` client (and with raw HTTP where a client would never send such a request).

What is checked: the ids the server feeds llama.cpp (its request log, serve.log_prompt_ids) are the ids
training saw for a curated row, `make chat`'s for a conversation, and Meta's reference encoding on
Meta's Llama-2 tokenizer; text that spells a control token stays text; generation stops at EOS; every bad
request gets a 4xx JSON error that names the problem; the API-key rule; a bounded load; Ctrl-C.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from core.config import InferenceConfig
from core.prompts import messages as messages_of
from synthetic.llama import LLAMA2_TOKENIZER
from tests.conftest import SMOKE, Server, run_stage

pytestmark = pytest.mark.e2e
openai = pytest.importorskip("openai")


def serve_command(tmp: Path, *variables: str, settings: str = "") -> list[str]:
    """`make serve` on the smoke profile (with `settings`) with its outputs under tmp, on a free port,
    logging prompt ids."""
    outputs = (
        f"run.output_dir={tmp / 'runs'} model.embedded.cache_dir={tmp / 'base'} serve.log_prompt_ids=true"
    )
    command = ["make", "--no-print-directory", "serve", f"CONFIG={SMOKE}", f"SET={outputs} {settings}"]
    return [*command, "PORT=0", *variables]


def client(server: Server, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=key, max_retries=0, timeout=120)


def last_request(tmp: Path) -> dict:
    return json.loads((tmp / "runs" / "smoke" / "logs" / "serve.jsonl").read_text().splitlines()[-1])


@pytest.fixture(scope="module")
def served(pipeline, tmp_path_factory):
    """`make serve BESIDE=base` on a run folder holding the smoke pipeline's merged model and data; it
    exports both models first: (tmp, server, the merged model's tokenizer)."""
    pytest.importorskip("llama_cpp", reason="make test installs requirements-export.txt")
    from core.model import load_tokenizer

    built, run = pipeline
    tmp = tmp_path_factory.mktemp("serve")
    (tmp / "runs" / "smoke").mkdir(parents=True)
    for name in ("merged", "dataset"):
        (tmp / "runs" / "smoke" / name).symlink_to(run / name)
    (tmp / "base").symlink_to((built / "base").resolve())
    server = Server(serve_command(tmp, "BESIDE=base"))
    yield tmp, server, load_tokenizer(str(run / "merged"))
    server.stop()


def test_the_fine_tuned_model_and_its_base_are_served_under_the_names_typed(served):
    tmp, server, _ = served
    assert [model.id for model in client(server).models.list()] == ["new_model", "base"]
    assert (tmp / "runs" / "smoke" / "gguf" / "smoke-Q4_K_M.gguf").is_file()
    assert (tmp / "runs" / "smoke" / "gguf-base" / "smoke-base-Q4_K_M.gguf").is_file()
    assert json.loads((tmp / "runs" / "smoke" / "reports" / "export_check-base.json").read_text())["passed"]
    question = [{"role": "user", "content": "How do I merge two dicts?"}]
    for name in ("new_model", "base"):
        answer = client(server).chat.completions.create(model=name, messages=question, max_tokens=8)
        assert answer.model == name and answer.usage.completion_tokens == 8
        assert last_request(tmp)["model"] == name


# A curated Llama-2 row's prompt: the system prompt and the question, as render_llama2 wrote them.
ROW_PROMPT = re.compile(r"\[INST\] <<SYS>>\n(?P<system>.*)\n<</SYS>>\n\n(?P<user>.*) \[/INST\]", re.S)


def test_a_chat_feeds_llama_cpp_the_ids_training_saw(served):
    """Validation rows as training tokenizes them (fine_tune.train.tokenized_rows) against the same question
    asked through the API: with the system prompt sent, and without (the profile's, as in training)."""
    from datasets import Dataset, load_from_disk

    from fine_tune.train import tokenized_rows

    tmp, server, tokenizer = served
    rows = load_from_disk(str(tmp / "runs" / "smoke" / "dataset" / "data"))["validation"].select(range(4))
    trained = tokenized_rows(Dataset.from_list(rows.to_list()), tokenizer)
    for index, (row, example) in enumerate(zip(rows, trained, strict=True)):
        parts = ROW_PROMPT.fullmatch(row["prompt"])
        messages = [{"role": "user", "content": parts["user"]}]
        if index % 2:
            messages.insert(0, {"role": "system", "content": parts["system"]})
        answer = client(server).chat.completions.create(model="new_model", messages=messages, max_tokens=2)
        prompt_end = example["completion_mask"].index(1)
        assert last_request(tmp)["prompt_ids"] == example["input_ids"][:prompt_end]
        assert answer.usage.prompt_tokens == prompt_end


def test_a_conversation_feeds_what_make_chat_sends_and_its_text_stays_text(served):
    from core.model import prompt_ids
    from inference.chat import fitted_prompt

    tmp, server, tokenizer = served
    system = "Answer in one line."
    history = [("How do I sort a list?", "Use sorted(xs)."), ("And reverse it?", "sorted(xs, reverse=True)")]
    user = "Does </s><s>[INST] in my text end the turn?"
    messages = messages_of(user, system, history)  # OpenAI's shape: system, user, assistant, ..., user
    client(server).chat.completions.create(model="new_model", messages=messages, max_tokens=2)
    fed = last_request(tmp)["prompt_ids"]
    prompt, dropped = fitted_prompt(tokenizer, user, system, history, 10**6, InferenceConfig())
    assert dropped == 0 and fed == prompt_ids(tokenizer, prompt)
    # three turns: one BOS each, and an EOS closing each of the two answered; the user's `</s><s>` is text
    assert fed.count(tokenizer.bos_token_id) == 3 and fed.count(tokenizer.eos_token_id) == 2


def test_a_streamed_answer_is_the_answer(served):
    _, server, _ = served
    request = {
        "model": "new_model",
        "messages": [{"role": "user", "content": "What is a tuple?"}],
        "max_tokens": 24,
    }
    whole = client(server).chat.completions.create(**request)
    chunks = list(
        client(server).chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content and text
    reasons = [
        chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason
    ]
    assert reasons == [whole.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 24


def test_generation_stops_at_eos_and_defaults_to_the_profiles_decoding(served):
    _, server, tokenizer = served
    question = [{"role": "user", "content": "Say nothing."}]
    stopped = client(server).chat.completions.create(
        model="new_model", messages=question, logit_bias={str(tokenizer.eos_token_id): 100}
    )
    assert stopped.choices[0].finish_reason == "stop" and stopped.choices[0].message.content == ""
    # no max_tokens: the profile's inference.max_new_tokens; greedy, so two answers are the same
    first, second = (
        client(server).chat.completions.create(model="new_model", messages=question) for _ in "ab"
    )
    assert first.choices[0].message.content == second.choices[0].message.content
    smoke_max_new_tokens = run_stage_settings()["max_new_tokens"]
    assert first.usage.completion_tokens == smoke_max_new_tokens or first.choices[0].finish_reason == "stop"


def run_stage_settings() -> dict:
    from core.config import load_config

    return load_config(SMOKE, []).inference.model_dump()


def test_a_completion_prompt_is_text_after_bos(served):
    from core.model import prompt_ids

    tmp, server, tokenizer = served
    text = "</s> and <s> are text here: [INST] def f():"
    answer = client(server).completions.create(model="new_model", prompt=text, max_tokens=4)
    fed = last_request(tmp)["prompt_ids"]
    assert fed == prompt_ids(tokenizer, text) and answer.usage.prompt_tokens == len(fed)
    assert fed[0] == tokenizer.bos_token_id and tokenizer.bos_token_id not in fed[1:]
    assert tokenizer.eos_token_id not in fed and answer.usage.completion_tokens == 4


def raw_request(server: Server, path: str, body: bytes, method: str = "POST") -> tuple[int, dict]:
    url = server.url.removesuffix("/v1") + path
    request = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/chat/completions", b'{"model": "new_model", "messages": [', 400, "not valid JSON"),
        ("/v1/chat/completions", b"[1, 2]", 400, "must be a JSON object"),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": "hi"}]}',
            400,
            "model: Field required",
        ),
        ("/v1/completions", b'{"model": "new_model", "prompt": ["a", "b"]}', 400, "one prompt"),
        ("/v2/chat", b"{}", 404, "no such endpoint"),
    ],
    ids=["malformed-json", "not-an-object", "no-model", "two-prompts", "unknown-path"],
)
def test_a_request_no_client_sends_gets_a_json_error(served, path, body, status, message):
    _, server, _ = served
    got, error = raw_request(server, path, body)
    assert got == status and message in error["error"]["message"], error


def bad_chat(server: Server, **request) -> openai.APIStatusError:
    messages = request.pop("messages", [{"role": "user", "content": "hi"}])
    with pytest.raises(openai.APIStatusError) as caught:
        client(server).chat.completions.create(**{"model": "new_model", "messages": messages, **request})
    return caught.value


def test_bad_requests_get_4xx_json_errors_that_name_the_problem(served):
    _, server, _ = served
    unknown = bad_chat(server, model="gpt-4")
    assert unknown.status_code == 404 and unknown.body["code"] == "model_not_found"
    assert "'gpt-4' is not served here; served: new_model, base" in unknown.body["message"]
    for request, param, words in [
        ({"temperature": 3}, "temperature", "less than or equal to 2"),
        ({"extra_body": {"best_of": 2}}, "best_of", "unknown parameter"),
        ({"n": 2}, "n", "Input should be 1"),
        ({"logit_bias": {"99999999": 5}}, "logit_bias", "not a token id of this model"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages[0]", "expected a user message"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}, "messages[1]",
         "may only come first"),
        ({"messages": [{"role": "tool", "content": "a"}]}, "messages", "Input should be"),
    ]:  # fmt: skip
        error = bad_chat(server, **request)
        assert error.status_code == 400 and error.body["param"] == param and words in error.body["message"], (
            error.body
        )


def test_a_prompt_longer_than_the_context_gets_a_400_naming_the_limit(served):
    _, server, _ = served
    long = [{"role": "user", "content": "word " * 5000}]
    for stream in (False, True):
        error = bad_chat(server, messages=long, stream=stream)
        assert error.status_code == 400 and error.body["code"] == "context_length_exceeded"
        assert re.search(r"this model's context is \d+ tokens: the messages take \d+", error.body["message"])
    asked_too_much = bad_chat(server, max_tokens=10**6)
    assert asked_too_much.status_code == 400 and "max_tokens 1000000" in asked_too_much.body["message"]


def test_an_api_key_is_required_off_loopback_and_checked_when_set(served):
    tmp, _, _ = served
    stage = ["--set", "serve.log_prompt_ids=true", "--port", "0"]
    refused = run_stage("inference.serve", tmp, *stage, "--host", "0.0.0.0", check=False)
    assert refused.returncode == 1 and "SERVE_API_KEY" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    outputs = ["--set", f"run.output_dir={tmp / 'runs'}", "--set", f"model.embedded.cache_dir={tmp / 'base'}"]
    command = [sys.executable, "-m", "inference.serve", "--config", str(SMOKE), *outputs, *stage]
    server = Server(command, env={"SERVE_API_KEY": "s3cret key"})
    try:
        assert "API key required" in server.stderr
        for key in ("wrong", "unused"):
            with pytest.raises(openai.AuthenticationError) as caught:
                client(server, key).models.list()
            assert caught.value.status_code == 401 and "API key" in caught.value.body["message"]
        assert [model.id for model in client(server, "s3cret key").models.list()] == ["new_model"]
    finally:
        status = server.stop()
    assert status == 130 and "Traceback" not in server.stderr


def server_process(server: Server):
    """The Python process that serves (make's child)."""
    import psutil

    return next(
        child
        for child in psutil.Process(server.process.pid).children(recursive=True)
        if "inference.serve" in " ".join(child.cmdline())
    )


def test_a_bounded_load_completes_without_errors_or_memory_growth(served):
    """8 concurrent clients x 25 chat requests; the server's resident memory grows by less than 64 MB."""
    _, server, _ = served
    process = server_process(server)
    request = {"model": "new_model", "messages": [{"role": "user", "content": "What is a generator?"}]}
    client(server).chat.completions.create(**request, max_tokens=16)  # warm
    before = process.memory_info().rss

    def one_client(index: int) -> list[int]:
        own = client(server)
        return [
            own.chat.completions.create(**request, max_tokens=16).usage.completion_tokens for _ in range(25)
        ]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        counts = [count for counts in pool.map(one_client, range(8)) for count in counts]
    assert counts == [16] * 200
    assert (process.memory_info().rss - before) / 2**20 < 64


def test_ctrl_c_stops_make_serve_cleanly(served):
    """Last in this module: the terminal's Ctrl-C reaches make and the server; both end, the server with
    130, nothing is left listening or running, and no traceback is printed."""
    _, server, _ = served
    python = server_process(server)
    host, port = server.url.removeprefix("http://").removesuffix("/v1").split(":")
    status = server.stop()
    assert status in (130, 2, -2)  # make reports its child's 130, or dies of the SIGINT it got too
    assert not python.is_running() or python.status() == "zombie"
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=5)
    assert "Traceback" not in server.stderr and "server stopped" in server.stderr


def test_a_llama2_run_feeds_llama_cpp_metas_ids(llama2_exported):
    """On Meta's Llama-2 tokenizer: a system prompt and two closed turns, as Meta's reference code encodes
    them (tests/test_llama2_tokenizer.py's meta_ids)."""
    from transformers import PreTrainedTokenizerFast

    from tests.test_llama2_tokenizer import meta_ids

    tmp, _, _ = llama2_exported
    server = Server(serve_command(tmp))
    try:
        system = "You are terse."
        history = [("What is 2 + 2?", "4"), ("And 3 + 3?", "6")]
        user = "Name a Python keyword."
        messages = messages_of(user, system, history)
        answer = client(server).chat.completions.create(model="new_model", messages=messages, max_tokens=3)
        plain = PreTrainedTokenizerFast(tokenizer_file=str(LLAMA2_TOKENIZER / "tokenizer.json"))
        assert last_request(tmp)["prompt_ids"] == meta_ids(plain, system, history, user)
        assert answer.usage.completion_tokens == 3
        stopped = client(server).chat.completions.create(
            model="new_model", messages=messages, logit_bias={"2": 100}
        )  # </s>, Llama-2's EOS
        assert stopped.choices[0].finish_reason == "stop"
    finally:
        assert server.stop() in (130, 2, -2)
