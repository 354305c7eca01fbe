"""The rules of `make serve`'s API, as pure functions: how messages become a conversation, how much an
answer may take, which decoding a request gets, what an error says. The server itself: test_serve.py."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from core.config import InferenceConfig
from inference.openai_api import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    Message,
    ServedModel,
    answer_budget,
    chat_prompt,
    conversation,
    decoding_options,
    require_tokens,
)
from inference.serve import is_loopback


def chat(*turns: tuple[str, str]) -> list[Message]:
    return [Message(role=role, content=content) for role, content in turns]


def test_a_conversation_is_the_system_prompt_the_closed_turns_and_the_question():
    turns = [("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"), ("user", "e")]
    messages = chat(("system", "Be brief."), *turns)
    assert conversation(messages) == ("Be brief.", [("a", "b"), ("c", "d")], "e")
    assert conversation(chat(("user", "only"))) == (None, [], "only")
    assert conversation(chat(("developer", ""), ("user", "q"))) == ("", [], "q")  # blank: no system prompt


def test_text_parts_are_joined_as_one_message():
    parts = Message(role="user", content=[{"type": "text", "text": "a "}, {"type": "text", "text": "b"}])
    assert conversation([parts]) == (None, [], "a b")


@pytest.mark.parametrize(
    ("turns", "param", "words"),
    [
        ((("assistant", "a"),), "messages[0]", "expected a user message"),
        ((("user", "a"), ("user", "b")), "messages[1]", "expected a assistant message"),
        ((("user", "a"), ("system", "b")), "messages[1]", "may only come first"),
        ((("system", "s"), ("system", "t"), ("user", "u")), "messages[1]", "may only come first"),
        ((("user", "a"), ("assistant", "b")), "messages", "the last message must be the user's"),
        ((("system", "s"),), "messages", "the last message must be the user's"),
    ],
)
def test_a_conversation_the_format_cannot_render_is_a_400_naming_the_message(turns, param, words):
    with pytest.raises(ApiError) as caught:
        conversation(chat(*turns))
    assert caught.value.status == 400 and caught.value.param == param and words in caught.value.message


def test_a_plain_text_model_continues_one_message_and_answers_a_history_with_a_400():
    from core.prompts import PlainTextFormat

    model = ServedModel("new_model", llama=None, tokenizer=None, chat=PlainTextFormat(), system_prompt=None)
    assert chat_prompt(model, chat(("user", "A list comprehension"))).text == "A list comprehension"
    history = chat(("user", "a"), ("assistant", "b"), ("user", "c"))
    for messages in (history, chat(("system", "S"), ("user", "q"))):
        with pytest.raises(ApiError) as error:
            chat_prompt(model, messages)
        assert error.value.status == 400 and "plain text" in error.value.message


def test_the_answer_takes_what_was_asked_or_the_profiles_limit_cut_to_the_room_left():
    assert answer_budget(100, 50, 128, 1024, "messages") == 50
    assert answer_budget(100, None, 128, 1024, "messages") == 128
    assert answer_budget(1000, None, 128, 1024, "messages") == 24  # not asked: what fits
    for prompt, asked in ((1000, 100), (1024, None), (2000, None)):
        with pytest.raises(ApiError) as caught:
            answer_budget(prompt, asked, 128, 1024, "prompt")
        assert (
            caught.value.code == "context_length_exceeded"
            and "context is 1024 tokens" in caught.value.message
        )
        assert f"the prompt take {prompt}" in caught.value.message


def test_a_parameter_left_out_takes_the_profiles_value():
    greedy = InferenceConfig(repetition_penalty=1.1, seed=7)
    request = ChatRequest(model="m", messages=[{"role": "user", "content": "q"}])
    options = decoding_options(request, greedy, 64)
    assert options == {"max_tokens": 64, "temperature": 0.0, "top_p": 0.9, "top_k": 0, "min_p": 0.0,
                       "repeat_penalty": 1.1, "frequency_penalty": 0.0, "presence_penalty": 0.0, "stop": None,
                       "seed": 7}  # fmt: skip
    sampling = InferenceConfig(do_sample=True, temperature=0.6, top_p=0.8)
    assert decoding_options(request, sampling, 64)["temperature"] == 0.6
    asked = ChatRequest(
        model="m", messages=[{"role": "user", "content": "q"}], temperature=0, top_p=0.5, seed=1
    )
    assert {key: decoding_options(asked, sampling, 64)[key] for key in ("temperature", "top_p", "seed")} == {
        "temperature": 0,
        "top_p": 0.5,
        "seed": 1,
    }


def test_requests_refuse_unknown_parameters_and_out_of_range_values():
    with pytest.raises(ValidationError, match="best_of"):
        CompletionRequest(model="m", prompt="p", best_of=2)
    with pytest.raises(ValidationError, match="temperature"):
        ChatRequest(model="m", messages=[{"role": "user", "content": "q"}], temperature=2.5)
    with pytest.raises(ValidationError, match="messages"):
        ChatRequest(model="m", messages=[])
    assert CompletionRequest(model="m", prompt="p", logit_bias={"5": 1.5}).logit_bias == {5: 1.5}


def test_logit_bias_names_only_tokens_of_the_model():
    require_tokens({0: 1.0, 99: -1.0}, 100)
    with pytest.raises(ApiError, match="100 is not a token id of this model \\(0 to 99\\)"):
        require_tokens({100: 1.0}, 100)


def test_only_loopback_addresses_serve_without_an_api_key():
    assert all(map(is_loopback, ("127.0.0.1", "127.0.0.2", "::1", "localhost")))
    assert not any(map(is_loopback, ("0.0.0.0", "::", "192.168.1.5", "example.org")))


def test_errors_have_openais_shape():
    response = ApiError(404, "model 'x' is not served here", "model", "model_not_found").response()
    assert response.status_code == 404
    error = {"message": "model 'x' is not served here", "type": "invalid_request_error", "param": "model"}
    assert json.loads(response.body) == {"error": {**error, "code": "model_not_found"}}
    assert ApiError(401, "key").response().headers["www-authenticate"] == "Bearer"
