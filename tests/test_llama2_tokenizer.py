"""Meta's Llama-2 tokenizer, offline (data/tokenizers/llama-2): SentencePiece's own ids for
llama.cpp's reference strings, and what the product makes of the tokenizer the 7B profile loads.

Meta's reference ids for a conversation come from Meta's reference code (`llama/generation.py`): each
closed turn is encoded on its own as BOS + `[INST] {user} [/INST] {answer} ` + EOS, the open turn as
BOS + `[INST] {user} [/INST]`. They are computed here with the plain fast tokenizer, which gives
SentencePiece's ids on every reference case.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core.prompts import B_SYS, E_SYS, render_completion, render_prompt
from synthetic.llama import LLAMA2_TOKENIZER
from tests.test_prompts import CONVERSATIONS, OFFICIAL_LLAMA2_CHAT_TEMPLATE, messages

CASES = json.loads((LLAMA2_TOKENIZER / "reference_cases.json").read_text(encoding="utf-8"))
UNK, BOS, EOS = 0, 1, 2
QUESTION = "How do I read a file line by line?"
# Answers as curation writes them, and the shapes that could fuse with `[/INST]` or with the final space.
ANSWERS = [
    "Use a loop:\n\n```python\nwith open(path) as f:\n    for line in f:\n        print(line)\n```",
    "```python\nfor line in open(path):\n    print(line.rstrip())\n```",
    "   Indented first line, then\n\tcode:\n\n    x = 1\n",
    "\n\nStarts with blank lines.",
    "Ends with a fence:\n```\npass\n```",
    "Ünïcödé, 咖啡 and 🦙: fine.",
    "    def f():\n        return 1",
]


@pytest.fixture(scope="module")
def plain():
    """The fixture's tokenizer.json as it is, without transformers rebuilding its pipeline."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(LLAMA2_TOKENIZER / "tokenizer.json"))


def with_legacy(folder: Path, legacy: bool) -> Path:
    """A copy of the fixture whose tokenizer_config.json says `legacy: <legacy>`."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(LLAMA2_TOKENIZER / "tokenizer.json", folder)
    config = json.loads((LLAMA2_TOKENIZER / "tokenizer_config.json").read_text(encoding="utf-8"))
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "legacy": legacy}), encoding="utf-8")
    return folder


@pytest.fixture(scope="module", params=[False, True], ids=["legacy-false", "legacy-true"])
def product(request, tmp_path_factory):
    """The tokenizer the product loads for the 7B profile (core.model.load_tokenizer: AutoTokenizer, so
    transformers' LlamaTokenizer class), from Meta's published config (`legacy: false`) and from one with
    `legacy: true`. The product loads both as `legacy: true`, and saves it so: with `legacy: false`
    transformers adds no `▁` to text that follows a special token (`</s><s>[INST]` would give `[`, 29961,
    where Meta's encoding gives `▁[`, 518), and chat history and the chat template write those as text."""
    from core.model import load_tokenizer

    folder = with_legacy(tmp_path_factory.mktemp("llama2") / "tokenizer", request.param)
    tokenizer = load_tokenizer(str(folder))
    assert tokenizer.legacy is True
    saved = tmp_path_factory.mktemp("saved")
    tokenizer.save_pretrained(saved)
    assert json.loads((saved / "tokenizer_config.json").read_text())["legacy"] is True
    return tokenizer


def meta_ids(plain, system: str | None, history: list[tuple[str, str]], user: str | None) -> list[int]:
    """Meta's reference encoding of a conversation (see the module docstring); `user` None: no open turn."""
    turns = [*history, (user, None)] if user is not None else list(history)
    if system:
        turns[0] = (B_SYS + system + E_SYS + turns[0][0], turns[0][1])
    ids: list[int] = []
    for turn_user, answer in turns:
        text = f"[INST] {turn_user.strip()} [/INST]"
        if answer is None:
            ids += plain(text)["input_ids"]
        else:
            ids += plain(f"{text} {answer.strip()} ")["input_ids"] + [EOS]
    return ids


def test_the_fixture_holds_llama_cpps_46_reference_cases():
    assert len(CASES) == 46
    assert sum(case["text"].startswith(" ") for case in CASES) == 15


def test_the_plain_fast_tokenizer_gives_sentencepieces_ids_on_every_case(plain):
    for case in CASES:
        assert plain(case["text"], add_special_tokens=False)["input_ids"] == case["ids"], case["text"]
        assert plain.decode(case["ids"]) == case["text"]


def test_the_llama_tokenizer_class_differs_only_on_text_that_begins_with_a_space(product):
    assert type(product).__name__ == "LlamaTokenizer"
    differing = {
        case["text"]
        for case in CASES
        if product(case["text"], add_special_tokens=False)["input_ids"] != case["ids"]
    }
    assert differing == {case["text"] for case in CASES if case["text"].startswith(" ")}
    for case in CASES:
        assert product.decode(case["ids"]) == case["text"]


def test_known_ids(plain, product):
    for tokenizer in (plain, product):
        assert tokenizer("Hello world")["input_ids"] == [BOS, 15043, 3186]
        assert tokenizer("[INST]", add_special_tokens=False)["input_ids"] == [518, 25580, 29962]
        assert tokenizer("answer </s>")["input_ids"] == [BOS, 1234, 29871, EOS]


def test_the_chat_template_in_the_fixture_is_the_official_one():
    config = json.loads((LLAMA2_TOKENIZER / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == OFFICIAL_LLAMA2_CHAT_TEMPLATE
    assert (config["tokenizer_class"], config["add_bos_token"], config["add_eos_token"]) == (
        "LlamaTokenizer",
        True,
        False,
    )


def test_pad_is_unk_never_eos_and_needs_no_resize(product):
    assert (product.pad_token, product.pad_token_id) == ("<unk>", UNK)
    assert product.eos_token_id == EOS != product.pad_token_id
    assert len(product) == 32000  # the embedding matrix of Llama-2-7B: nothing to add


@pytest.mark.parametrize("answer", ANSWERS)
def test_product_texts_never_begin_with_a_space(answer):
    """Where the LlamaTokenizer class differs from SentencePiece (text that begins with a space), the
    product never goes: prompts and prompt + completion start with `[INST]`, each turn of a chat opens
    right after a special token with `[INST]`, and a completion is only tokenized after its prompt."""
    for prompt in (
        render_prompt(answer, answer),
        render_prompt(" " + QUESTION, None, history=[(answer, answer), ("\n q", answer)]),
    ):
        assert (prompt + render_completion(answer)).startswith("[INST] ")
        for piece in prompt.replace("</s>", "<s>").split("<s>"):
            assert piece.startswith("[INST] ") or piece == ""


@pytest.mark.parametrize("answer", ANSWERS)
def test_training_ids_are_metas_and_the_prompt_is_their_prefix(plain, product, answer):
    """What SFTTrainer tokenizes (prompt, then prompt + completion + EOS as text) is Meta's closed turn,
    token for token; the prompt's ids are a prefix, so nothing fuses across `[/INST]`; one BOS; the
    answer's closing space is its own piece before EOS."""
    prompt, completion = render_prompt(QUESTION, "Be brief."), render_completion(answer)
    prompt_ids = product(prompt)["input_ids"]
    full = product(prompt + completion + product.eos_token)["input_ids"]
    assert full == meta_ids(plain, "Be brief.", [(QUESTION, answer)], None)
    assert full[: len(prompt_ids)] == prompt_ids
    assert full.count(BOS) == 1
    assert full[-2:] == [29871, EOS]
    assert product.decode(full[len(prompt_ids) :]) == answer.strip() + " </s>"


@pytest.mark.parametrize("name", ["one turn", "one turn, no system prompt"])
def test_one_turn_prompt_ids_are_metas(plain, product, name):
    """What infer and compare send (the rendered prompt, BOS added by the tokenizer) is Meta's prompt."""
    system, history, user = CONVERSATIONS[name]
    assert product(render_prompt(user, system, history))["input_ids"] == meta_ids(
        plain, system, history, user
    )


def test_chat_prompt_ids_are_metas(plain, product):
    """make chat tokenizes the whole history, `</s><s>` between turns, as one string."""
    system, history, user = CONVERSATIONS["closed turns"]
    prompt = render_prompt(user, system, history, eos_token=product.eos_token, bos_token=product.bos_token)
    assert product(prompt)["input_ids"] == meta_ids(plain, system, history, user)


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_chat_template_ids_are_metas(plain, product, name):
    """The saved tokenizer's apply_chat_template, as a user of the merged model calls it (the template writes
    BOS as text, so even a one-turn prompt's `[INST]` follows a special token)."""
    system, history, user = CONVERSATIONS[name]
    ids = product.apply_chat_template(messages(system, history, user), tokenize=True, return_dict=True)
    assert ids["input_ids"] == meta_ids(plain, system, history, user)
