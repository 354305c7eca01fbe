"""`make compare`: the base and the fine-tuned model side by side on validation prompts, with numbers.

Per model: validation loss and perplexity on the answers (teacher-forced, completion tokens and EOS
only), the stop rate (answers ended by EOS within the token limit), mean answer length. Writes
runs/<run>/reports/compare.md and compare.json.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import time

import torch

from core.cli import run_stage, stage_parser
from core.config import Config
from core.runs import RunPaths, require, write_json_atomic, write_text_atomic
from inference.generate import generate, load_model, resolve_model

log = logging.getLogger(__name__)


def completion_labels(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """Token ids of BOS + prompt + completion + EOS, and labels that keep only the completion and EOS."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    input_ids = tokenizer(prompt + completion)["input_ids"] + [tokenizer.eos_token_id]
    return input_ids, [-100] * len(prompt_ids) + input_ids[len(prompt_ids) :]


@torch.no_grad()
def completion_loss(model, tokenizer, rows: list[dict], batch_size: int) -> float:
    """Mean cross-entropy per completion token over all rows (teacher forcing)."""
    total_loss, total_tokens = 0.0, 0
    for start in range(0, len(rows), batch_size):
        pairs = [
            completion_labels(tokenizer, r["prompt"], r["completion"])
            for r in rows[start : start + batch_size]
        ]
        width = max(len(ids) for ids, _ in pairs)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in pairs], device=model.device)
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in pairs], device=model.device)
        attention_mask = torch.arange(width)[None, :] < torch.tensor([len(ids) for ids, _ in pairs])[:, None]
        logits = model(input_ids=input_ids, attention_mask=attention_mask.to(model.device)).logits.float()
        shifted_logits, shifted_labels = logits[:, :-1], labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            shifted_logits.reshape(-1, shifted_logits.size(-1)), shifted_labels.reshape(-1), reduction="sum"
        )
        total_loss += loss.item()
        total_tokens += int((shifted_labels != -100).sum())
    return total_loss / total_tokens


def evaluate_model(config: Config, name: str, rows: list[dict]) -> dict:
    model, tokenizer = load_model(resolve_model(config, name))
    loss = completion_loss(model, tokenizer, rows, config.inference.batch_size)
    started = time.perf_counter()
    answers = generate(model, tokenizer, [row["prompt"] for row in rows], config.inference)
    seconds = time.perf_counter() - started
    new_tokens = sum(answer.new_tokens for answer in answers)
    del model
    gc.collect()
    return {
        "validation_loss": round(loss, 4),
        "perplexity": round(math.exp(loss), 2),
        "stop_rate": round(sum(answer.stopped for answer in answers) / len(answers), 3),
        "mean_answer_tokens": round(new_tokens / len(answers), 1),
        "tokens_per_second": round(new_tokens / seconds, 1),
        "answers": [answer.text for answer in answers],
    }


def markdown_report(rows: list[dict], results: dict[str, dict]) -> str:
    metrics = ["validation_loss", "perplexity", "stop_rate", "mean_answer_tokens", "tokens_per_second"]
    names = list(results)
    lines = [
        "# Base vs fine-tuned\n",
        "| metric | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---" for _ in names) + " |",
        *[f"| {metric} | " + " | ".join(str(results[n][metric]) for n in names) + " |" for metric in metrics],
        "",
    ]
    for index, row in enumerate(rows):
        lines += [f"## Example {index + 1}\n", "**Prompt**\n", "```text\n" + row["prompt"] + "\n```\n"]
        lines += ["**Reference**\n", row["completion"].strip() + "\n"]
        for name in names:
            lines += [f"**{name}**\n", (results[name]["answers"][index] or "_(empty)_") + "\n"]
    return "\n".join(lines)


def main(config: Config, args: argparse.Namespace) -> None:
    from datasets import load_from_disk

    paths = RunPaths.of(config)
    dataset = load_from_disk(str(require(paths.dataset / "data", "curated dataset", "make data")))
    validation = dataset["validation"]
    rows = validation.select(range(min(config.inference.compare_examples, len(validation)))).to_list()
    results = {
        "base": evaluate_model(config, "base", rows),
        "fine-tuned": evaluate_model(config, args.model, rows),
    }

    summary = {name: {k: v for k, v in result.items() if k != "answers"} for name, result in results.items()}
    write_json_atomic(
        paths.reports / "compare.json",
        {
            "model": args.model,
            "examples": len(rows),
            "summary": summary,
            "answers": [
                {
                    "prompt": row["prompt"],
                    "reference": row["completion"],
                    **{n: results[n]["answers"][i] for n in results},
                }
                for i, row in enumerate(rows)
            ],
        },
    )
    write_text_atomic(paths.reports / "compare.md", markdown_report(rows, results))
    for name, values in summary.items():
        log.info("%-10s %s", name, values)
    log.info("report: %s", paths.reports / "compare.md")


if __name__ == "__main__":
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="new_model", help="the fine-tuned side: new_model, a local folder or a Hub id"
    )
    run_stage(main, parser)
