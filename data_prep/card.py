"""The dataset card (README.md) written beside the curated dataset and pushed with it."""

from __future__ import annotations

import json

from core.config import Config
from data_prep.curate import CurationStats

STACKOVERFLOW_ATTRIBUTION = (
    "Stack Overflow content is licensed under CC-BY-SA 3.0 "
    "(https://creativecommons.org/licenses/by-sa/3.0/); questions and answers are by their Stack Overflow "
    'authors, from the Kaggle dump "Python Questions from Stack Overflow".'
)


def dataset_card(config: Config, stats: CurationStats) -> str:
    sources = [name for name, count in stats.kept_by_source.items() if count]
    license_line = "license: cc-by-sa-3.0\n" if "stackoverflow" in sources else ""
    header = (
        f"---\n{license_line}task_categories:\n- text-generation\ntags:\n- sft\n- llama-2\n- python\n---\n"
    )
    lines = [
        header,
        f"# {config.run.name}: Llama-2 prompt/completion dataset\n",
        "Each row holds a `prompt` in the Llama-2 chat format (`[INST] <<SYS>> ... <</SYS>> ... [/INST]`, "
        "without the BOS, which the tokenizer adds) and a `completion` (the answer; the trainer appends "
        "EOS), "
        "plus provenance columns `source`, `source_id`, `question_score`, `answer_score` and `num_tokens`.\n",
        f"System prompt: `{config.data.system_prompt}`\n",
        "## Splits\n",
        f"- train: {stats.train_rows} rows\n- validation: {stats.validation_rows} rows\n",
        "## Sources\n",
        *[f"- {name}: {count} rows kept" for name, count in stats.kept_by_source.items()],
        "",
        "## Rules and what they removed\n",
        *[f"- {rule}: {count}" for rule, count in stats.dropped.items()],
        "",
        "## Reading statistics\n",
        "```json\n" + json.dumps(stats.read, indent=2) + "\n```\n",
        f"Token lengths (BOS + prompt + completion + EOS): {stats.token_lengths}\n",
    ]
    if "stackoverflow" in sources:
        lines += ["## Attribution\n", STACKOVERFLOW_ATTRIBUTION + "\n"]
    return "\n".join(lines)
