"""Llama-3 with its own chat format, offline (`data.prompt_format: chat_template`): Meta's Llama-3 tokenizer
(tests/fixtures/llama3-tokenizer) on a random tiny Llama-3-shaped base, through curation, QLoRA training,
the merge and infer, as a user runs them with model.name_or_path=<folder>.

The traps checked: the template writes `<|begin_of_text|>` and the tokenizer adds one too (a double BOS);
the answer must end with `<|eot_id|>`, the label that teaches the model to stop, and generation must stop
on it; Llama-3 has neither a pad nor an unk token, and padding with EOS would mask that label away.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core.prompts import curated_row
from synthetic.llama import write_random_llama
from tests.conftest import LLAMA3_TOKENIZER, base_stage, curated_rows, sft_examples

pytestmark = pytest.mark.e2e

BOS, EOT, END_OF_TEXT = 128000, 128009, 128001
CHAT_TEMPLATE = ("--set", "data.prompt_format=chat_template")
# Llama-3-8B's configuration shrunk to a model the tests train in seconds (grouped-query attention kept).
LLAMA3_SMALL = {
    "vocab_size": 128256, "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 8192,
    "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "bos_token_id": BOS, "eos_token_id": END_OF_TEXT,
}  # fmt: skip


@pytest.fixture(scope="module")
def llama3_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny LlamaForCausalLM shaped like Llama-3-8B-Instruct, in bfloat16 as Meta publishes it, with
    Meta's tokenizer files (EOS `<|eot_id|>`, no pad, no unk): a user's local base folder."""
    import torch
    from transformers import GenerationConfig, LlamaConfig

    folder = tmp_path_factory.mktemp("llama3-base") / "tiny-llama-3"
    generation = GenerationConfig(bos_token_id=BOS, eos_token_id=[END_OF_TEXT, EOT])
    write_random_llama(
        folder, LlamaConfig(**LLAMA3_SMALL), torch.bfloat16, tokenizer=LLAMA3_TOKENIZER, generation=generation
    )
    return folder


def llama3_stage(module: str, tmp: Path, base: Path, *extra: str):
    return base_stage(module, tmp, base, *CHAT_TEMPLATE, *extra)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, llama3_base_dir: Path) -> Path:
    """The smoke data curated, trained on and merged in Llama-3's format: the run folder."""
    tmp = tmp_path_factory.mktemp("llama3-run")
    for module in ("data_prep", "fine_tune.train", "fine_tune.merge"):
        llama3_stage(module, tmp, llama3_base_dir)
    return tmp / "runs" / "smoke"


@pytest.fixture(scope="module")
def tokenizer():
    from core.model import load_tokenizer

    return load_tokenizer(str(LLAMA3_TOKENIZER), prompt_format="chat_template")


def test_the_tokenizer_ends_answers_with_eot_and_pads_with_a_reserved_token(tokenizer):
    from core.model import chat_format

    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|eot_id|>", EOT)
    assert tokenizer.pad_token.startswith("<|reserved_special_token") and tokenizer.pad_token_id not in (
        BOS,
        EOT,
    )
    chat = chat_format(tokenizer)
    conversation = [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "How?"}]
    # the saved template renders what training sees, BOS aside: the tokenizer adds it when it encodes
    rendered = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert rendered == "<|begin_of_text|>" + chat.prompt("How?", "Be exact.")
    ids = tokenizer(chat.prompt("How?", "Be exact.") + chat.completion("Use it.") + tokenizer.eos_token)[
        "input_ids"
    ]
    assert ids[0] == BOS and ids.count(BOS) == 1 and ids[-1] == EOT and ids.count(EOT) == 3


def test_a_base_without_a_chat_template_is_one_line(tmp_path):
    from core.errors import UserError
    from core.model import load_tokenizer

    shutil.copy(LLAMA3_TOKENIZER / "tokenizer.json", tmp_path)
    settings = json.loads((LLAMA3_TOKENIZER / "tokenizer_config.json").read_text())
    settings.pop("chat_template")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
    with pytest.raises(
        UserError, match="data.prompt_format is chat_template, but the tokenizer of .* has none"
    ):
        load_tokenizer(str(tmp_path), prompt_format="chat_template")


def test_training_sees_one_bos_the_prompt_masked_and_eot_as_the_last_label(
    run, llama3_base_dir, tokenizer, tmp_path
):
    rows = [
        {key: row[key] for key in ("prompt", "completion", "controls")}
        for row in curated_rows(run.parent.parent)
    ]
    assert rows and all(row["prompt"].startswith("<|start_header_id|>system") for row in rows)
    assert not any("<|eot_id|>" in row["completion"] or "<|begin_of_text|>" in row["prompt"] for row in rows)
    examples, batch = sft_examples(llama3_base_dir, tokenizer, rows, tmp_path)
    for row, example in zip(rows, examples, strict=True):
        ids, labels = example["input_ids"], example["labels"]
        assert ids[0] == BOS and ids.count(BOS) == 1
        prompt_ids = tokenizer(row["prompt"])["input_ids"]
        assert ids[: len(prompt_ids)] == prompt_ids and set(labels[: len(prompt_ids)]) == {-100}
        assert labels[len(prompt_ids) :] == ids[len(prompt_ids) :] and labels[-1] == EOT
        assert tokenizer.decode(ids[len(prompt_ids) :]) == row["completion"] + "<|eot_id|>"
    for row_labels, mask in zip(batch["labels"].tolist(), batch["attention_mask"].tolist(), strict=True):
        assert all(label == -100 for label, real in zip(row_labels, mask, strict=True) if not real)
        assert EOT in row_labels  # padding never hides the stop label


def test_the_merged_model_stops_on_eot_and_infer_sends_what_training_saw(run, llama3_base_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.model import chat_format
    from inference.generate import generate_ids
    from inference.loading import load_model
    from inference.models import resolve_model
    from tests.conftest import smoke_config

    assert json.loads((run / "reports" / "merge_check.json").read_text())["passed"]
    merged = AutoModelForCausalLM.from_pretrained(run / "merged")
    assert merged.generation_config.eos_token_id == EOT
    for folder in ("adapter", "merged"):
        saved = AutoTokenizer.from_pretrained(run / folder)
        assert (saved.eos_token_id, saved.bos_token_id) == (EOT, BOS) and saved.pad_token_id not in (BOS, EOT)
    config = smoke_config(run.parent.parent, f"model.name_or_path={llama3_base_dir}", *CHAT_TEMPLATE[1::2])
    rows = curated_rows(run.parent.parent)[:4]
    one_token = config.inference.model_copy(update={"max_new_tokens": 1})
    for name in ("new_model", "base"):
        model, loaded = load_model(resolve_model(config, name), config)
        assert chat_format(loaded).end_of_answer == "<|eot_id|>" and loaded.eos_token_id == EOT
        prompts = [curated_row(row["prompt"], row["completion"], row["controls"])[0] for row in rows]
        assert all(prompt.controls for prompt in prompts)  # the template's headers, kept as controls
        sent = [ids for ids, _ in generate_ids(model, loaded, prompts, one_token)]
        assert sent == [loaded(row["prompt"])["input_ids"] for row in rows], name
    answered = llama3_stage(
        "inference", run.parent.parent, llama3_base_dir, "--prompt", "How do I sort a dict?"
    )
    assert answered.stdout.strip() and "<|start_header_id|>" not in answered.stdout


def test_the_run_exports_to_gguf_with_its_template_and_llama_cpp_agrees(run, llama3_base_dir):
    """llama.cpp reads Meta's Llama-3 tokenizer as its llama-bpe vocabulary: the same ids, the same
    template (its stop `<|eot_id|>`), and an Ollama Modelfile in Llama-3's format."""
    pytest.importorskip("llama_cpp", reason="make test installs requirements-export.txt")
    llama3_stage("export", run.parent.parent, llama3_base_dir)
    report = json.loads((run / "reports" / "export_check.json").read_text())
    assert report["passed"] and report["tokenizer"]["identical"] == report["tokenizer"]["texts"]
    assert report["tokenizer"]["special_token_ids"] == {"bos": [BOS, BOS], "eos": [EOT, EOT]}
    assert report["chat_template"]["identical"] == 4 and report["chat_template"]["stop"] == ["<|eot_id|>"]
    modelfile = (run / "gguf" / "Modelfile").read_text()
    assert (
        "<|start_header_id|>assistant<|end_header_id|>" in modelfile
        and 'PARAMETER stop "<|eot_id|>"' in modelfile
    )


def test_make_serve_feeds_what_the_template_renders_and_stops_on_eot(run, llama3_base_dir, tokenizer):
    """`make serve` on the Llama-3 run (it exports first if it must): a system prompt and a closed turn
    reach llama.cpp as the ids of Meta's template (one `<|begin_of_text|>`), and `<|eot_id|>` ends the
    answer. What `vllm serve` reads from the merged folder gives the same ids and stops on the same token."""
    pytest.importorskip("llama_cpp", reason="make test installs requirements-export.txt")
    from transformers import AutoTokenizer, GenerationConfig

    from tests.conftest import Server
    from tests.test_serve import client, last_request, serve_command

    tmp = run.parent.parent
    settings = f"model.name_or_path={llama3_base_dir} data.prompt_format=chat_template"
    server = Server(serve_command(tmp, settings=settings))
    messages = [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort a list?"},
        {"role": "assistant", "content": "sorted(xs)"}, {"role": "user", "content": "And a dict?"},
    ]  # fmt: skip
    try:
        client(server).chat.completions.create(model="new_model", messages=messages, max_tokens=2)
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
        template_ids = list(rendered["input_ids"])
        assert last_request(tmp)["prompt_ids"] == template_ids and template_ids.count(BOS) == 1
        stopped = client(server).chat.completions.create(
            model="new_model", messages=messages, logit_bias={str(EOT): 100}
        )
        assert stopped.choices[0].finish_reason == "stop" and stopped.choices[0].message.content == ""
    finally:
        assert server.stop() in (130, 2, -2)
    as_vllm_loads = AutoTokenizer.from_pretrained(run / "merged")
    text = as_vllm_loads.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert as_vllm_loads(text, add_special_tokens=False)["input_ids"] == template_ids
    assert EOT in [GenerationConfig.from_pretrained(run / "merged").eos_token_id, as_vllm_loads.eos_token_id]
