"""`make compare`: the base and the fine-tuned model side by side on the same prompts, with numbers.

The prompts: the first `inference.compare_examples` validation examples, then the hand-written prompts of
`inference.compare_prompts`. Per model: validation loss and perplexity (teacher-forced, on the answer
tokens and EOS only), stop rate, the fraction of fenced Python code blocks that parse, ROUGE-L against
the reference answer, mean answer length and tokens/s (see inference/metrics.py). Writes
runs/<run>/reports/compare.md, compare.html and compare.json, and prints the summary table. With
`eval.with_compare` (the default) it also runs `make eval`'s execution-based evaluation on the models it
has loaded, and its summary joins the reports.

Both models are found, and every prompt is checked against each model's context, before any work; the
answers are logged per batch as they come.
"""

from __future__ import annotations

import argparse
import gc
import logging
import re
import time

import torch

from core.cli import run_stage, stage_parser
from core.config import Config
from core.prompts import ChatFormat, Rendered, curated_row, training_row
from core.runs import RunPaths, require, run_folder_lock, write_json_atomic, write_text_atomic
from evaluation.problems import Problem
from inference.eval_report import eval_summary_html, eval_table
from inference.evaluate import answer_problems, evaluation_report, load_problems
from inference.generate import Answer, decoding_settings, generate
from inference.loading import check_prompts_fit, load_model, model_chat_format
from inference.metrics import completion_labels, rouge_l, summarize, summed_token_loss
from inference.models import ModelSource, add_model_option, resolve_model
from inference.prompts_file import PromptRequest, read_prompts
from inference.report import html_report, markdown_report, summary_table

log = logging.getLogger(__name__)

CONTINUED_WORDS = 48  # at most this many words of a validation document are given to continue


@torch.no_grad()
def validation_loss(model, tokenizer, rows: list[dict], batch_size: int, max_length: int) -> float:
    """Mean cross-entropy per answer token (every answer and its closing token, or every token of a
    document) over the rows, teacher-forced on their first `max_length` tokens, as training sees them."""
    total_loss, total_tokens = 0.0, 0
    for start in range(0, len(rows), batch_size):
        pairs = [
            tuple(part[:max_length] for part in completion_labels(tokenizer, *training_row(row)))
            for row in rows[start : start + batch_size]
        ]
        width = max(len(ids) for ids, _ in pairs)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in pairs])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in pairs])
        attention_mask = torch.arange(width)[None, :] < torch.tensor([len(ids) for ids, _ in pairs])[:, None]
        logits = model(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device))
        # Prompt tuning and P-tuning return logits for their virtual tokens first: the inputs' come last.
        loss, tokens = summed_token_loss(logits.logits[:, -width:].cpu(), labels)
        total_loss += loss
        total_tokens += tokens
    return total_loss / total_tokens


def evaluate_model(
    config: Config,
    label: str,
    source: ModelSource,
    rows: list[dict],
    prompts: list[Rendered],
    problems: list[Problem],
) -> tuple[float, list[Answer], float, dict]:
    """One model's validation loss, its answers, the seconds they took and its answers to the evaluation's
    problems (none without `eval.with_compare`); the model is freed after."""
    log.info("%s: loss on %d validation answers, then %d prompts", label, len(rows), len(prompts))
    model, tokenizer = load_model(source, config)
    loss = validation_loss(model, tokenizer, rows, config.inference.batch_size, config.train.max_length)

    def progress(answered: int, total: int) -> None:
        log.info("%s: %d of %d prompts answered", label, answered, total)

    started = time.perf_counter()
    answers = generate(model, tokenizer, prompts, config.inference, progress=progress)
    seconds = time.perf_counter() - started
    solutions = answer_problems(model, tokenizer, problems, config, label) if problems else {}
    del model
    gc.collect()
    return loss, answers, seconds, solutions


def continuation(document: str, words: int = CONTINUED_WORDS) -> tuple[str, str]:
    """A document cut for a model to continue: its first half, at most `words` words, as typed (the prompt),
    and the rest (the reference)."""
    starts = [match.start() for match in re.finditer(r"\S+", document)]
    cut = starts[min(len(starts) // 2, words)] if len(starts) > 1 else len(document)
    return document[:cut], document[cut:]


def comparison_items(
    rows: list[dict], hand_written: list[PromptRequest], chat: ChatFormat, system: str | None
) -> tuple[list[dict], list[Rendered]]:
    """What both models answer: validation examples (prompts already rendered; a plain-text document, which
    has none, is continued from its first half), then hand-written ones; the report's items, and the
    prompts with their formats' control tokens."""
    prompts, references = [], []
    for row in rows:
        prompt, completion = curated_row(row["prompt"], row["completion"], row.get("controls"))
        if not prompt.text:
            start, rest = continuation(completion.text)
            prompt, completion = Rendered(start), Rendered(rest)
        prompts.append(prompt)
        references.append(completion.text.strip())
    prompts += [request.rendered(chat, system) for request in hand_written]
    references += [request.reference for request in hand_written]
    kinds = [f"validation example {i}" for i in range(1, len(rows) + 1)]
    kinds += [f"hand-written prompt {i}" for i in range(1, len(hand_written) + 1)]
    items = [
        {"kind": kind, "prompt": prompt.text, "reference": reference}
        for kind, prompt, reference in zip(kinds, prompts, references, strict=True)
    ]
    return items, prompts


def main(config: Config, args: argparse.Namespace) -> None:
    paths = RunPaths.of(config)
    with run_folder_lock(paths, "make compare"):
        compare(config, args, paths)


def compare(config: Config, args: argparse.Namespace, paths: RunPaths) -> None:
    from datasets import load_from_disk

    dataset = load_from_disk(str(require(paths.dataset / "data", "curated dataset", "make data")))
    validation = dataset["validation"]
    rows = validation.select(range(min(config.inference.compare_examples, len(validation)))).to_list()
    hand_written = read_prompts(config.inference.compare_prompts) if config.inference.compare_prompts else []

    sources = {"base": resolve_model(config, "base"), "fine-tuned": resolve_model(config, args.model)}
    chat = model_chat_format(config, sources["fine-tuned"])
    items, prompts = comparison_items(rows, hand_written, chat, config.data.system_prompt)
    where = [item["kind"] for item in items[: len(rows)]] + [request.where for request in hand_written]
    for source in sources.values():
        check_prompts_fit(config, source, list(zip(where, prompts, strict=True)))

    problems = load_problems(config) if config.eval.with_compare else []
    # The fine-tuned model first: weights too damaged to load then fail before the base's work is done.
    results = {
        label: evaluate_model(config, label, sources[label], rows, prompts, problems)
        for label in reversed(sources)
    }
    summary = {}
    for label in sources:  # the reports show the base first
        loss, answers, seconds, _ = results[label]
        scores = [
            None if it["reference"] is None else rouge_l(a.text, it["reference"])
            for it, a in zip(items, answers, strict=True)
        ]
        references = [item["reference"] for item in items]
        summary[label] = summarize(loss, answers, references, scores, seconds)
        for item, answer, score in zip(items, answers, scores, strict=True):
            item.setdefault("answers", {})[label] = {
                "text": answer.text,
                "new_tokens": answer.new_tokens,
                "stopped": answer.stopped,
                "rouge_l": None if score is None else round(score, 4),
            }

    report = {
        "run": config.run.name,
        "model": args.model,
        "examples": {"validation": len(rows), "hand_written": len(hand_written)},
        "decoding": decoding_settings(config.inference),
        "summary": summary,
        "items": items,
    }
    evaluation = None
    if problems:
        solutions = {label: results[label][3] for label in sources}
        evaluation = evaluation_report(config, paths, problems, sources, solutions)
        report["evaluation"] = {key: evaluation[key] for key in ("problems", "styles", "summary", "paired")}
    write_json_atomic(paths.reports / "compare.json", report)
    tables = (eval_table(evaluation), eval_summary_html(evaluation)) if evaluation else ("", "")
    write_text_atomic(paths.reports / "compare.md", markdown_report(report, tables[0]))
    write_text_atomic(paths.reports / "compare.html", html_report(report, tables[1]))
    print(summary_table(summary))
    if evaluation:
        print("\n" + tables[0])
    log.info("reports: %s (.md, .html, .json)", paths.reports / "compare")


if __name__ == "__main__":
    parser = stage_parser(__doc__.splitlines()[0])
    add_model_option(parser, "the fine-tuned side")
    run_stage(main, parser)
