"""Meta's Llama-3 (8B Instruct) tokenizer, offline (tests/fixtures/llama3-tokenizer): Meta's ids for
llama.cpp's reference strings, one BOS, the special tokens, and the official chat template, loaded as users
load it (`AutoTokenizer.from_pretrained(folder)`).

The dialog ids below are Meta's own: `llama_models/llama3/tests/api/test_tokenizer.py` in the `llama-models`
package (0.3.0 on PyPI), which encodes with tiktoken on Meta's `tokenizer.model`.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import LLAMA3_TOKENIZER

CASES = json.loads((LLAMA3_TOKENIZER / "reference_cases.json").read_text(encoding="utf-8"))
CONFIG = json.loads((LLAMA3_TOKENIZER / "tokenizer_config.json").read_text(encoding="utf-8"))
BOS, EOS, START_HEADER, END_HEADER, EOT = 128000, 128001, 128006, 128007, 128009
# Meta-Llama-3-8B-Instruct's chat template, verbatim as published (written out here, not read from build.py)
OFFICIAL_LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
# llama-models' test_encode / test_encode_dialog: "This is a test sentence." and a system + user dialog
SENTENCE_IDS = [2028, 374, 264, 1296, 11914, 13]
DIALOG_IDS = [
    *[BOS, START_HEADER, 9125, END_HEADER, 271, *SENTENCE_IDS, EOT],  # system
    *[START_HEADER, 882, END_HEADER, 271, 2028, 374, 264, 2077, 13, EOT],  # user: "This is a response."
    *[START_HEADER, 78191, END_HEADER, 271],  # the assistant's open turn
]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(LLAMA3_TOKENIZER))


def meta_chat(system: str, user: str) -> str:
    return (
        f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_the_fixture_holds_llama_cpps_46_reference_cases():
    assert len(CASES) == 46
    assert sum(case["text"].startswith(" ") for case in CASES) == 15


def test_every_reference_case_encodes_to_metas_ids_and_decodes_back(tokenizer):
    for case in CASES:
        assert tokenizer(case["text"], add_special_tokens=False)["input_ids"] == case["ids"], case["text"]
        assert tokenizer.decode(case["ids"]) == case["text"]


def test_bos_is_added_once_and_eos_never(tokenizer):
    assert tokenizer("This is a test sentence.")["input_ids"] == [BOS, *SENTENCE_IDS]
    assert tokenizer("Hello world")["input_ids"] == [BOS, 9906, 1917]
    assert tokenizer("Hello world", add_special_tokens=False)["input_ids"] == [9906, 1917]
    assert tokenizer("")["input_ids"] == [BOS]
    # The post-processor adds BOS to any text, even one that begins with it: text rendered by the chat
    # template already holds BOS, so it is tokenized with add_special_tokens=False.
    assert tokenizer("<|begin_of_text|>Hi")["input_ids"] == [BOS, BOS, 13347]
    assert tokenizer("<|begin_of_text|>Hi", add_special_tokens=False)["input_ids"] == [BOS, 13347]


def test_the_chat_template_renders_metas_format(tokenizer):
    system, user = "You are a careful assistant.", "How do I read a file line by line?"
    conversation = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert text == meta_chat(system, user)
    ids = tokenizer.apply_chat_template(
        conversation, tokenize=True, add_generation_prompt=True, return_dict=True
    )["input_ids"]
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.count(BOS) == 1 and ids[0] == BOS
    # content is trimmed, as the template's `| trim` says
    padded = [{"role": "system", "content": f"  {system}\n"}, {"role": "user", "content": f"\n{user} "}]
    assert tokenizer.apply_chat_template(padded, tokenize=False, add_generation_prompt=True) == text


def test_the_chat_template_gives_metas_dialog_ids(tokenizer):
    conversation = [
        {"role": "system", "content": "This is a test sentence."},
        {"role": "user", "content": "This is a response."},
    ]
    ids = tokenizer.apply_chat_template(
        conversation, tokenize=True, add_generation_prompt=True, return_dict=True
    )["input_ids"]
    assert ids == DIALOG_IDS


def test_the_special_tokens(tokenizer):
    assert tokenizer("<|eot_id|>", add_special_tokens=False)["input_ids"] == [EOT]
    assert tokenizer.convert_tokens_to_ids("<|eot_id|>") == EOT
    named = {
        "<|begin_of_text|>": BOS,
        "<|end_of_text|>": EOS,
        "<|start_header_id|>": START_HEADER,
        "<|end_header_id|>": END_HEADER,
        "<|eot_id|>": EOT,
    }
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in named} == named
    specials = [tokenizer.convert_ids_to_tokens(i) for i in range(128000, 128256)]
    reserved = [token for token in specials if token not in named]
    assert reserved == [f"<|reserved_special_token_{n}|>" for n in range(251)]
    assert len(tokenizer) == 128256  # the embedding matrix of Llama-3-8B: nothing to add
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|begin_of_text|>", BOS)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|eot_id|>", EOT)  # the Instruct model's
    assert tokenizer.pad_token is None and tokenizer.unk_token is None
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=True, add_generation_prompt=True, return_dict=True
    )["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\n\nHiassistant\n\n"


def test_the_config_is_metas_publication():
    assert CONFIG["chat_template"] == OFFICIAL_LLAMA3_CHAT_TEMPLATE
    assert (CONFIG["tokenizer_class"], CONFIG["bos_token"], CONFIG["eos_token"]) == (
        "PreTrainedTokenizerFast",
        "<|begin_of_text|>",
        "<|eot_id|>",
    )
    assert "pad_token" not in CONFIG and "unk_token" not in CONFIG
    assert CONFIG["model_max_length"] == 1000000000000000019884624838656
    assert len(CONFIG["added_tokens_decoder"]) == 256


def test_published_cleanup_flag_does_not_touch_decoded_text(tokenizer):
    """Meta published `clean_up_tokenization_spaces: true`, whose clean-up (` !` to `!`, ` 's` to `'s`...)
    breaks code; transformers 5 ignores it for BPE tokenizers, so decode gives back the text."""
    assert CONFIG["clean_up_tokenization_spaces"] is True
    for text in ("x != y and a.b == c", "the word 'social'", "hello ! ? , ."):
        assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
