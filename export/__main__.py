"""`make export`: the merged model as GGUF files for llama.cpp and Ollama, checked against the merged model.

From runs/<run>/merged/: llama.cpp's own converter writes a 16-bit GGUF (BF16 for a bfloat16 merge, else
F16), llama.cpp's quantizer writes Q8_0 and Q4_K_M from it (export/gguf.py), and an Ollama Modelfile gives
the trained prompt format (export/modelfile.py). Then llama.cpp loads the files and export/check.py compares
them with the merged model in transformers: the tokenizer's ids, the embedded chat template, greedy answers
and logits of the 16-bit file, greedy-token agreement and perplexity of the quantized files. The numbers go
to runs/<run>/reports/export_check.json; the files are written into a staging folder and renamed to
runs/<run>/gguf/ only when the check passes.

`--model base` (or a model folder) exports that model the same way, into runs/<run>/gguf-base/ (or
gguf-<folder name>/), with its check in reports/export_check-base.json: what `make serve BESIDE=base`
serves beside the fine-tuned model. `--if-missing` skips a model whose export is newer than its files.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from core.cli import run_stage, stage_parser
from core.config import Config
from core.errors import UserError
from core.model import chat_format, load_model_config, load_tokenizer, resolve_base
from core.runs import RunPaths, atomic_dir, require, run_folder_lock, write_json_atomic
from export.check import check_export
from export.gguf import QUANTIZED, SIXTEEN_BIT, convert, quantize, require_tools
from export.modelfile import modelfile

log = logging.getLogger(__name__)


def main(config: Config, args: argparse.Namespace) -> None:
    paths = RunPaths.of(config)
    if args.model.endswith(".gguf"):  # a GGUF file is exported already: `make serve` passes what it serves
        return
    folder = model_folder(config, paths, args.model)
    require(paths.dataset / "data", "curated dataset", "make data")
    output = paths.gguf(args.model)
    if args.if_missing and up_to_date(output, folder):
        log.info("GGUF files of %s are up to date: %s", args.model, output)
        return
    require_tools()
    with run_folder_lock(paths, "make export"):
        export(config, paths, args.model, folder)


def model_folder(config: Config, paths: RunPaths, model: str) -> Path:
    """The 16-bit model folder to export: the merged model, the base (downloaded once from the Hub, or the
    embedded base's folder), or a local model folder."""
    if model == "new_model":
        return require(paths.merged / "config.json", "merged model", "make merge").parent
    if model == "base":
        base = resolve_base(config)
        if Path(base).is_dir():
            return Path(base)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(base, revision=config.model.revision))
    if (Path(model) / "config.json").is_file():
        return Path(model)
    raise UserError(f"cannot export {model!r}: name new_model, base, or a model folder (with config.json)")


def up_to_date(output: Path, folder: Path) -> bool:
    """An export folder written after every file of the model it was exported from."""
    if not output.is_dir():
        return False
    newest = max(path.stat().st_mtime for path in folder.iterdir() if path.is_file())
    return output.stat().st_mtime >= newest


def check_report(paths: RunPaths, model: str) -> Path:
    suffix = "" if model == "new_model" else f"-{paths.gguf(model).name.removeprefix('gguf-')}"
    return paths.reports / f"export_check{suffix}.json"


def failures(report: dict[str, Any]) -> list[str]:
    """What failed, in words, for the one-line error."""
    problems = []
    tokens, template, sixteen = report["tokenizer"], report["chat_template"], report["sixteen_bit"]
    if not tokens["passed"]:
        first = tokens["first_difference"]
        problems.append(
            f"the GGUF's tokenizer gives other ids than ours on {tokens['texts'] - tokens['identical']} of "
            f"{tokens['texts']} texts"
            + (
                f" (first at token {first['position']}: ours {first['ours']}, GGUF {first['gguf']})"
                if first
                else ""
            )
            + f"; BOS and EOS ids (ours, GGUF): {tokens['special_token_ids']}"
        )
    if not template["passed"]:
        problems.append(template.get("problem", "the GGUF's chat template renders another prompt than ours"))
    if not sixteen["passed"]:
        problems.append(
            f"llama.cpp's logits differ from transformers' by {sixteen['max_abs_logit_difference']:.4g} > "
            f"{sixteen['tolerance']}, and {sixteen['prompts'] - sixteen['identical_greedy_answers']} greedy "
            "answers differ"
        )
    return problems


def export(config: Config, paths: RunPaths, model: str, folder: Path) -> None:
    from datasets import load_from_disk

    started = time.perf_counter()
    rows = load_from_disk(str(paths.dataset / "data"))["validation"].to_list()
    tokenizer = load_tokenizer(str(folder), prompt_format=config.data.prompt_format)
    model_config = load_model_config(str(folder))
    sixteen = SIXTEEN_BIT[str(model_config.dtype).removeprefix("torch.")]
    kinds = [sixteen, *QUANTIZED]
    output = paths.gguf(model)
    with atomic_dir(output) as staging:
        files = {kind: staging / paths.gguf_file(model, kind).name for kind in kinds}
        convert(folder, files[sixteen], sixteen)
        for kind in QUANTIZED:
            quantize(files[sixteen], files[kind], kind)
        text = modelfile(
            files["Q4_K_M"].name, config.data.system_prompt, chat_format(tokenizer),
            model_config.max_position_embeddings, config.inference,
            [files[kind].name for kind in kinds if kind != "Q4_K_M"],
        )  # fmt: skip
        (staging / "Modelfile").write_text(text, encoding="utf-8")
        log.info("converted and quantized in %.0f s; checking against %s", elapsed(started), folder)
        report = check_export(folder, tokenizer, rows, files, config)
        report["files_mb"] = {path.name: round(path.stat().st_size / 2**20, 2) for path in files.values()}
        report["seconds"] = round(elapsed(started), 1)
        where = check_report(paths, model)
        write_json_atomic(where, report)
        summarize(report)
        if not report["passed"]:
            raise UserError(
                f"export check failed: {'; '.join(failures(report))}; see {where} (no {output.name}/ folder "
                "written)"
            )
    log.info("export check passed in %.0f s: %s", report["seconds"], output)


def elapsed(started: float) -> float:
    return time.perf_counter() - started


def summarize(report: dict[str, Any]) -> None:
    tokens, template, sixteen = report["tokenizer"], report["chat_template"], report["sixteen_bit"]
    log.info("files: %s", ", ".join(f"{name} {size} MB" for name, size in report["files_mb"].items()))
    log.info("tokenizer: %d of %d texts give our ids", tokens["identical"], tokens["texts"])
    log.info("chat template: %d of %d chats render our prompt, stop %s", template.get("identical", 0),
             template.get("chats", 0), template.get("stop"))  # fmt: skip
    log.info(
        "16-bit vs transformers: %d of %d greedy answers identical, max |logit difference| %.3g "
        "(tolerance %g) on %d answer tokens",
        sixteen["identical_greedy_answers"], sixteen["prompts"], sixteen["max_abs_logit_difference"],
        sixteen["tolerance"], sixteen["answer_tokens_compared"],
    )  # fmt: skip
    perplexities = ", ".join(f"{name} {value}" for name, value in report["perplexity"].items())
    log.info("perplexity on validation answers: %s", perplexities)
    for kind, numbers in report["quantized"].items():
        log.info(
            "%s: greedy token agreement with the 16-bit file %.3f, %d of %d greedy answers identical", kind,
            numbers["greedy_token_agreement_with_16_bit"], numbers["greedy_answers_identical_to_16_bit"],
            numbers["prompts"],
        )  # fmt: skip


if __name__ == "__main__":
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="new_model", help="new_model (the merged model), base, or a model folder"
    )
    parser.add_argument(
        "--if-missing", action="store_true", help="do nothing when its GGUF files are newer than the model"
    )
    run_stage(main, parser)
