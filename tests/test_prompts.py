"""The Llama-2 format, and what the real tokenizer and TRL pipeline make of it: BOS, EOS, loss mask."""

import pytest

from core.prompts import render_completion, render_prompt

SYSTEM = "Be brief."
EXAMPLES = [
    ("How do I reverse a list?", "Use slicing:\n\n```\nitems[::-1]\n```"),
    ("What does `yield` do? café", "It makes the function a generator."),
    ("Sort a dict by value", "`sorted(d.items(), key=lambda kv: kv[1])`"),
]


def test_prompt_with_system_prompt_is_exactly_llama2():
    assert (
        render_prompt("How do I reverse a list?", SYSTEM)
        == "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHow do I reverse a list? [/INST]"
    )


def test_prompt_without_system_prompt():
    assert render_prompt("  Hi  ", None) == "[INST] Hi [/INST]"
    assert render_prompt("Hi", "   ") == "[INST] Hi [/INST]"


def test_completion_follows_the_prompt_after_one_space():
    assert render_completion("  answer\n") == " answer"


def test_history_closes_each_turn_with_eos_and_opens_the_next_with_bos():
    text = render_prompt("second?", SYSTEM, history=[("first?", "one")])
    assert text == "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nfirst? [/INST] one</s><s>[INST] second? [/INST]"


def test_chat_template_renders_what_render_prompt_renders(smoke_tokenizer):
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "first?"},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "second?"},
    ]
    rendered = smoke_tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == "<s>" + render_prompt("second?", SYSTEM, history=[("first?", "one")])


def test_tokenizer_adds_exactly_one_bos_and_no_eos(smoke_tokenizer):
    ids = smoke_tokenizer(render_prompt("How?", SYSTEM))["input_ids"]
    assert ids[0] == smoke_tokenizer.bos_token_id
    assert ids.count(smoke_tokenizer.bos_token_id) == 1
    assert smoke_tokenizer.eos_token_id not in ids


def test_training_pad_token_is_never_eos(smoke_tokenizer):
    assert smoke_tokenizer.pad_token_id is not None
    assert smoke_tokenizer.pad_token_id != smoke_tokenizer.eos_token_id
    assert smoke_tokenizer.pad_token == smoke_tokenizer.unk_token


def test_byte_fallback_round_trips_any_text(smoke_tokenizer):
    text = "naïve café 咖啡 £5 🙂\n    indented\n\n\ttab"
    ids = smoke_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert smoke_tokenizer.unk_token_id not in ids
    assert smoke_tokenizer.decode(ids) == text


@pytest.fixture(scope="module")
def prepared(smoke_base_dir, smoke_tokenizer, tmp_path_factory):
    """The real SFTTrainer over a few rendered examples: its prepared dataset and a collated batch."""
    from datasets import Dataset
    from trl import SFTTrainer

    from fine_tune.train import load_quantized_model, sft_config
    from tests.conftest import smoke_config

    tmp = tmp_path_factory.mktemp("prepared")
    config = smoke_config(tmp)
    rows = [{"prompt": render_prompt(q, SYSTEM), "completion": render_completion(a)} for q, a in EXAMPLES]
    trainer = SFTTrainer(
        model=load_quantized_model(config, str(smoke_base_dir)),
        args=sft_config(config, tmp / "checkpoints"),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows),
        processing_class=smoke_tokenizer,
    )
    examples = list(trainer.train_dataset)
    batch = trainer.data_collator(examples)
    return rows, examples, batch


def test_the_last_label_of_every_example_is_eos(prepared, smoke_tokenizer):
    _, examples, batch = prepared
    for example in examples:
        assert example["labels"][-1] == smoke_tokenizer.eos_token_id
    for labels in batch["labels"].tolist():
        real = [label for label in labels if label != -100]
        assert real[-1] == smoke_tokenizer.eos_token_id


def test_every_training_sequence_has_one_bos(prepared, smoke_tokenizer):
    _, examples, _ = prepared
    for example in examples:
        assert example["input_ids"][0] == smoke_tokenizer.bos_token_id
        assert example["input_ids"].count(smoke_tokenizer.bos_token_id) == 1


def test_loss_mask_covers_exactly_the_completion_and_eos(prepared, smoke_tokenizer):
    rows, examples, batch = prepared
    for row, example in zip(rows, examples, strict=True):
        prompt_length = len(smoke_tokenizer(row["prompt"])["input_ids"])
        labels = example["labels"]
        assert all(label == -100 for label in labels[:prompt_length])
        assert labels[prompt_length:] == example["input_ids"][prompt_length:]
        supervised = smoke_tokenizer.decode(example["input_ids"][prompt_length:])
        assert supervised == row["completion"].strip() + smoke_tokenizer.eos_token
    # padding is masked in the batch, and only padding: every real token keeps its label or mask
    for row_ids, row_labels, row_mask in zip(
        batch["input_ids"].tolist(), batch["labels"].tolist(), batch["attention_mask"].tolist(), strict=True
    ):
        for token, label, mask in zip(row_ids, row_labels, row_mask, strict=True):
            if mask == 0:
                assert label == -100 and token == smoke_tokenizer.pad_token_id
