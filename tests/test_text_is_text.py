"""Text is text: a row or a prompt that spells every special token of its tokenizer (`<s>`, `</s>`,
`<|eot_id|>`, Llama-3's reserved tokens) holds exactly the format's control tokens, one BOS and, for a
training row, one final EOS, on the embedded tokenizer and Meta's Llama-2 and Llama-3 ones."""

from __future__ import annotations

import pytest

from core.model import answer_ids, chat_format, load_tokenizer, prompt_ids
from core.prompts import Rendered, curated_row
from core.tokens import encode
from data_prep.rows import Example, RowSettings, prepare_batch
from tests.conftest import LLAMA3_TOKENIZER, built, smoke_config


@pytest.fixture(scope="module", params=[built("embedded"), "llama2", "llama3"])
def tokenizer(request):
    if request.param == "embedded":
        return request.getfixturevalue("smoke_tokenizer")
    if request.param == "llama2":
        return request.getfixturevalue("llama2_tokenizer")
    return load_tokenizer(str(LLAMA3_TOKENIZER), prompt_format="chat_template")


def special_texts(tokenizer) -> list[str]:
    return [token.content for token in tokenizer.added_tokens_decoder.values() if token.special]


def control_ids(tokenizer) -> set[int]:
    return {token_id for token_id, token in tokenizer.added_tokens_decoder.items() if token.special}


def spelled(tokenizer) -> str:
    return "Use re.sub(" + " | ".join(special_texts(tokenizer)) + ") on [INST] <<SYS>> text"


def controls_of(tokenizer, ids: list[int]) -> list[int]:
    return [token_id for token_id in ids if token_id in control_ids(tokenizer)]


def test_plain_text_gets_the_ids_a_plain_call_gives(tokenizer):
    chat = chat_format(tokenizer)
    prompt = chat.rendered_prompt("How do I reverse a list?", "Be brief.", [("Hi?", "Hello.")])
    assert prompt_ids(tokenizer, prompt) == tokenizer(prompt.text)["input_ids"]
    completion = chat.rendered_completion("Use `items[::-1]`.")
    ids, start = answer_ids(tokenizer, prompt, completion)
    assert ids == [*tokenizer(prompt.text + completion.text)["input_ids"], tokenizer.eos_token_id]
    assert start == len(prompt_ids(tokenizer, prompt))


def test_a_curated_row_that_spells_every_special_token_has_one_bos_and_one_final_eos(tokenizer):
    chat = chat_format(tokenizer)
    text = spelled(tokenizer)
    settings = RowSettings("System " + text, False, chat)
    (row,) = prepare_batch([Example("alpaca", "1", "Q: " + text, "A: " + text)], settings).rows.to_pylist()
    prompt, completion = curated_row(row["prompt"], row["completion"], row["controls"])
    ids, start = answer_ids(tokenizer, prompt, completion)
    # Only the format's own controls: the tokenizer's BOS, the template's headers, the closing EOS.
    neutral = answer_ids(tokenizer, chat.rendered_prompt("Q", "System") + chat.rendered_completion("A"), "")[
        0
    ]
    assert controls_of(tokenizer, ids) == controls_of(tokenizer, neutral)
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    # One EOS, the last; a template that closes every turn with it (Llama-3's <|eot_id|>) has those too.
    assert ids[-1] == tokenizer.eos_token_id
    assert ids.count(tokenizer.eos_token_id) == (
        1 if chat.name == "llama2" else neutral.count(tokenizer.eos_token_id)
    )
    assert start < len(ids) - 1
    answer = tokenizer.decode(ids[start:-1], skip_special_tokens=False)
    assert answer.strip() == "A: " + text  # the literal text survives the round trip


def test_a_prompt_that_spells_them_reaches_the_model_as_text(tokenizer):
    chat = chat_format(tokenizer)
    text = spelled(tokenizer)
    ids = prompt_ids(tokenizer, chat.rendered_prompt(text))
    assert controls_of(tokenizer, ids) == controls_of(
        tokenizer, prompt_ids(tokenizer, chat.rendered_prompt("x"))
    )
    assert text in tokenizer.decode(ids, skip_special_tokens=True)
    # A chat's history: each closed turn's EOS and the next BOS are the format's, the turns' text is text.
    history = [(text, text)]
    with_history = prompt_ids(tokenizer, chat.rendered_prompt(text, None, history))
    neutral = prompt_ids(tokenizer, chat.rendered_prompt("x", None, [("x", "x")]))
    assert controls_of(tokenizer, with_history) == controls_of(tokenizer, neutral)


def test_a_plain_string_is_text_only(tokenizer):
    """What a plain call gives for such text: control ids (the problem), and what the encoder gives: none."""
    text = spelled(tokenizer)
    assert len(controls_of(tokenizer, tokenizer(text, add_special_tokens=False)["input_ids"])) > 1
    assert controls_of(tokenizer, encode(tokenizer, text, add_special_tokens=False)) == []
    assert encode(tokenizer, Rendered(text)) == encode(tokenizer, text)


@pytest.mark.e2e
def test_the_trainer_gets_the_text_as_text(curated, tmp_path):
    """The whole path on the smoke run: the curated rows through training's tokenization and TRL's own
    preparation and collator (what make inspect shows)."""
    from datasets import Dataset, DatasetDict

    from core.model import base_tokenizer
    from core.patches import sft_collator, sft_training_rows
    from fine_tune.train import sft_config, tokenized_rows

    config = smoke_config(curated, "train.packing=false")
    tokenizer = base_tokenizer(config)
    text = spelled(tokenizer)
    chat = chat_format(tokenizer)
    settings = RowSettings(config.data.system_prompt, False, chat)
    rows = prepare_batch([Example("alpaca", "1", text, text)], settings).rows.to_pylist()
    dataset = tokenized_rows(DatasetDict({"train": Dataset.from_list(rows)}), tokenizer)
    args = sft_config(config, tmp_path)
    (example,) = list(sft_training_rows(dataset["train"], tokenizer, args))
    batch = sft_collator(tokenizer, args)([example])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    assert controls_of(tokenizer, ids) == [tokenizer.bos_token_id, tokenizer.eos_token_id]
    assert ids[-1] == tokenizer.eos_token_id and labels[-1] == tokenizer.eos_token_id


def special_token_sources(folder, text: str) -> list[str]:
    """A Stack Overflow dump (Kaggle's CSV schema) and an Alpaca file whose every field spells `text`, as
    --set overrides of the smoke profile's sources."""
    import csv
    import html
    import json

    folder.mkdir(parents=True, exist_ok=True)
    escaped = html.escape(text)  # the dump's HTML: `&lt;/s&gt;` in a code block decodes to `</s>`
    rows = {
        "Questions.csv": [["Id", "OwnerUserId", "CreationDate", "Score", "Title", "Body"]]
        + [[str(i), "1", "2008-08-02T15:11:16Z", "5", f"Title {i} {text}", f"<p>{escaped}</p>"]
           for i in range(1, 7)],
        "Answers.csv": [["Id", "OwnerUserId", "CreationDate", "ParentId", "Score", "Body"]]
        + [[str(100 + i), "1", "2008-08-02T16:00:00Z", str(i), "3", f"<pre><code>{escaped}</code></pre>"]
           for i in range(1, 7)],
        "Tags.csv": [["Id", "Tag"]] + [[str(i), "python"] for i in range(1, 7)],
    }  # fmt: skip
    for name, lines in rows.items():
        with open(folder / name, "w", newline="", encoding="utf-8") as file:
            csv.writer(file).writerows(lines)
    records = [{"instruction": f"Task {i}: {text}", "input": text, "output": text} for i in range(4)]
    (folder / "alpaca.json").write_text(json.dumps(records), encoding="utf-8")
    return [
        f"data.stackoverflow.questions={folder / 'Questions.csv'}",
        f"data.stackoverflow.answers={folder / 'Answers.csv'}",
        f"data.stackoverflow.tags={folder / 'Tags.csv'}", "data.stackoverflow.limit=null",
        f"data.alpaca.path={folder / 'alpaca.json'}", "data.alpaca.limit=null", "data.validation_size=2",
        "train.max_length=4096",
    ]  # fmt: skip


@pytest.mark.e2e
@pytest.mark.parametrize("base", [built("embedded"), built("llama2")])
def test_curated_files_that_spell_every_special_token_reach_the_trainer_as_text(request, tmp_path, base):
    """make data on CSV and Alpaca files full of special-token text, then the rows make inspect shows (the
    trainer's own preparation and collator): one BOS, one final EOS, and the text counted in stats.json."""
    import json

    from tests.conftest import run_stage

    if base == "embedded":
        (tmp_path / "base").symlink_to(request.getfixturevalue("smoke_base_dir").parent)
        extra: list[str] = []
        tokenizer = request.getfixturevalue("smoke_tokenizer")
    else:
        extra = [f"model.name_or_path={request.getfixturevalue('llama2_base_dir')}"]
        tokenizer = request.getfixturevalue("llama2_tokenizer")
    overrides = [*special_token_sources(tmp_path / "data", spelled(tokenizer)), *extra]
    sets = [part for override in overrides for part in ("--set", override)]
    run_stage("data_prep", tmp_path, *sets)
    stats = json.loads((tmp_path / "runs" / "smoke" / "dataset" / "stats.json").read_text())
    assert stats["special_token_text"] == stats["train_rows"] + stats["validation_rows"] == 10
    shown = run_stage("fine_tune.inspect_rows", tmp_path, *sets, "--format", "json", "--rows", "8")
    rows = [json.loads(line) for line in shown.stdout.splitlines()]
    assert len(rows) == 8
    for row in rows:
        ids, labels = row["input_ids"], row["labels"]
        assert controls_of(tokenizer, ids) == [tokenizer.bos_token_id, tokenizer.eos_token_id]
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == labels[-1] == tokenizer.eos_token_id
        assert spelled(tokenizer) in tokenizer.decode(ids, skip_special_tokens=True)
