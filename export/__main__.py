"""`make export`: the merged model as GGUF files for llama.cpp and Ollama, checked against the merged model.

From runs/<run>/merged/: llama.cpp's own converter writes a 16-bit GGUF (BF16 for a bfloat16 merge, else
F16), llama.cpp's quantizer writes Q8_0 and Q4_K_M from it (export/gguf.py), and an Ollama Modelfile gives
the trained prompt format (export/modelfile.py). Then llama.cpp loads the files and export/check.py compares
them with the merged model in transformers: the tokenizer's ids, the embedded chat template, greedy answers
and logits of the 16-bit file, greedy-token agreement and perplexity of the quantized files. The numbers go
to runs/<run>/reports/export_check.json; the files are written into a staging folder and renamed to
runs/<run>/gguf/ only when the check passes.
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
from core.model import chat_format, load_model_config, load_tokenizer
from core.runs import RunPaths, atomic_dir, require, run_folder_lock, write_json_atomic
from export.check import check_export
from export.gguf import QUANTIZED, SIXTEEN_BIT, convert, file_name, quantize, require_tools
from export.modelfile import modelfile

log = logging.getLogger(__name__)


def gguf_folder(paths: RunPaths) -> Path:
    return paths.root / "gguf"


def main(config: Config, args: argparse.Namespace) -> None:
    paths = RunPaths.of(config)
    merged = require(paths.merged / "config.json", "merged model", "make merge").parent
    require(paths.dataset / "data", "curated dataset", "make data")
    require_tools()
    with run_folder_lock(paths, "make export"):
        export(config, paths, merged)


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


def export(config: Config, paths: RunPaths, merged: Path) -> None:
    from datasets import load_from_disk

    started = time.perf_counter()
    rows = load_from_disk(str(paths.dataset / "data"))["validation"].to_list()
    tokenizer = load_tokenizer(str(merged), prompt_format=config.data.prompt_format)
    merged_config = load_model_config(str(merged))
    sixteen = SIXTEEN_BIT[str(merged_config.dtype).removeprefix("torch.")]
    kinds = [sixteen, *QUANTIZED]
    with atomic_dir(gguf_folder(paths)) as staging:
        files = {kind: staging / file_name(config.run.name, kind) for kind in kinds}
        convert(merged, files[sixteen], sixteen)
        for kind in QUANTIZED:
            quantize(files[sixteen], files[kind], kind)
        text = modelfile(
            files["Q4_K_M"].name, config.data.system_prompt, chat_format(tokenizer),
            merged_config.max_position_embeddings, config.inference,
            [files[kind].name for kind in kinds if kind != "Q4_K_M"],
        )  # fmt: skip
        (staging / "Modelfile").write_text(text, encoding="utf-8")
        log.info("converted and quantized in %.0f s; checking against the merged model", elapsed(started))
        report = check_export(merged, tokenizer, rows, files, config)
        report["files_mb"] = {path.name: round(path.stat().st_size / 2**20, 2) for path in files.values()}
        report["seconds"] = round(elapsed(started), 1)
        write_json_atomic(paths.reports / "export_check.json", report)
        summarize(report)
        if not report["passed"]:
            where = paths.reports / "export_check.json"
            raise UserError(
                f"export check failed: {'; '.join(failures(report))}; see {where} (no gguf/ folder written)"
            )
    log.info("export check passed in %.0f s: %s", report["seconds"], gguf_folder(paths))


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
    run_stage(main, stage_parser(__doc__.splitlines()[0]))
