"""The Llama-2 format, and what the real tokenizers and TRL pipeline make of it: BOS, EOS, loss mask.

Tokenizer tests run on the embedded base's tokenizer and on Meta's Llama-2 tokenizer
(data/tokenizers/llama-2, loaded as the 7B profile loads it)."""

import pytest

from core.prompts import LLAMA2_CHAT_TEMPLATE, render_completion, render_prompt
from tests.conftest import built

# The chat template of meta-llama/Llama-2-7b-chat-hf's tokenizer_config.json, character for character:
# the reference every rendering of the product is checked against.
OFFICIAL_LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}"
    "{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0)"
    " %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + "
    "system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = "
    "message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + "
    "content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + "
    "' ' + eos_token }}{% endif %}{% endfor %}"
)

SYSTEM = "Be brief."
EXAMPLES = [
    ("How do I reverse a list?", "Use slicing:\n\n```\nitems[::-1]\n```"),
    ("What does `yield` do? café", "It makes the function a generator."),
    ("Sort a dict by value", "`sorted(d.items(), key=lambda kv: kv[1])`"),
]
# The three conversations of the format's contract: (system, [(user, answer), ...], final user).
CONVERSATIONS = {
    "one turn": (SYSTEM, [], "How do I reverse a list?"),
    "one turn, no system prompt": (None, [], "How do I reverse a list?"),
    "closed turns": (
        SYSTEM,
        [("first?", "one"), ("How do I\n    indent?", "```python\ndef f():\n    return 1\n```")],
        "third?",
    ),
}


def messages(system: str | None, history: list[tuple[str, str]], user: str) -> list[dict[str, str]]:
    """A conversation as chat messages (a blank system prompt is no system message, as in render_prompt)."""
    listed = [{"role": "system", "content": system}] if system else []
    for turn_user, answer in history:
        listed += [{"role": "user", "content": turn_user}, {"role": "assistant", "content": answer}]
    return [*listed, {"role": "user", "content": user}]


def official_render(system: str | None, history: list[tuple[str, str]], user: str) -> str:
    """The official template, rendered by the same Jinja machinery transformers uses."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[messages(system, history, user)],
        chat_template=OFFICIAL_LLAMA2_CHAT_TEMPLATE,
        bos_token="<s>",
        eos_token="</s>",
    )
    return rendered[0]


@pytest.fixture(params=[built("smoke"), "llama2"])
def tokenizer(request):
    """The embedded base's tokenizer and Meta's Llama-2 tokenizer, each as the product loads it."""
    return request.getfixturevalue(f"{request.param}_tokenizer")


def test_the_chat_template_is_the_official_one_verbatim():
    assert LLAMA2_CHAT_TEMPLATE == OFFICIAL_LLAMA2_CHAT_TEMPLATE


def test_prompt_with_system_prompt_is_exactly_llama2():
    assert (
        render_prompt("How do I reverse a list?", SYSTEM)
        == "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHow do I reverse a list? [/INST]"
    )


def test_prompt_without_system_prompt():
    assert render_prompt("  Hi  ", None) == "[INST] Hi [/INST]"
    assert render_prompt("Hi", "   ") == "[INST] Hi [/INST]"


def test_completion_is_the_answer_between_two_spaces():
    assert render_completion("  answer\n") == " answer "


def test_history_closes_each_turn_with_a_space_and_eos_and_opens_the_next_with_bos():
    text = render_prompt("second?", SYSTEM, history=[("first?", "one")])
    assert text == "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nfirst? [/INST] one </s><s>[INST] second? [/INST]"


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_render_prompt_is_the_official_template(name):
    system, history, user = CONVERSATIONS[name]
    assert "<s>" + render_prompt(user, system, history) == official_render(system, history, user)


@pytest.mark.parametrize(
    ("system", "user", "answer"),
    [
        ("  padded system \n", "\n  user with spaces  ", "  answer with spaces \n"),
        ("line one\n\nline two\n", "q", "a"),
        (None, "\tq\t", "\n\n```\ncode\n```\n"),
    ],
)
def test_whitespace_is_stripped_where_the_official_template_strips_it(system, user, answer):
    history = [(user, answer)]
    assert "<s>" + render_prompt(user, system, history) == official_render(system, history, user)


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_saved_tokenizer_chat_template_renders_the_product_prompt(name, tokenizer):
    """Ids are compared with Meta's in tests/test_llama2_tokenizer.py."""
    system, history, user = CONVERSATIONS[name]
    prompt = render_prompt(
        user, system, history, eos_token=tokenizer.eos_token, bos_token=tokenizer.bos_token
    )
    assert tokenizer.apply_chat_template(messages(system, history, user), tokenize=False) == "<s>" + prompt


def test_tokenizer_adds_exactly_one_bos_and_no_eos(tokenizer):
    ids = tokenizer(render_prompt("How?", SYSTEM))["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.eos_token_id not in ids


def test_training_pad_token_is_never_eos(tokenizer):
    assert tokenizer.pad_token_id is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.pad_token == tokenizer.unk_token


def test_byte_fallback_round_trips_any_text(tokenizer):
    text = "naïve café 咖啡 £5 🙂\n    indented\n\n\ttab"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


# The fixture that curates the smoke data for each base (tests/conftest.py).
CURATED = {"smoke": "curated", "llama2": "llama2_curated"}


@pytest.fixture(scope="module", params=[built("smoke"), built("llama2")])
def prepared(request, tmp_path_factory):
    """The real SFTTrainer on each base, the embedded smoke base and the random Llama-2-shaped one with Meta's
    tokenizer, over the test examples and every train and validation row curated for that base: its
    tokenizer, the rows, the prepared examples and one collated batch of them all."""
    from tests.conftest import curated_rows, sft_examples

    tokenizer = request.getfixturevalue(f"{request.param}_tokenizer")
    base = request.getfixturevalue(f"{request.param}_base_dir")
    rows = [{"prompt": render_prompt(q, SYSTEM), "completion": render_completion(a)} for q, a in EXAMPLES]
    rows += [
        {"prompt": row["prompt"], "completion": row["completion"]}
        for row in curated_rows(request.getfixturevalue(CURATED[request.param]))
    ]
    examples, batch = sft_examples(base, tokenizer, rows, tmp_path_factory.mktemp("prepared"))
    return tokenizer, rows, examples, batch


def test_the_last_label_of_every_example_is_eos(prepared):
    tokenizer, _, examples, batch = prepared
    for example in examples:
        assert example["labels"][-1] == tokenizer.eos_token_id
        # EOS comes as a token after the answer's closing space, never fused into it
        assert tokenizer.decode(example["input_ids"]).endswith(" " + tokenizer.eos_token)
    for labels in batch["labels"].tolist():
        real = [label for label in labels if label != -100]
        assert real[-1] == tokenizer.eos_token_id


def test_every_training_sequence_has_one_bos(prepared):
    tokenizer, _, examples, _ = prepared
    for example in examples:
        assert example["input_ids"][0] == tokenizer.bos_token_id
        assert example["input_ids"].count(tokenizer.bos_token_id) == 1


def test_loss_mask_covers_exactly_the_completion_and_eos(prepared):
    tokenizer, rows, examples, batch = prepared
    for row, example in zip(rows, examples, strict=True):
        prompt_ids = tokenizer(row["prompt"])["input_ids"]
        assert example["input_ids"][: len(prompt_ids)] == prompt_ids
        labels = example["labels"]
        assert all(label == -100 for label in labels[: len(prompt_ids)])
        assert labels[len(prompt_ids) :] == example["input_ids"][len(prompt_ids) :]
        supervised = tokenizer.decode(example["input_ids"][len(prompt_ids) :])
        # the decoder drops the completion's leading space, as it drops the start of any text
        assert supervised == row["completion"][1:] + tokenizer.eos_token
    # padding is masked in the batch, and only padding: every real token keeps its label or mask
    for row_ids, row_labels, row_mask in zip(
        batch["input_ids"].tolist(), batch["labels"].tolist(), batch["attention_mask"].tolist(), strict=True
    ):
        for token, label, mask in zip(row_ids, row_labels, row_mask, strict=True):
            if mask == 0:
                assert label == -100 and token == tokenizer.pad_token_id


# Meta's Llama-3-Instruct chat template, as published with meta-llama/Meta-Llama-3-8B-Instruct.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]


def llama3_format():
    from core.prompts import template_format

    return template_format(LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|end_of_text|>", LLAMA3_SPECIALS, True)


def test_a_llama3_prompt_is_the_template_without_the_bos_the_tokenizer_adds():
    chat = llama3_format()
    assert chat.end_of_answer == "<|eot_id|>" and chat.bos_written == "<|begin_of_text|>"
    assert chat.prompt(" How? ", "Be exact.") == (
        "<|start_header_id|>system<|end_header_id|>\n\nBe exact.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHow?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert chat.prompt("How?", "  ") == (
        "<|start_header_id|>user<|end_header_id|>\n\nHow?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_a_llama3_completion_is_the_answer_and_a_closed_turn_is_prompt_completion_end():
    chat = llama3_format()
    assert chat.completion("  Use `x[::-1]`.\n") == "Use `x[::-1]`."
    follow_up = chat.prompt("And sets?", "Be exact.", [("How?", " Use it. ")])
    closed = chat.prompt("How?", "Be exact.") + chat.completion(" Use it. ") + chat.end_of_answer
    assert follow_up == closed + "<|start_header_id|>user<|end_header_id|>\n\nAnd sets?<|eot_id|>" + (
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_the_llama2_template_read_as_a_chat_template_renders_what_the_llama2_format_does(name):
    from core.prompts import Llama2Format, template_format

    system, history, user = CONVERSATIONS[name]
    generic = template_format(LLAMA2_CHAT_TEMPLATE, "<s>", "</s>", ["<s>", "</s>", "<unk>"], True)
    assert generic.end_of_answer == "</s>"
    assert generic.prompt(user, system, history) == Llama2Format().prompt(user, system, history)
    assert generic.completion(" An answer\n") == Llama2Format().completion(" An answer\n")


def test_a_template_that_cannot_teach_stopping_or_moves_the_prompt_is_refused_in_one_line():
    from core.errors import UserError
    from core.prompts import template_format

    plain = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    plain += "{% if add_generation_prompt %}assistant: {% endif %}"
    with pytest.raises(UserError, match=r"ends an answer with '', not a special token"):
        template_format(plain, None, "</s>", ["</s>"], False)
    moving = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}>>{% endif %}"
    )
    with pytest.raises(UserError, match="does not write the answer right after its generation prompt"):
        template_format(moving, None, "</s>", ["</s>"], False)


def test_without_system_drops_the_llama2_block_or_the_system_words():
    from core.prompts import without_system

    llama2 = render_prompt("How?", "Be exact.")
    assert without_system(llama2, "Be exact.") == "[INST] How? [/INST]"
    llama3 = llama3_format().prompt("How?", "Be exact.")
    assert "Be exact." not in without_system(llama3, "Be exact.") and "How?" in without_system(
        llama3, " Be exact."
    )
    assert without_system(llama2, None) == llama2
    import pyarrow as pa  # an Arrow array of texts: each text's, by Arrow

    for texts in ([llama2, llama2 + " Be exact."], [llama2, llama3, "Be exact. and Be exact.", "none", ""]):
        expected = [without_system(text, "Be exact.") for text in texts]
        assert without_system(pa.array(texts), "Be exact.").to_pylist() == expected
