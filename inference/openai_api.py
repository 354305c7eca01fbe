"""The OpenAI-compatible HTTP API of `make serve`: /v1/models, /v1/chat/completions (streamed or not) and
/v1/completions, on llama.cpp (llama-cpp-python's `Llama`), with FastAPI.

A chat's messages are rendered in the run's chat format and encoded by core/tokens.py, exactly as training
rendered its rows and `make chat` renders a conversation; llama.cpp gets those ids, never text to tokenize
again. A completion's prompt is text: BOS, then the text as text (a typed `</s>` is three characters, not
EOS). Generation stops on the model's end-of-generation tokens (`</s>`, `<|eot_id|>`), and a parameter a
request leaves out takes the profile's `inference.*` value, so that the defaults are `make infer`'s.

Every bad request gets a 4xx JSON error in OpenAI's shape (`{"error": {"message", "type", "param",
"code"}}`) that names what is wrong: a missing or wrong API key (401), an unknown model (404), malformed
JSON, an unknown or out-of-range parameter, messages in an order the format cannot render, a prompt that
leaves no room in the model's context (400).
"""

from __future__ import annotations

import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.config import InferenceConfig
from core.errors import UserError
from core.model import prompt_ids
from core.prompts import ChatFormat, Rendered

# A message's role as OpenAI names it; `developer` is the newer name of `system`.
SYSTEM_ROLES = ("system", "developer")


@dataclass
class ServedModel:
    """One GGUF file in llama.cpp, under the name clients ask for, with the tokenizer and chat format it
    was trained in. One request at a time uses it (a llama.cpp context is not thread-safe)."""

    name: str
    llama: Any  # llama_cpp.Llama
    tokenizer: Any
    chat: ChatFormat
    system_prompt: str | None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def context(self) -> int:
        return self.llama.n_ctx()


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = "authentication_error" if self.status == 401 else "invalid_request_error"
        error = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse({"error": error}, status_code=self.status, headers=headers)


# ---- requests ---------------------------------------------------------------------------------------------
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class StreamOptions(Strict):
    include_usage: bool = False


class Decoding(Strict):
    """What both endpoints accept; a field left out takes the profile's value (`decoding_options`)."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    stop: str | list[str] | None = None
    seed: int | None = None
    logit_bias: dict[int, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1
    user: str | None = None


class ChatRequest(Decoding):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(Decoding):
    prompt: str | list[str] = Field(description="one prompt; a list of exactly one is accepted")


# ---- pure rules -------------------------------------------------------------------------------------------
def conversation(messages: list[Message]) -> tuple[str | None, list[tuple[str, str]], str]:
    """(system prompt or None, earlier (user, answer) turns, the user message to answer) of a chat: an
    optional system message first, then user and assistant messages in turn, ending with the user's."""
    system = messages[0].text if messages[0].role in SYSTEM_ROLES else None
    turns = messages[1:] if system is not None else messages
    expected = "user"
    for index, message in enumerate(turns, start=len(messages) - len(turns)):
        if message.role in SYSTEM_ROLES:
            raise ApiError(
                400, f"messages[{index}]: a system message may only come first", f"messages[{index}]"
            )
        if message.role != expected:
            raise ApiError(
                400,
                f"messages[{index}]: expected a {expected} message (user and assistant take turns), got "
                f"{message.role}",
                f"messages[{index}]",
            )
        expected = "assistant" if expected == "user" else "user"
    if not turns or turns[-1].role != "user":
        raise ApiError(400, "the last message must be the user's: the model answers it", "messages")
    texts = [message.text for message in turns]
    return system, list(zip(texts[:-1:2], texts[1:-1:2], strict=True)), texts[-1]


def chat_prompt(model: ServedModel, messages: list[Message]) -> Rendered:
    """The prompt `make chat` sends for this history; without a system message, the profile's, as in
    training."""
    system, history, user = conversation(messages)
    try:
        return model.chat.rendered_prompt(user, model.system_prompt if system is None else system, history)
    except UserError as error:  # a format without turns (plain text) or a system message (Firefly's)
        raise ApiError(400, str(error), "messages") from None


def answer_budget(prompt_tokens: int, asked: int | None, default: int, context: int, param: str) -> int:
    """Tokens the answer may take: what the request asked for (an error when it does not fit the context),
    else the profile's max_new_tokens cut to the room that is left."""
    room = context - prompt_tokens
    if room < 1 or (asked is not None and asked > room):
        wanted = f" and max_tokens {asked}" if asked is not None else ""
        raise ApiError(
            400,
            f"this model's context is {context} tokens: the {param} take {prompt_tokens}{wanted}, more than "
            f"fits; shorten the {param}" + (" or lower max_tokens" if asked is not None else ""),
            param,
            "context_length_exceeded",
        )
    return asked if asked is not None else min(default, room)


def require_tokens(logit_bias: dict[int, float] | None, vocabulary: int) -> None:
    for token in logit_bias or {}:
        if not 0 <= token < vocabulary:
            raise ApiError(
                400,
                f"logit_bias: {token} is not a token id of this model (0 to {vocabulary - 1})",
                "logit_bias",
            )


def decoding_options(request: Decoding, settings: InferenceConfig, max_tokens: int) -> dict[str, Any]:
    """llama.cpp's sampling arguments: the request's, else the profile's (greedy unless do_sample; top-k and
    min-p off, as in transformers' sampling with top_p)."""
    profile_temperature = settings.temperature if settings.do_sample else 0.0
    chosen = lambda value, default: default if value is None else value  # noqa: E731
    return {
        "max_tokens": max_tokens,
        "temperature": chosen(request.temperature, profile_temperature),
        "top_p": chosen(request.top_p, settings.top_p),
        "top_k": chosen(request.top_k, 0),
        "min_p": chosen(request.min_p, 0.0),
        "repeat_penalty": chosen(request.repeat_penalty, settings.repetition_penalty),
        "frequency_penalty": request.frequency_penalty,
        "presence_penalty": request.presence_penalty,
        "stop": request.stop,
        "seed": chosen(request.seed, settings.seed),
    }


# ---- generation -------------------------------------------------------------------------------------------
@dataclass
class Generation:
    """One request's generation: its ids and options, and what it produced (for the response and the log)."""

    model: ServedModel
    ids: list[int]
    options: dict[str, Any]
    logit_bias: dict[int, float] | None = None
    completion_tokens: int = 0
    finish_reason: str | None = None

    def process(self, input_ids: Any, scores: Any) -> Any:
        """A llama.cpp logits processor: counts the tokens sampled and adds the request's logit_bias. (Given
        both a logits processor and logit_bias, llama-cpp-python 0.3.36 drops both: `list.extend` returns
        None.)"""
        self.completion_tokens += 1
        if self.logit_bias:
            scores = scores.copy()
            for token, bias in self.logit_bias.items():
                scores[token] += bias
        return scores

    def arguments(self, stream: bool) -> dict[str, Any]:
        return {"prompt": self.ids, "stream": stream, "logits_processor": [self.process], **self.options}

    def complete(self) -> dict[str, Any]:
        with self.model.lock:
            result = self.model.llama.create_completion(**self.arguments(stream=False))
        self.finish_reason = result["choices"][0]["finish_reason"]
        return result

    def pieces(self) -> Iterator[str]:
        """The answer's text as llama.cpp streams it; the model stays locked until the stream ends or the
        client goes away."""
        with self.model.lock:
            for chunk in self.model.llama.create_completion(**self.arguments(stream=True)):
                choice = chunk["choices"][0]
                self.finish_reason = choice["finish_reason"] or self.finish_reason
                if choice["text"]:
                    yield choice["text"]

    @property
    def usage(self) -> dict[str, int]:
        prompt = len(self.ids)
        return {"prompt_tokens": prompt, "completion_tokens": self.completion_tokens,
                "total_tokens": prompt + self.completion_tokens}  # fmt: skip


def event(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


# ---- the app ----------------------------------------------------------------------------------------------
RequestLog = Callable[[dict[str, Any]], None]


def create_app(
    models: list[ServedModel], settings: InferenceConfig, api_key: str | None, log_request: RequestLog
) -> FastAPI:
    """The API over `models` (the first is the default of /v1/models' list order only: every request names
    its model). `log_request` gets one record per generation."""
    served = {model.name: model for model in models}
    app = FastAPI(title="fine-tuned model (OpenAI-compatible API)", docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return ApiError(400, *validation_message(error)).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code in (404, 405):
            message = (
                f"no such endpoint: {request.method} {request.url.path}; this server has GET /v1/models, "
                "POST /v1/chat/completions and POST /v1/completions"
            )
            return ApiError(error.status_code, message).response()
        return ApiError(error.status_code, str(error.detail)).response()

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if api_key is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), api_key.encode()):
                return ApiError(
                    401, "missing or wrong API key: send Authorization: Bearer <SERVE_API_KEY>"
                ).response()
        return await call_next(request)

    def model_named(name: str) -> ServedModel:
        if name not in served:
            raise ApiError(
                404,
                f"model {name!r} is not served here; served: {', '.join(served)}",
                "model",
                "model_not_found",
            )
        return served[name]

    def finish(generation: Generation, endpoint: str, started: float) -> None:
        record = {
            "time": round(time.time(), 3), "endpoint": endpoint, "model": generation.model.name,
            **generation.usage, "finish_reason": generation.finish_reason,
            "seconds": round(time.perf_counter() - started, 4),
        }  # fmt: skip
        log_request({**record, "prompt_ids": generation.ids})

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "local"} for name in served],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatRequest):
        started = time.perf_counter()
        model = model_named(request.model)
        ids = prompt_ids(model.tokenizer, chat_prompt(model, request.messages))
        asked = request.max_completion_tokens or request.max_tokens
        budget = answer_budget(len(ids), asked, settings.max_new_tokens, model.context, "messages")
        require_tokens(request.logit_bias, model.llama.n_vocab())
        generation = Generation(model, ids, decoding_options(request, settings, budget), request.logit_bias)
        reply = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model.name}
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)

            def chunk(delta: dict[str, str], finish_reason: str | None = None) -> str:
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                return event({**reply, "object": "chat.completion.chunk", "choices": [choice]})

            def events() -> Iterator[str]:
                yield chunk({"role": "assistant", "content": ""})
                for piece in generation.pieces():
                    yield chunk({"content": piece})
                yield chunk({}, generation.finish_reason)
                if include_usage:
                    yield event(
                        {**reply, "object": "chat.completion.chunk", "choices": [], "usage": generation.usage}
                    )
                yield event("[DONE]")
                finish(generation, "chat", started)

            return StreamingResponse(events(), media_type="text/event-stream")
        result = await run_in_threadpool(generation.complete)
        finish(generation, "chat", started)
        message = {"role": "assistant", "content": result["choices"][0]["text"]}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": generation.finish_reason}
        return {**reply, "object": "chat.completion", "choices": [choice], "usage": generation.usage}

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest):
        started = time.perf_counter()
        model = model_named(request.model)
        if isinstance(request.prompt, list) and len(request.prompt) != 1:
            raise ApiError(400, "prompt: send one prompt (a string, or a list of exactly one)", "prompt")
        text = request.prompt if isinstance(request.prompt, str) else request.prompt[0]
        ids = prompt_ids(model.tokenizer, text)
        budget = answer_budget(len(ids), request.max_tokens, settings.max_new_tokens, model.context, "prompt")
        require_tokens(request.logit_bias, model.llama.n_vocab())
        generation = Generation(model, ids, decoding_options(request, settings, budget), request.logit_bias)
        reply = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                 "model": model.name}  # fmt: skip
        if request.stream:

            def events() -> Iterator[str]:
                for piece in generation.pieces():
                    yield event(
                        {
                            **reply,
                            "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}],
                        }
                    )
                yield event({**reply, "choices": [{"index": 0, "text": "", "logprobs": None,
                                                   "finish_reason": generation.finish_reason}]})  # fmt: skip
                yield event("[DONE]")
                finish(generation, "completion", started)

            return StreamingResponse(events(), media_type="text/event-stream")
        result = await run_in_threadpool(generation.complete)
        finish(generation, "completion", started)
        choice = {"index": 0, "text": result["choices"][0]["text"], "logprobs": None,
                  "finish_reason": generation.finish_reason}  # fmt: skip
        return {**reply, "choices": [choice], "usage": generation.usage}

    return app


def validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    """The first problem pydantic found, in one line naming the parameter: (message, param)."""
    problem = error.errors()[0]
    where = [str(part) for part in problem.get("loc", ()) if part != "body"]
    if problem.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {problem.get('msg')}", None
    if not where:
        return "the request body must be a JSON object of the endpoint's parameters", None
    param, path = where[0], ".".join(where)
    if problem.get("type") == "extra_forbidden":
        return f"{path}: unknown parameter (not supported by this server)", param
    return f"{path}: {problem.get('msg')}", param
