"""Shared fixtures. Every test runs offline: the Hub is never reached, except the local Hub server of
tests/test_hub.py, which its subprocesses reach through HF_ENDPOINT."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist each worker's stages get their share of the cores. Two stages of two torch threads each
# on two cores wait for each other's spinning threads: two smoke base builds at once took 19 s, against 13 s
# with one thread each (docs/testing.md).
if (workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // workers)))

import signal

# The Ctrl-C tests send SIGINT to the stages they start. A shell that starts `make test` in the background
# without job control makes every child ignore it; a handler of this process's own is reset to the default
# in each child it starts (an ignored signal stays ignored), so the stages get Ctrl-C as in a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from xdist.scheduler import LoadScopeScheduling

from core.config import Config, load_config
from synthetic import REPO
from synthetic.llama import LLAMA2_SMALL, LLAMA2_TOKENIZER, write_random_llama
from synthetic.stages import run_stage as run_any_stage
from tests.prestarted import PrestartedPython

SMOKE = REPO / "configs" / "smoke.yaml"
LLAMA3_TOKENIZER = REPO / "tests" / "fixtures" / "llama3-tokenizer"  # Meta's, rebuilt offline: its README.md


# Fixtures that build a model or curate a run: a test that uses one, even through another fixture, is an
# e2e test (pyproject.toml's tiers), whatever its own marker says.
BUILT_FIXTURES = {
    "smoke_base_dir", "pipeline", "curated", "llama2_base_dir", "llama2_curated", "llama2_exported",
}  # fmt: skip


def built(value: str) -> object:
    """A parameter whose test builds a model through request.getfixturevalue, which collection cannot see."""
    return pytest.param(value, marks=pytest.mark.e2e, id=value)


# The files whose tests use `pipeline`, whose run folder they read and write in place (make compare's report
# changes the model card make push writes): under pytest-xdist they all run in one worker.
PIPELINE_FILES = {
    "test_e2e.py", "test_export.py", "test_faults.py", "test_hub.py", "test_inference_chat.py",
    "test_inference_faults.py", "test_merge.py", "test_serve.py",
}  # fmt: skip


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fresh-stages", action="store_true",
        help="run every stage in a fresh Python, not forked from one that has imported the libraries once",
    )  # fmt: skip


# run_stage's stages are forked from a Python that has imported the libraries under this environment
# (tests/prestarted.py), unless --fresh-stages.
STAGES = PrestartedPython(dict(os.environ))


def pytest_configure(config: pytest.Config) -> None:
    STAGES.enabled = not config.getoption("--fresh-stages")


def pytest_unconfigure(config: pytest.Config) -> None:
    STAGES.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if BUILT_FIXTURES & fixtures:
            item.add_marker(pytest.mark.e2e)
        if "pipeline" in fixtures and item.path.name not in PIPELINE_FILES:
            raise pytest.UsageError(f"{item.nodeid} uses pipeline: add {item.path.name} to PIPELINE_FILES")


class FilesPerWorker(LoadScopeScheduling):
    """`make test`'s schedule (`-n auto`): each worker takes whole files, so that a file's module fixtures (a
    trained run, a served model) are built once, and the PIPELINE_FILES together. xdist's `--dist loadgroup`
    cannot group under pytest 9: it renames node ids through `item._nodeid`, which pytest 9 no longer reads.
    Written against pytest-xdist 3.8.0, whose LoadScopeScheduling asks `_split_scope` for each test's unit of
    work, as its LoadFileScheduling does (tests/test_patches.py checks it)."""

    def _split_scope(self, nodeid: str) -> str:
        path = nodeid.split("::", 1)[0]
        return "pipeline" if Path(path).name in PIPELINE_FILES else path


def pytest_xdist_make_scheduler(config: pytest.Config, log) -> FilesPerWorker:
    return FilesPerWorker(config, log)


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder that `build` fills, which no test changes: built once per `make test`. Under pytest-xdist the
    first worker to ask builds it in the run's shared temporary folder and the others wait for it."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    from filelock import FileLock

    folder = tmp_path_factory.getbasetemp().parent / name
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


def smoke_config(tmp: Path, *overrides: str) -> Config:
    return load_config(
        SMOKE,
        [f"run.output_dir={tmp / 'runs'}", f"model.embedded.cache_dir={tmp / 'base'}", *overrides],
    )


@pytest.fixture(scope="session")
def smoke_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke profile's embedded base, built once per session by `python -m fine_tune.base`, in its own
    process as `make base` builds it. Built inside this process, after other tests, it once differed from a
    fresh process's build by a few ulps in one weight, and test_e2e compares the two byte for byte."""
    from core.model import embedded_base_dir

    root = built_once(tmp_path_factory, "smoke", lambda folder: run_stage("fine_tune.base", folder))
    return embedded_base_dir(smoke_config(root).model.embedded)


@pytest.fixture(scope="session")
def smoke_tokenizer(smoke_base_dir: Path):
    from core.model import load_tokenizer

    return load_tokenizer(str(smoke_base_dir))


@pytest.fixture(scope="session")
def llama2_tokenizer():
    """Meta's Llama-2 tokenizer as the 7B profile gets it: AutoTokenizer over Meta's tokenizer_config.json
    (a LlamaTokenizer), through the product's load_tokenizer."""
    from core.model import load_tokenizer

    return load_tokenizer(str(LLAMA2_TOKENIZER))


def run_stage(
    module: str,
    tmp: Path,
    *extra: str,
    check: bool = True,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess:
    """A stage as a user runs it (`python -m ...`) on the smoke profile, with its outputs under `tmp`."""
    overrides = [f"run.output_dir={tmp / 'runs'}", f"model.embedded.cache_dir={tmp / 'base'}"]
    return run_any_stage(
        module, SMOKE, overrides, *extra, check=check, env=env, stdin=stdin, timeout=600, launch=STAGES.run
    )


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The smoke profile run through base, data, train and merge, once per session: (tmp, run folder)."""
    tmp = tmp_path_factory.mktemp("e2e")
    for module in ("fine_tune.base", "data_prep", "fine_tune.train", "fine_tune.merge"):
        run_stage(module, tmp)
    return tmp, tmp / "runs" / "smoke"


@pytest.fixture(scope="session")
def curated(tmp_path_factory, smoke_base_dir):
    """A folder whose runs/smoke holds the curated smoke dataset, built on the session's smoke base."""
    tmp = tmp_path_factory.mktemp("training")
    (tmp / "base").symlink_to(smoke_base_dir.parent)
    run_stage("data_prep", tmp)
    return tmp


def curated_rows(folder: Path) -> list[dict]:
    """Every train and validation row curated into folder/runs/smoke/dataset."""
    from datasets import load_from_disk

    dataset = load_from_disk(str(folder / "runs" / "smoke" / "dataset" / "data"))
    return [*dataset["train"], *dataset["validation"]]


def sft_examples(base: Path, tokenizer, rows: list[dict], tmp: Path) -> tuple[list[dict], dict]:
    """What the real SFTTrainer of the smoke profile makes of `rows` (prompt, completion, controls), tokenized
    as training tokenizes them, on the 4-bit `base`: the prepared examples, and one collated batch of them."""
    from datasets import Dataset
    from trl import SFTTrainer

    from fine_tune.train import load_quantized_model, sft_config, tokenized_rows

    config = smoke_config(tmp)
    trainer = SFTTrainer(
        model=load_quantized_model(config, str(base)),
        args=sft_config(config, tmp / "checkpoints"),
        train_dataset=tokenized_rows(Dataset.from_list(rows), tokenizer),
        eval_dataset=tokenized_rows(Dataset.from_list(rows[:1]), tokenizer),
        processing_class=tokenizer,
    )
    examples = list(trainer.train_dataset)
    return examples, trainer.data_collator(examples)


# The Llama-2-shaped run: the smoke profile with a length limit that Llama-2's tokens of the sample data
# cross (the length rule drops rows), and a short training, with its check at the end.
LLAMA2_RUN = ("--set", "train.max_length=256", "--set", "train.max_steps=4", "--set", "train.eval_steps=4",
              "--set", "train.save_steps=4")  # fmt: skip


@pytest.fixture(scope="session")
def llama2_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny LlamaForCausalLM shaped like Llama-2 wherever the pipeline can tell: Llama-2-7B's config
    (vocabulary 32,000, <unk> 0, <s> 1, </s> 2, untied embeddings, 4,096 positions) at hidden size 64 and
    2 layers, float16 weights as Meta publishes them, and Meta's tokenizer files as published (a
    LlamaTokenizer with `legacy: false`): a user's local base folder, for model.name_or_path=<folder>."""
    import torch
    from transformers import GenerationConfig, LlamaConfig

    folder = tmp_path_factory.mktemp("llama2-base") / "tiny-llama-2"
    generation = GenerationConfig(bos_token_id=1, eos_token_id=2)
    write_random_llama(
        folder, LlamaConfig(**LLAMA2_SMALL), torch.float16, tokenizer=LLAMA2_TOKENIZER, generation=generation
    )
    return folder


def base_stage(module: str, tmp: Path, base: Path, *extra: str, **options) -> subprocess.CompletedProcess:
    """A stage of a run on a local base folder (the Llama-2-shaped one, or another), as a user runs it."""
    return run_stage(module, tmp, "--set", f"model.name_or_path={base}", *LLAMA2_RUN, *extra, **options)


@pytest.fixture(scope="session")
def llama2_curated(tmp_path_factory: pytest.TempPathFactory, llama2_base_dir: Path) -> Path:
    """A folder whose runs/smoke holds the smoke data curated for the Llama-2-shaped base."""
    tmp = tmp_path_factory.mktemp("llama2-run")
    base_stage("data_prep", tmp, llama2_base_dir)
    return tmp


def fresh_run(curated: Path, name: str) -> Path:
    """A copy of the curated run under a new folder, so each training run starts from nothing."""
    target = curated / name
    (target / "runs" / "smoke").mkdir(parents=True)
    (target / "base").symlink_to((curated / "base").resolve())
    (target / "runs" / "smoke" / "dataset").symlink_to(curated / "runs" / "smoke" / "dataset")
    return target


@pytest.fixture(scope="session")
def llama2_exported(pipeline, tmp_path_factory):
    """The smoke run's curated data with, as its merged model, a small random Llama with Meta's Llama-2
    tokenizer (1,024 positions), exported once by `python -m export`: (tmp, run folder, the stage's
    result)."""
    pytest.importorskip("llama_cpp", reason="make test installs requirements-export.txt")
    import torch
    from transformers import LlamaConfig

    from core.model import load_tokenizer

    tmp = tmp_path_factory.mktemp("export")
    run = tmp / "runs" / "smoke"
    shutil.copytree(pipeline[1] / "dataset", run / "dataset")
    tokenizer = load_tokenizer(str(LLAMA2_TOKENIZER))
    shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=1024, **shape)
    write_random_llama(run / "merged", config, torch.float32)
    tokenizer.save_pretrained(run / "merged")
    return tmp, run, run_stage("export", tmp)


class Server:
    """`make serve` (or any command that serves) started as a user starts it, in its own process group as a
    terminal runs it, its stderr read as it comes; `url` is where it says it listens."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> None:
        import re
        import threading

        self.process = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        listening = threading.Event()

        def read() -> None:
            for line in self.process.stderr:
                self.lines.append(line)
                if re.search(r"serving .* at http://", line):
                    listening.set()
            listening.set()  # the process ended

        threading.Thread(target=read, daemon=True).start()
        listening.wait(timeout)
        found = [re.search(r"at (http://\S+/v1)", line) for line in self.lines]
        urls = [match.group(1) for match in found if match]
        if not urls:
            self.stop()
            raise AssertionError(f"the server did not start: {''.join(self.lines)[-3000:]}")
        self.url = urls[0]

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def stop(self, sig: int = 2) -> int:
        """Ctrl-C (SIGINT) to the whole process group, as a terminal sends it; the exit status."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
        return self.process.wait(timeout=60)
