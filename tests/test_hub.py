"""Push to and download from a local Hub server (tests/hub_server.py) with the real client, over real HTTP.

The client side runs in subprocesses with HF_ENDPOINT pointing at the server (the client reads it at
import): round trips of the adapter, its base, the merged model and the dataset; `make infer` and
`make compare` with Hub ids, and offline from the Hub cache; retries of transient failures; one-line
errors for 401, 403 and 404, for a Xet upload that fails and an LFS upload refused for Xet, and for
damaged folders, invalid repo ids and offline mode before any request; and no file or log holds the
token. The tests share one server and run in file order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.prompts import render_prompt
from tests.conftest import REPO, run_stage, smoke_config
from tests.hub_client import check_logits
from tests.hub_server import XET_REQUIRED, Blob, HubServer, Repo
from tests.test_e2e import assert_one_error

pytestmark = pytest.mark.e2e

TOKEN = "hf_localHubTestToken_7c1d9e2f_never_written"
ADAPTER, MERGED, BASE, DATASET = "user/smoke", "user/smoke-merged", "user/smoke-base", "user/smoke-data"
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}


@pytest.fixture(scope="module")
def hub():
    with HubServer(TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def outputs() -> list[str]:
    """Everything the client-side subprocesses printed, for the token scan."""
    return []


def client_env(hub: HubServer, home: Path, token: str = TOKEN) -> dict[str, str]:
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(home),
        "HF_TOKEN": token,
        "NO_PROXY": "127.0.0.1,localhost",
    }


def against(hub: HubServer, outputs: list[str], tmp: Path, module: str, *extra: str, **kwargs):
    """A stage run with the client pointed at the local server, with a fresh cache; `env` adds to or
    replaces the client's variables."""
    env = client_env(hub, tmp / "hf-homes" / str(len(outputs)), kwargs.pop("token", TOKEN))
    env.update(kwargs.pop("env", {}))
    result = run_stage(module, tmp, *extra, env=env, **kwargs)
    outputs.append(result.stdout + result.stderr)
    return result


@pytest.fixture(scope="module")
def pushed(pipeline, hub, outputs) -> dict[tuple[str, str], str]:
    """Adapter, base, merged model and dataset pushed once; the head commit of each repo."""
    tmp, _ = pipeline
    against(hub, outputs, tmp, "fine_tune.push", "--set", f"hub.model_repo={ADAPTER}",
            "--set", "hub.push_merged=true", "--set", f"hub.dataset_repo={DATASET}")  # fmt: skip
    against(hub, outputs, tmp, "data_prep.push", "--set", f"hub.dataset_repo={DATASET}")
    return {key: repo.branches["main"] for key, repo in hub.state.repos.items()}


def download(hub: HubServer, outputs: list[str], tmp: Path, adapter: str, merged: str, dataset: str) -> Path:
    """snapshot_download, PeftModel.from_pretrained and load_dataset from the server (tests/hub_client.py)."""
    out = tmp / "downloaded"
    env = {**os.environ, **client_env(hub, tmp / "hf-homes" / "downloads")}
    command = [sys.executable, "-m", "tests.hub_client", str(out), adapter, merged, dataset]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    outputs.append(result.stdout + result.stderr)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def downloaded(pipeline, hub, pushed, outputs) -> Path:
    return download(hub, outputs, pipeline[0], ADAPTER, MERGED, DATASET)


def test_each_repo_holds_exactly_the_files_a_hub_user_needs(hub, pushed):
    expected = {
        ("model", ADAPTER): {"adapter_config.json", "adapter_model.safetensors", *TOKENIZER_FILES},
        ("model", BASE): {"config.json", "generation_config.json", "model.safetensors", *TOKENIZER_FILES},
        ("model", MERGED): {"config.json", "generation_config.json", "model.safetensors", *TOKENIZER_FILES},
    }
    for (kind, repo_id), files in expected.items():
        assert set(hub.state.files(kind, repo_id)) == files | {"README.md"}
    assert set(hub.state.files("dataset", DATASET)) == {
        "README.md",
        "data/train-00000-of-00001.parquet",
        "data/validation-00000-of-00001.parquet",
    }
    assert all(repo.private for repo in hub.state.repos.values())
    messages = [message for repo in hub.state.repos.values() for message in repo.messages[1:]]
    assert messages and all("run smoke" in message for message in messages)


def test_downloads_give_the_local_bytes_and_a_loadable_base(pipeline, downloaded):
    tmp, run = pipeline
    (built_base,) = (tmp / "base").iterdir()
    for repo, local in ((ADAPTER, run / "adapter"), (MERGED, run / "merged"), (BASE, built_base)):
        snapshot = downloaded / "snapshots" / repo
        for path in snapshot.iterdir():
            if path.is_file() and path.name not in ("README.md", "adapter_config.json"):
                assert path.read_bytes() == (local / path.name).read_bytes(), (repo, path.name)
    pushed_config = json.loads((downloaded / "snapshots" / ADAPTER / "adapter_config.json").read_text())
    local_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert pushed_config.pop("base_model_name_or_path") == BASE  # a Hub id, not this machine's path
    assert pushed_config.pop("revision") is None
    assert pushed_config == {
        k: v for k, v in local_config.items() if k not in ("base_model_name_or_path", "revision")
    }


def assert_local_outputs(downloaded: Path, base: Path, run: Path, base_repo: str) -> None:
    """The downloaded adapter on the base it names (`base_repo`), and the downloaded merged model, give the
    logits of the local adapter on the local `base` and of the local merged model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    remote = torch.load(downloaded / "logits.pt")
    assert remote["base_repo"] == base_repo
    tokenizer = AutoTokenizer.from_pretrained(run / "adapter")
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run / "adapter")
    torch.testing.assert_close(remote["adapter"], check_logits(adapted, tokenizer), rtol=0, atol=1e-6)
    merged = AutoModelForCausalLM.from_pretrained(run / "merged")
    torch.testing.assert_close(remote["merged"], check_logits(merged, tokenizer), rtol=0, atol=1e-6)


def test_models_from_the_hub_give_the_local_outputs(pipeline, downloaded):
    tmp, run = pipeline
    (built_base,) = (tmp / "base").iterdir()
    assert_local_outputs(downloaded, built_base, run, BASE)


def test_dataset_from_the_hub_gives_the_local_rows_and_card(pipeline, hub, downloaded):
    from datasets import load_from_disk
    from huggingface_hub import DatasetCard

    _, run = pipeline
    local = load_from_disk(str(run / "dataset" / "data"))
    remote = json.loads((downloaded / "rows.json").read_text())
    assert remote == {split: local[split].to_list() for split in ("train", "validation")}
    card = DatasetCard(hub.state.files("dataset", DATASET)["README.md"].decode())
    local_card = DatasetCard((run / "dataset" / "README.md").read_text())
    assert card.text == local_card.text  # our card's body, kept
    assert card.data.license == "cc-by-sa-3.0"
    assert {split["name"] for split in card.data.dataset_info["splits"]} == {"train", "validation"}
    assert card.data.configs[0]["config_name"] == "default"


def test_model_card_has_metadata_hyperparameters_results_prompt_and_snippet(hub, pushed):
    from huggingface_hub import ModelCard

    card = ModelCard(hub.state.files("model", ADAPTER)["README.md"].decode())
    assert card.data.base_model == BASE
    assert card.data.library_name == "peft"
    assert card.data.pipeline_tag == "text-generation"
    assert {"trl", "sft", "qlora"} <= set(card.data.tags)
    assert card.data.datasets == [DATASET]
    sections = ["## Prompt format", "[INST] <<SYS>>", "## Training hyperparameters", "paged_adamw_32bit"]
    sections += ["## Evaluation", "eval_loss", 'AutoPeftModelForCausalLM.from_pretrained("user/smoke")']
    for expected in sections:
        assert expected in card.text, expected
    merged_card = ModelCard(hub.state.files("model", MERGED)["README.md"].decode())
    assert merged_card.data.library_name == "transformers" and merged_card.data.base_model == BASE
    assert "Merge self-check passed" in merged_card.text


def test_pushing_again_commits_nothing(pipeline, hub, pushed, outputs):
    tmp, _ = pipeline
    against(hub, outputs, tmp, "fine_tune.push", "--set", f"hub.model_repo={ADAPTER}",
            "--set", "hub.push_merged=true", "--set", f"hub.dataset_repo={DATASET}")  # fmt: skip
    against(hub, outputs, tmp, "data_prep.push", "--set", f"hub.dataset_repo={DATASET}")
    assert {key: repo.branches["main"] for key, repo in hub.state.repos.items()} == pushed


def test_infer_answers_with_an_adapter_or_merged_model_from_the_hub(pipeline, hub, pushed, outputs):
    from inference.generate import generate
    from inference.loading import load_model
    from inference.models import resolve_model

    tmp, run = pipeline
    config = smoke_config(tmp)
    question = "How do I reverse a list in Python?"
    for repo, local in ((ADAPTER, run / "adapter"), (MERGED, run / "merged")):
        remote = against(hub, outputs, tmp, "inference", "--model", repo, "--prompt", question)
        model, tokenizer = load_model(resolve_model(config, str(local)), config)
        prompt = render_prompt(question, config.data.system_prompt)
        (expected,) = generate(model, tokenizer, [prompt], config.inference)
        assert remote.stdout.strip() == expected.text, repo
    missing = against(
        hub, outputs, tmp, "inference", "--model", "user/none", "--prompt", question, check=False
    )
    assert missing.returncode == 1 and "error: model user/none not found on the Hub" in missing.stderr


def test_compare_takes_a_model_from_the_hub(pipeline, hub, pushed, outputs, tmp_path):
    tmp, run = pipeline
    # Its own output folder, so that the run's reports (and so its cards) stay as pushed.
    shutil.copytree(run / "dataset", tmp_path / "smoke" / "dataset")
    against(hub, outputs, tmp, "inference.compare", "--model", ADAPTER, "--set", f"run.output_dir={tmp_path}")
    report = json.loads((tmp_path / "smoke" / "reports" / "compare.json").read_text())
    assert report["model"] == ADAPTER and set(report["summary"]) == {"base", "fine-tuned"}


def test_an_adapter_on_a_hub_base_names_it_states_its_license_and_goes_to_the_revision(
    pipeline, hub, outputs
):
    from huggingface_hub import ModelCard

    tmp, _ = pipeline
    with hub.state.lock:  # a base already on the Hub, whose card states a license
        base = Repo("model", "meta/llama-like", private=False)
        hub.state.repos[("model", base.repo_id)] = base
        card = Blob(b"---\nlicense: llama2\n---\n# A base\n", lfs=False)
        hub.state.commit(base, "main", {"README.md": card}, "initial commit")
    against(hub, outputs, tmp, "fine_tune.push", "--set", "model.name_or_path=meta/llama-like",
            "--set", "hub.model_repo=user/on-hub-base", "--set", "hub.revision=dev")  # fmt: skip
    assert ("model", "user/on-hub-base-base") not in hub.state.repos  # nothing but the adapter pushed
    assert set(hub.state.files("model", "user/on-hub-base")) == set()  # main stays as created
    files = hub.state.files("model", "user/on-hub-base", revision="dev")
    config = json.loads(files["adapter_config.json"])
    assert config["base_model_name_or_path"] == "meta/llama-like" and config["revision"] is None
    card = ModelCard(files["README.md"].decode())
    assert card.data.base_model == "meta/llama-like" and card.data.license == "llama2"


def test_transient_failures_are_retried(pipeline, hub, outputs):
    tmp, _ = pipeline
    hub.state.inject("POST", r"^/api/models/user/flaky/commit/", 500, times=2)  # our retry of the push
    hub.state.inject("POST", r"^/api/models/user/flaky/preupload/", None, times=1)  # a reset: the client's
    result = against(hub, outputs, tmp, "fine_tune.push", "--set", "hub.model_repo=user/flaky")
    commits = [
        status for method, path, status in hub.state.requests if path == "/api/models/user/flaky/commit/main"
    ]
    assert commits == [500, 500, 200]
    assert "retrying" in result.stderr
    assert "adapter_model.safetensors" in hub.state.files("model", "user/flaky")


@pytest.mark.parametrize(
    ("module", "repo", "token", "message"),
    [
        ("fine_tune.push", "user/refused", "hf_not_the_servers_token", "the Hub refused the token"),
        ("data_prep.push", "someone/else", TOKEN, "the token may not write to someone/else (403)"),
        # The embedded base is pushed first, to <repo>-base.
        ("fine_tune.push", "user/missing", TOKEN, "user/missing-base not found while pushing the base (404)"),
    ],
)
def test_auth_and_missing_repo_errors_are_one_line(pipeline, hub, outputs, module, repo, token, message):
    tmp, _ = pipeline
    if repo == "user/missing":
        hub.state.inject("POST", r"^/api/repos/create$", 404, times=1)
    field = "hub.dataset_repo" if module == "data_prep.push" else "hub.model_repo"
    result = against(hub, outputs, tmp, module, "--set", f"{field}={repo}", token=token, check=False)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_infer_offline_answers_from_the_hub_cache(pipeline, hub, pushed, outputs):
    tmp, _ = pipeline
    home = {"HF_HOME": str(tmp / "hf-homes" / "offline")}
    question = ["--model", ADAPTER, "--prompt", "How do I reverse a list in Python?"]
    online = against(hub, outputs, tmp, "inference", *question, env=home)  # fills the cache
    requests = len(hub.state.requests)
    offline = against(hub, outputs, tmp, "inference", *question, env={**home, "HF_HUB_OFFLINE": "1"})
    assert offline.stdout == online.stdout and offline.stdout.strip()
    assert len(hub.state.requests) == requests  # nothing asked of the Hub


def test_xet_refusals_are_one_line_with_the_way_around_and_the_way_around_works(pipeline, hub, outputs):
    """huggingface_hub uploads with Xet whenever hf_xet is installed and HF_HUB_DISABLE_XET is unset; this
    server has no Xet storage (its Xet token route answers 404, as a Hub without Xet does), and with
    `xet_required` it refuses LFS uploads as a Hub that stores files with Xet only."""
    tmp, _ = pipeline
    push = ("fine_tune.push", "--set", "hub.model_repo=user/xet")
    lfs, xet = {"HF_HUB_DISABLE_XET": "1"}, {"HF_HUB_DISABLE_XET": "0"}
    hub.state.xet_required = True
    try:
        refused = against(hub, outputs, tmp, *push, env=lfs, check=False)
        for part in (
            "error: the Hub refused the LFS upload of the base to user/xet-base and asks for Xet storage "
            "(ValueError: LFS batch API returned errors: Encountered error for file with OID ",
            f"`{XET_REQUIRED}): unset HF_HUB_DISABLE_XET (and `pip install hf_xet` if it is missing) so that "
            "the client uploads with Xet",
        ):
            assert_one_error(refused, part)
        requests = len(hub.state.requests)
        with_xet = against(hub, outputs, tmp, *push, env=xet, check=False)  # the way around: Xet is asked
        paths = [path for _, path, _ in hub.state.requests[requests:]]
        assert "/api/models/user/xet-base/xet-write-token/main" in paths
        assert not [path for path in paths if path.endswith("/info/lfs/objects/batch")]
    finally:
        hub.state.xet_required = False
    for part in (
        "error: the Xet storage upload of the base to user/xet-base failed (ConnectionError: Network error: "
        "Request error: HTTP status client error (404 Not Found), domain: ",
        "/api/models/user/xet-base/xet-write-token/main): push again with HF_HUB_DISABLE_XET=1 in the "
        "environment to upload through LFS instead",
    ):
        assert_one_error(with_xet, part)
    against(hub, outputs, tmp, *push, env=lfs)  # the way around that: LFS, which this Hub takes
    assert "adapter_model.safetensors" in hub.state.files("model", "user/xet")


@pytest.mark.parametrize(
    ("case", "extra", "env", "message"),
    [
        ("offline", [], {"HF_HUB_OFFLINE": "1"},
         "push needs the Hub client online (HF_HUB_OFFLINE is set: unset it)"),
        ("long id", ["--set", "hub.model_repo=user/" + "m" * 93], {},
         "hub.model_repo + '-base' (the embedded base's repo): 'user/" + "m" * 55 + "... (103 characters)' "
         "is not a valid repo id: a Hub repo id, namespace/name:"),
        ("long id", ["--set", "hub.model_repo=user/" + "m" * 90, "--set", "hub.push_merged=true"], {},
         "hub.model_repo + '-merged' (the merged model's repo): 'user/"),
        ("damaged adapter", [], {},
         "cannot push the adapter: in {adapter}, adapter_model.safetensors is damaged (Error while "
         "deserializing header: incomplete metadata, file not fully covered); run `make train` again"),
        ("no tokenizer", [], {},
         "cannot push the adapter: in {adapter}, no tokenizer file (tokenizer.json or tokenizer.model); run "
         "`make train` again"),
    ],
)  # fmt: skip
def test_what_cannot_be_pushed_stops_in_one_line_before_any_request(
    pipeline, hub, outputs, tmp_path, case, extra, env, message
):
    tmp, run = pipeline
    adapter = tmp_path / "runs" / "smoke" / "adapter"  # a copy, to damage
    shutil.copytree(run / "adapter", adapter)
    shutil.copytree(run / "merged", adapter.parent / "merged")
    if case == "damaged adapter":
        weights = adapter / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    if case == "no tokenizer":
        (adapter / "tokenizer.json").unlink()
    requests = len(hub.state.requests)
    result = against(
        hub, outputs, tmp, "fine_tune.push", "--set", "hub.model_repo=user/never",
        "--set", f"run.output_dir={tmp_path / 'runs'}", *extra, env=env, check=False,
    )  # fmt: skip
    assert_one_error(result, "error: " + message.format(adapter=adapter))
    assert len(hub.state.requests) == requests


def test_the_token_is_in_no_file_pushed_or_written_and_no_log(
    hub, pushed, downloaded, outputs, tmp_path_factory
):
    secret = TOKEN.encode()
    assert not [data for data in hub.state.stored_bytes() if secret in data]
    assert not [text for text in outputs if TOKEN in text]
    written = [path for path in tmp_path_factory.getbasetemp().rglob("*") if path.is_file()]
    assert written and not [path for path in written if secret in path.read_bytes()]
