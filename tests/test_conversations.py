"""Multi-turn conversations, Firefly's format and plain text as training sees them: the loss on exactly every
answer and the token that closes it, the ids `make chat` sends for the same history, a conversation cut
between turns, Firefly's own string and ids, and a plain-text document all in the loss. On the embedded
tokenizer, Meta's Llama-2 tokenizer and Llama-3's (its own chat template)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import InferenceConfig
from core.errors import UserError
from core.model import chat_format, load_tokenizer, prompt_ids, training_ids_batch
from core.prompts import Rendered, TrainingRow, conversation_row, template_format
from core.tokens import backend_of
from data_prep.rows import Example, RowSettings, TokenCounter, prepare_batch, training_row_of
from data_prep.rules import TOO_LONG
from inference.chat import fitted_prompt
from synthetic.llama import LLAMA2_TOKENIZER
from tests.conftest import LLAMA3_TOKENIZER, REPO, built, run_stage

SYSTEM = "Answer briefly."
TURNS = [
    ("How do I reverse a list in Python?", "Use `xs[::-1]` for a copy, or `xs.reverse()` in place."),
    ("And a string that ends in </s>?", "Slicing works on strings too: `s[::-1]`."),
    ("Which one is faster?", "`reversed(xs)` avoids the copy when you only iterate."),
]
SAMPLES = REPO / "data" / "samples"


@pytest.fixture(params=[built("embedded"), "llama2", "llama3", "firefly"])
def run_format(request):
    """A run's tokenizer in its chat format, and the system prompt it takes: the embedded base's and Meta's
    in Llama-2's, Llama-3's in its own template, Meta's in Firefly's (which has no system prompt)."""
    if request.param == "embedded":
        return load_tokenizer(str(request.getfixturevalue("smoke_base_dir"))), SYSTEM
    if request.param == "llama2":
        return request.getfixturevalue("llama2_tokenizer"), SYSTEM
    if request.param == "firefly":
        return load_tokenizer(str(LLAMA2_TOKENIZER), prompt_format="firefly"), None
    return load_tokenizer(str(LLAMA3_TOKENIZER), prompt_format="chat_template"), SYSTEM


def runs_in_loss(ids: list[int], mask: list[int]) -> list[list[int]]:
    """The stretches of ids the mask puts in the loss, in order."""
    runs: list[list[int]] = []
    for index, (token, kept) in enumerate(zip(ids, mask, strict=True)):
        if kept:
            if index == 0 or not mask[index - 1]:
                runs.append([])
            runs[-1].append(token)
    return runs


def test_a_three_turn_conversation_has_exactly_its_three_answers_and_their_closing_tokens_in_the_loss(
    run_format,
):
    tokenizer, system = run_format
    chat = chat_format(tokenizer)
    row = conversation_row(chat, system, TURNS)
    ((ids, mask),) = training_ids_batch(tokenizer, [row])
    closing = tokenizer.convert_tokens_to_ids(chat.end_of_answer)
    runs = runs_in_loss(ids, mask)
    assert len(runs) == 3
    for run, (_, answer) in zip(runs, TURNS, strict=True):
        assert run[-1] == closing
        assert closing not in run[:-1]
        assert tokenizer.decode(run[:-1]).strip() == answer
    reopened = len(TURNS) - 1 if chat.name == "llama2" else 0  # Meta's format opens each turn with BOS
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1 + reopened
    assert mask[-1] == 1 and ids[-1] == tokenizer.eos_token_id


def test_the_prompt_of_the_last_answer_is_what_make_chat_sends_for_that_history(run_format):
    tokenizer, system = run_format
    row = conversation_row(chat_format(tokenizer), system, TURNS)
    ((ids, mask),) = training_ids_batch(tokenizer, [row])
    settings = InferenceConfig(max_new_tokens=16)
    sent, dropped = fitted_prompt(tokenizer, TURNS[-1][0], system, TURNS[:-1], 4096, settings)
    chat_ids = prompt_ids(tokenizer, sent)
    last_answer = len(mask) - mask[::-1].index(0)  # where the final run of the loss begins
    assert dropped == 0
    assert ids[:last_answer] == chat_ids


def test_a_conversation_over_the_length_limit_is_cut_between_turns():
    tokenizer = load_tokenizer(str(LLAMA2_TOKENIZER))
    chat, counter = chat_format(tokenizer), TokenCounter(backend_of(tokenizer))
    example = Example("chats", "1", TURNS[-1][0], TURNS[-1][1], history=tuple(TURNS[:-1]))
    lengths = [
        len(ids)
        for ids, _ in training_ids_batch(
            tokenizer, [conversation_row(chat, SYSTEM, TURNS[:k]) for k in (1, 2, 3)]
        )
    ]
    two_turns = RowSettings(SYSTEM, False, chat, max_length=lengths[1])
    batch = prepare_batch([example], two_turns, counter)
    (row,) = batch.rows.to_pylist()
    assert batch.failed_rules == [None] and batch.turns_cut == 1
    assert row["completion"] == chat.completion(TURNS[1][1]) and len(row["earlier_answers"]) == 1
    assert row["prompt"] == chat.prompt(TURNS[1][0], SYSTEM, TURNS[:1])
    assert (
        len(training_ids_batch(tokenizer, [training_row_of(example, *TURNS[-1], two_turns)])[0][0])
        == lengths[2]
    )

    too_short = RowSettings(SYSTEM, False, chat, max_length=lengths[0] - 1)
    assert prepare_batch([example], too_short, counter).failed_rules == [TOO_LONG]
    truncated = RowSettings(SYSTEM, False, chat, max_length=lengths[0] - 1, drop_too_long=False)
    kept = prepare_batch([example], truncated, counter)
    assert kept.failed_rules == [None] and kept.turns_cut == 2
    assert kept.rows.to_pylist()[0]["earlier_answers"] == []


@pytest.mark.parametrize("which", [built("embedded"), "llama2"])
def test_fireflys_rendering_of_a_two_turn_dialogue_is_fireflys_own_string_and_ids(request, which):
    path = request.getfixturevalue("smoke_base_dir") if which == "embedded" else LLAMA2_TOKENIZER
    tokenizer = load_tokenizer(str(path), prompt_format="firefly")
    turns = [("input1", "target1"), ("input2", "target2")]
    messages = [
        {"role": role, "content": text}
        for turn in turns
        for role, text in zip(("user", "assistant"), turn, strict=True)
    ]
    assert (
        tokenizer.apply_chat_template(messages, tokenize=False)
        == "<s>input1</s>target1</s>input2</s>target2</s>"
    )

    # Firefly's SFTDataset: BOS, then each utterance encoded alone and followed by EOS; targets in the loss.
    expected_ids, expected_mask = [tokenizer.bos_token_id], [0]
    for index, text in enumerate(text for turn in turns for text in turn):
        utterance = tokenizer(text, add_special_tokens=False)["input_ids"]
        expected_ids += [*utterance, tokenizer.eos_token_id]
        expected_mask += [index % 2] * (len(utterance) + 1)
    row = conversation_row(chat_format(tokenizer), None, turns)
    assert training_ids_batch(tokenizer, [row]) == [(expected_ids, expected_mask)]


def test_a_template_that_rewrites_earlier_answers_is_refused():
    template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}<|end|>"
        "{% elif loop.last %}<|assistant|>{{ m['content'] }}<|end|>"
        "{% else %}<|assistant|>(earlier) {{ m['content'] }}<|end|>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    chat = template_format(
        template, None, "<|end|>", ["<|user|>", "<|assistant|>", "<|end|>"], adds_bos=False
    )
    assert conversation_row(chat, None, TURNS[:1]).earlier_answers == ()
    with pytest.raises(UserError, match="earlier turn"):
        conversation_row(chat, None, TURNS)


def test_a_plain_text_document_is_all_completion_and_every_token_is_in_the_loss(llama2_tokenizer):
    document = (
        "A list comprehension builds a list.\n\nIt reads `[x * 2 for x in xs]` and ends with </s> as text."
    )
    chat = chat_format(load_tokenizer(str(LLAMA2_TOKENIZER), prompt_format="text"))
    settings = RowSettings(None, False, chat)
    (row,) = prepare_batch([Example("notes", "1", "", document, plain_text=True)], settings).rows.to_pylist()
    assert (row["prompt"], row["completion"], row["controls"]) == ("", document, [])
    ((ids, mask),) = training_ids_batch(llama2_tokenizer, [TrainingRow(Rendered(""), Rendered(document))])
    assert mask == [0] + [1] * (len(ids) - 1)
    assert ids[0] == llama2_tokenizer.bos_token_id and ids[-1] == llama2_tokenizer.eos_token_id
    assert ids.count(llama2_tokenizer.eos_token_id) == 1  # the text's `</s>` stays text


CONVERSATION_SOURCES = (
    "data.conversations=[{path: data/samples/conversations/messages.jsonl, format: messages}, "
    "{path: data/samples/conversations/sharegpt.json, format: sharegpt}, "
    "{path: data/samples/conversations/moss.jsonl, format: moss}]"
)


@pytest.mark.e2e
def test_a_conversation_run_curates_counts_bad_records_and_trains_every_answer(tmp_path, smoke_base_dir):
    (tmp_path / "base").symlink_to(smoke_base_dir.parent)
    sources = ["--set", "data.stackoverflow=null", "--set", "data.alpaca=null", "--set", CONVERSATION_SOURCES]
    run_stage("data_prep", tmp_path, *sources, "--set", "data.validation_size=4")
    dataset = tmp_path / "runs" / "smoke" / "dataset"
    stats = json.loads((dataset / "stats.json").read_text())
    messages = stats["read"]["data/samples/conversations/messages.jsonl"]
    assert set(messages["bad"]) == {
        "a turn with an unknown role", "two assistant turns in a row", "an empty conversation",
        "does not end with an answer",
    }  # fmt: skip
    assert all(count == 1 for count in messages["bad"].values())
    card = (dataset / "README.md").read_text()
    assert "two assistant turns in a row: 1" in card and "bad records skipped" in card

    inspected = run_stage("fine_tune.inspect_rows", tmp_path, *sources, "--format", "json", "--rows", "2")
    for line in inspected.stdout.splitlines():
        row = json.loads(line)
        labelled = [index for index, label in enumerate(row["labels"]) if label != -100]
        runs = sum(1 for index in labelled if index - 1 not in labelled)
        examples = row["position_ids"].count(0) if "position_ids" in row else 1
        assert runs > examples  # more answers in the loss than conversations: earlier turns too

    run_stage(
        "fine_tune.train", tmp_path, *sources, "--set", "train.max_steps=2", "--set", "train.eval_steps=2"
    )
    assert (tmp_path / "runs" / "smoke" / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.e2e
def test_a_plain_text_run_packs_documents_with_every_token_in_the_loss(tmp_path, smoke_base_dir):
    (tmp_path / "base").symlink_to(smoke_base_dir.parent)
    sources = [
        "--set", "data.stackoverflow=null", "--set", "data.alpaca=null",
        "--set", "data.text=[{path: data/samples/text/python_notes.txt}]",
        "--set", "data.prompt_format=text", "--set", "data.system_prompt=null", "--set", "train.packing=true",
        "--set", "train.max_length=256",
    ]  # fmt: skip
    run_stage("data_prep", tmp_path, *sources)
    inspected = run_stage("fine_tune.inspect_rows", tmp_path, *sources, "--format", "json", "--rows", "3")
    for line in inspected.stdout.splitlines():
        row = json.loads(line)
        starts = [index for index, position in enumerate(row["position_ids"]) if position == 0]
        assert len(row["input_ids"]) <= 256
        # Every token is in the loss but the first of each packed piece, which nothing before it predicts.
        assert all((label == -100) == (index in starts) for index, label in enumerate(row["labels"]))
    run_stage(
        "fine_tune.train", tmp_path, *sources, "--set", "train.max_steps=2", "--set", "train.eval_steps=2"
    )
    answer = run_stage(
        "inference", tmp_path, *sources, "--model", "new_model", "--prompt", "A list comprehension"
    )
    assert answer.returncode == 0


def test_the_sample_profile_names_files_that_exist():
    from core.config import load_config

    config = load_config(REPO / "configs" / "conversations.yaml", [])
    assert [source.format for source in config.data.conversations] == ["messages", "sharegpt", "moss"]
    assert all(Path(REPO / source.path).is_file() for source in config.data.conversations)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.prompt_format=text", "data.system_prompt=null"], "prompt_format text has no prompts"),
        (["data.prompt_format=firefly"], "prompt_format firefly has no system prompt"),
        (["data.text=[{path: notes.txt}]"], "set train.packing=true"),
        (["data.conversations=[{path: chats.jsonl, format: openai}]"], "data.conversations.0.format"),
    ],
)
def test_a_profile_that_cannot_train_its_sources_in_its_format_stops_in_one_line(overrides, message):
    from core.config import load_config

    with pytest.raises(UserError, match=message):
        load_config(REPO / "configs" / "smoke.yaml", overrides)
