"""Off the happy path of infer, chat and compare, on copies of the smoke run: each fault is one line naming
what is wrong, where, and what to do, exit status 1, and nothing written. Damaged model folders (weights
cut short or garbage, a config that is not JSON, a missing tokenizer, an adapter cut short), Hub ids that
are offline or invalid, prompts longer than the model's context, and compare without a fine-tuned model.
Also what a newcomer reads: the decoding settings, compare's progress and the note on tiny models."""

from __future__ import annotations

import json
import shutil
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path

import pytest

from core.errors import UserError
from core.model import embedded_base_dir
from core.prompts import render_prompt
from inference import __main__ as infer
from inference import compare
from inference.chat import ChatSession
from inference.loading import SMALL_MODEL_NOTE
from inference.models import resolve_model
from tests.conftest import REPO, run_stage, smoke_config
from tests.test_e2e import assert_one_error

pytestmark = pytest.mark.e2e

SAFETENSORS_DAMAGE = "a safetensors weights file is cut short or not safetensors"
CUT_SHORT = (
    f"{SAFETENSORS_DAMAGE} (Error while deserializing header: incomplete metadata, file not fully covered)"
)


@pytest.fixture
def run_copy(pipeline, tmp_path) -> Path:
    """A copy of the smoke run (dataset, adapter, merged model) and of its base, to damage; its root."""
    tmp, run = pipeline
    for name in ("dataset", "adapter", "merged"):
        shutil.copytree(run / name, tmp_path / "runs" / "smoke" / name)
    shutil.copytree(tmp / "base", tmp_path / "base")
    return tmp_path


def infer_args(model: str, prompt: str = "How do I reverse a list?", prompts_file: Path | None = None):
    return Namespace(model=model, prompt=prompt, prompts_file=prompts_file and str(prompts_file), system=None)


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 20)


def run_folder(root: Path, name: str) -> Path:
    return root / "runs" / "smoke" / name


def base_folder(root: Path) -> Path:
    return embedded_base_dir(smoke_config(root).model.embedded)


@pytest.mark.parametrize(
    ("folder", "file", "damage", "model", "message"),
    [
        ("merged", "model.safetensors", cut_short, "new_model",
         f"cannot load the model from {{folder}}: {CUT_SHORT}; run `make merge` again"),
        ("merged", "model.safetensors", garbage, "new_model",
         f"cannot load the model from {{folder}}: {SAFETENSORS_DAMAGE}"),
        ("merged", "config.json", garbage, "new_model",
         "cannot load the model config from {folder}: It looks like the config file at "
         "'{folder}/config.json' is not a valid JSON file.; run `make merge` again"),
        ("merged", "config.json", cut_short, "new_model",
         "cannot load the model config from {folder}: It looks like the config file"),
        ("merged", "tokenizer.json", Path.unlink, "new_model",
         "cannot load the tokenizer from {folder}: no tokenizer.json or tokenizer.model; run `make merge` "
         "again"),
        ("merged", "tokenizer.json", cut_short, "new_model",
         "cannot load the tokenizer from {folder}: a JSON file is cut short or not JSON"),
        ("adapter", "adapter_model.safetensors", cut_short, "new_model",
         f"cannot load the adapter from {{folder}}: {CUT_SHORT}; run `make train` again (it rewrites a "
         "damaged adapter from its checkpoint)"),
        ("adapter", "adapter_model.safetensors", Path.unlink, "new_model",
         "cannot load the adapter from {folder}: no adapter_model.safetensors or adapter_model.bin; run "
         "`make train` again"),
        ("adapter", "adapter_config.json", cut_short, "new_model",
         "cannot load the adapter config from {folder}: a JSON file is cut short or not JSON"),
        ("base", "model.safetensors", cut_short, "base",
         f"cannot load the model from {{folder}}: {CUT_SHORT}; delete {{folder}} and run `make base`"),
        ("copy", "model.safetensors", cut_short, "{folder}",
         f"cannot load the model from {{folder}}: {CUT_SHORT}; replace the damaged files in {{folder}}"),
    ],
)  # fmt: skip
def test_a_damaged_model_is_one_line_naming_the_folder_and_what_to_do(
    run_copy: Path, folder: str, file: str, damage: Callable[[Path], None], model: str, message: str
):
    if folder == "adapter":  # new_model is the adapter when there is no merged model
        shutil.rmtree(run_folder(run_copy, "merged"))
    if folder == "base":
        location = base_folder(run_copy)
    elif folder == "copy":  # a folder the user names, not one this run wrote
        location = shutil.copytree(run_folder(run_copy, "merged"), run_copy / "somewhere")
    else:
        location = run_folder(run_copy, folder)
    damage(location / file)
    with pytest.raises(UserError) as error:
        infer.main(smoke_config(run_copy), infer_args(model.format(folder=location)))
    assert str(error.value).startswith(message.format(folder=location))
    assert "\n" not in str(error.value)


def test_through_the_command_a_damaged_model_is_one_line_and_exit_1(run_copy):
    cut_short(run_folder(run_copy, "merged") / "model.safetensors")
    result = run_stage("inference", run_copy, "--model", "new_model", "--prompt", "hi", check=False)
    assert_one_error(
        result, f"cannot load the model from {run_folder(run_copy, 'merged')}: {SAFETENSORS_DAMAGE}"
    )
    assert result.stdout == ""


def test_chat_switching_to_a_damaged_model_keeps_the_one_it_has(run_copy, capsys):
    merged = run_folder(run_copy, "merged")
    cut_short(merged / "model.safetensors")
    session = ChatSession(smoke_config(run_copy), "base")
    with pytest.raises(UserError, match=f"^cannot load the model from {merged}: {SAFETENSORS_DAMAGE}"):
        session.command("/tuned")
    assert session.name == "base"
    session.reply("How do I reverse a list?")  # the base answers on
    assert len(session.history) == 1 and "base> " in capsys.readouterr().out


def test_a_hub_id_offline_names_hf_hub_offline_and_what_to_do(pipeline):
    tmp, _ = pipeline
    with pytest.raises(UserError) as error:  # the tests run with HF_HUB_OFFLINE=1 (conftest.py)
        resolve_model(smoke_config(tmp), "user/name")
    assert str(error.value) == (
        "cannot reach model user/name on the Hub: HF_HUB_OFFLINE is set (the Hub client is offline) and the "
        "local Hub cache does not hold it; unset HF_HUB_OFFLINE to download it, or pass a local model folder "
        "(MODEL=path/to/model)"
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "user/" + "a" * 500,
            "unknown model 'user/" + "a" * 395 + "... (505 characters)': use new_model, base",
        ),
        (
            "user--x/name",
            "unknown model 'user--x/name': not a local folder, nor a valid Hub id (a Hub repo id",
        ),
        ("user/name.git", "unknown model 'user/name.git': not a local folder, nor a valid Hub id"),
    ],
)
def test_a_model_name_that_is_no_folder_and_no_valid_hub_id_is_said_in_words(pipeline, name, message):
    tmp, _ = pipeline
    with pytest.raises(UserError) as error:
        resolve_model(smoke_config(tmp), name)
    assert str(error.value).startswith(message)


def too_long(where: str, tokens: int) -> str:
    """The smoke model's context is 512 tokens and it answers with up to 16."""
    return (
        f"{where}the prompt is {tokens:,} tokens, more than the 496 that fit: the model's context of 512 "
        "tokens (max_position_embeddings) minus inference.max_new_tokens 16; shorten it, or lower "
        "inference.max_new_tokens"
    )


def test_infer_refuses_a_prompt_longer_than_the_context(pipeline, smoke_tokenizer, tmp_path):
    tmp, _ = pipeline
    config = smoke_config(tmp)
    question = "word " * 600
    tokens = len(smoke_tokenizer(render_prompt(question.strip(), config.data.system_prompt))["input_ids"])
    with pytest.raises(UserError) as error:
        infer.main(config, infer_args("base", question))
    assert str(error.value) == too_long("", tokens)

    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"short\n\n{question}\nshort again\n")
    with pytest.raises(UserError) as error:
        infer.main(config, infer_args("base", "", prompts))
    assert str(error.value) == too_long(f"{prompts} line 3: ", tokens)


def test_the_longest_prompt_that_fits_is_answered_one_token_more_is_not(pipeline, smoke_tokenizer, capsys):
    tmp, _ = pipeline
    config = smoke_config(tmp)

    def tokens(words: int) -> int:
        return len(smoke_tokenizer(render_prompt("word " * words, config.data.system_prompt))["input_ids"])

    words = next(words for words in range(1, 1000) if tokens(words + 1) > 496)
    infer.main(config, infer_args("new_model", "word " * words))
    assert capsys.readouterr().out.strip()
    with pytest.raises(
        UserError, match=f"the prompt is {tokens(words + 1)} tokens, more than the 496 that fit"
    ):
        infer.main(config, infer_args("new_model", "word " * (words + 1)))


def test_compare_refuses_a_prompt_longer_than_the_context_before_any_work(run_copy, smoke_tokenizer):
    prompts = run_copy / "compare.jsonl"
    long_prompt = "word " * 600
    prompts.write_text(json.dumps({"prompt": "short"}) + "\n" + json.dumps({"prompt": long_prompt}) + "\n")
    config = smoke_config(run_copy, f"inference.compare_prompts={prompts}")
    tokens = len(smoke_tokenizer(render_prompt(long_prompt.strip(), config.data.system_prompt))["input_ids"])
    with pytest.raises(UserError) as error:
        compare.main(config, Namespace(model="new_model"))
    assert str(error.value) == too_long(f"{prompts} line 2: ", tokens)
    assert not run_folder(run_copy, "reports").exists()


def assert_compare_fails_before_any_work(root: Path, message: str) -> None:
    result = run_stage("inference.compare", root, check=False)
    assert_one_error(result, message)
    assert "base: loss" not in result.stderr  # the base was not evaluated first
    assert not run_folder(root, "reports").exists()


def test_compare_without_a_fine_tuned_model_fails_before_any_work(run_copy):
    shutil.rmtree(run_folder(run_copy, "merged"))
    shutil.rmtree(run_folder(run_copy, "adapter"))
    run = run_folder(run_copy, "")
    assert_compare_fails_before_any_work(run_copy, f"no fine-tuned model in {run}: run `make train`")


def test_compare_with_a_damaged_fine_tuned_model_fails_before_the_base_is_evaluated(run_copy):
    shutil.rmtree(run_folder(run_copy, "merged"))
    adapter = run_folder(run_copy, "adapter")
    cut_short(adapter / "adapter_model.safetensors")
    assert_compare_fails_before_any_work(
        run_copy, f"cannot load the adapter from {adapter}: {SAFETENSORS_DAMAGE}"
    )


def test_what_a_newcomer_reads_decoding_progress_and_the_tiny_model_note(run_copy):
    infer_result = run_stage("inference", run_copy, "--model", "base", "--prompt", "How do I reverse a list?")
    assert infer_result.stderr.count(SMALL_MODEL_NOTE) == 1
    assert (
        "tokens/s; greedy (do_sample false), repetition_penalty 1.0, max_new_tokens 16)"
        in infer_result.stderr
    )

    result = run_stage("inference.compare", run_copy, "--set", "inference.batch_size=4")
    assert result.stderr.count(SMALL_MODEL_NOTE) == 1  # once, though two models were loaded
    hand_written = sum(1 for line in (REPO / "data" / "compare_prompts.jsonl").open() if line.strip())
    total = 4 + hand_written
    for label in ("base", "fine-tuned"):
        answered = [f"{label}: {done} of {total} prompts answered" for done in range(4, total, 4)]
        assert all(
            line in result.stderr for line in [*answered, f"{label}: {total} of {total} prompts answered"]
        )
    report = json.loads((run_folder(run_copy, "reports") / "compare.json").read_text())
    assert report["decoding"] == {"max_new_tokens": 16, "do_sample": False, "repetition_penalty": 1.0}
    markdown = (run_folder(run_copy, "reports") / "compare.md").read_text()
    assert "(decoding: greedy (do_sample false), repetition_penalty 1.0, max_new_tokens 16)" in markdown
