"""What curation did, for people: the dataset card (README.md, pushed with the data), the printed summary."""

from __future__ import annotations

from core.config import Config, StackOverflowSource
from data_prep.curate import CurationStats
from data_prep.rules import TOO_LONG, rule_descriptions

FORMAT_NAMES = {
    "llama2": "Meta's Llama-2 chat format, `[INST] <<SYS>> ... <</SYS>> ... [/INST]`",
    "chat_template": "the base tokenizer's own chat template",
    "firefly": "Firefly's format, `<s>{input}</s>{target}</s>...`",
    "text": "plain text, no prompt format",
}

STACKOVERFLOW_ATTRIBUTION = (
    "Stack Overflow content is licensed under CC-BY-SA 3.0 "
    "(https://creativecommons.org/licenses/by-sa/3.0/); questions and answers are by their Stack Overflow "
    'authors, from the Kaggle dump "Python Questions from Stack Overflow". Each row\'s `source_id` is the '
    "question's Stack Overflow Id (https://stackoverflow.com/q/<id>)."
)


def _first(positions: list[int]) -> str:
    return ", ".join(map(str, positions))


def _lines(lines: list[int]) -> str:
    return f"line{'s' if len(lines) > 1 else ''} {_first(lines)}"


def stackoverflow_reading(source: StackOverflowSource, read: dict) -> list[str]:
    tags = ""
    if source.include_tags or source.exclude_tags:
        tags = f" (include {source.include_tags or 'any'}, exclude {source.exclude_tags or 'none'})"
    malformed = "; ".join(
        f"{name} {count} (first at {_lines(read['malformed_first_lines'][name])})"
        for name, count in read["malformed_rows"].items()
    )
    repeated = "none"
    if read["repeated_question_ids"]:
        repeated = (
            f"{read['repeated_question_ids']} rows skipped, the first row with each Id used "
            f"(first: {_first(read['repeated_question_ids_first'])})"
        )
    return [
        f"{read['questions_read']} questions and {read['answers_read']} answers read; each question gets its "
        "highest-scored answer (the lowest answer Id on a tie)",
        f"question score below {source.min_question_score}: {read['low_score_questions']}; answer score "
        f"below {source.min_answer_score}: {read['low_score_answers']}; excluded by tags{tags}: "
        f"{read['excluded_by_tags']}",
        f"questions without an answer: {read['unanswered_questions']}; answers whose question is missing: "
        f"{read['orphan_answers']}",
        f"malformed rows skipped: {malformed or 'none'}",
        f"question Ids repeated: {repeated}",
    ]


def alpaca_reading(read: dict) -> list[str]:
    malformed = "none"
    if read["malformed"]:
        malformed = f"{read['malformed']} (first at positions {_first(read['malformed_positions'])})"
    return [f"{read['records_read']} records read; malformed records skipped: {malformed}"]


def conversations_reading(read: dict) -> list[str]:
    """Conversations read, and the bad records skipped per reason, the first few named by their line."""
    bad = "; ".join(f"{reason}: {count}" for reason, count in read["bad"].items()) or "none"
    lines = [f"{read['records_read']} records read; bad records skipped: {bad}"]
    if read["first_bad"]:
        lines.append(f"the first bad records: {'; '.join(read['first_bad'])}")
    return lines


def text_reading(read: dict) -> list[str]:
    malformed = "none"
    if read["malformed"]:
        malformed = f"{read['malformed']} (first at {_lines(read['malformed_lines'])})"
    return [
        f"{read['documents_read']} documents read; empty documents skipped: {read['empty']}; malformed "
        f"records skipped: {malformed}"
    ]


def reading(config: Config, stats: CurationStats) -> dict[str, list[str]]:
    """What reading each source found, a few lines per source."""
    readers = {
        "stackoverflow": lambda read: stackoverflow_reading(config.data.stackoverflow, read),
        "alpaca": alpaca_reading,
        **{str(source.path): conversations_reading for source in config.data.conversations},
        **{str(source.path): text_reading for source in config.data.text},
    }
    return {source: readers[source](read) for source, read in stats.read.items()}


def removed(stats: CurationStats, rule: str) -> str:
    """How many rows the rule removed; for the length rule, of how many it measured when the sources'
    limits were filled before every row was measured."""
    reached = sum(stats.examples.values()) - sum(
        stats.dropped[r] for r in stats.rules[: stats.rules.index(rule)]
    )
    if rule == TOO_LONG and stats.length_checked < reached:
        return f"{stats.dropped[rule]} removed of the {stats.length_checked} rows measured to fill the limits"
    return f"{stats.dropped[rule]} removed"


def examples(stats: CurationStats) -> str:
    return ", ".join(f"{source} {count}" for source, count in stats.examples.items())


def kept(config: Config, stats: CurationStats) -> str:
    limits = {"stackoverflow": config.data.stackoverflow, "alpaca": config.data.alpaca}
    limits |= {str(source.path): source for source in [*config.data.conversations, *config.data.text]}
    return ", ".join(
        f"{source} {count}"
        + (f" (a seeded sample, limit {limits[source].limit})" if limits[source].limit else "")
        for source, count in stats.kept_by_source.items()
    )


def turns_cut(config: Config, stats: CurationStats) -> str:
    return (
        f"{stats.turns_cut} later turns of conversations left out so that each fits train.max_length "
        f"{config.train.max_length} (a conversation is cut between turns, never inside an answer)"
    )


def special_text(stats: CurationStats) -> str:
    return (
        f"{stats.special_token_text} rows spell a special token of the tokenizer (such as `</s>`) in their "
        "text; it stays text, never the control token"
    )


def token_lengths(config: Config, stats: CurationStats) -> str:
    lengths = stats.token_lengths
    counted = f"all {lengths['of_rows']} kept rows"
    if lengths["counted_rows"] < lengths["of_rows"]:
        counted = f"a seeded sample of {lengths['counted_rows']} of the {lengths['of_rows']} kept rows"
    over = ""
    if lengths["over_max_length"]:
        over = (
            f"; {lengths['over_max_length']} of them over train.max_length {config.train.max_length}, "
            "left to training to truncate"
        )
    return (
        f"p50 {lengths['p50']}, p90 {lengths['p90']}, p99 {lengths['p99']}, max {lengths['max']} "
        f"(BOS + prompt + completion + EOS, on {counted}){over}"
    )


def cell(text: str) -> str:
    """Text inside a Markdown table cell."""
    return text.replace("|", "\\|")


def overlap_section(config: Config, stats: CurationStats) -> list[str]:
    """The validation rows that share a run of n-grams with a training row (contamination of the split)."""
    lines = ["## Overlap between the splits\n"]
    if not stats.overlaps:
        return [
            *lines,
            f"No validation row shares a run of {config.eval.ngram} normalized tokens with a training row.\n",
        ]
    lines.append(
        f"{len(stats.overlaps)} validation rows share a run of {config.eval.ngram} or more normalized tokens "
        "(lowercased words, system prompt aside) with a training row:\n"
    )
    lines += ["| validation row | training row | tokens | shared text |", "| ---: | ---: | ---: | --- |"]
    lines += [
        f"| {o['validation_row']} | {o['training_row']} | {o['tokens']} | {cell(o['text'])} |"
        for o in stats.overlaps
    ]
    return [*lines, ""]


def dataset_card(config: Config, stats: CurationStats) -> str:
    sources = [name for name, count in stats.kept_by_source.items() if count]
    license_line = "license: cc-by-sa-3.0\n" if "stackoverflow" in sources else ""
    header = (
        f"---\n{license_line}task_categories:\n- text-generation\ntags:\n- sft\n- llama-2\n- python\n---\n"
    )
    descriptions = rule_descriptions(config)
    lines = [
        header,
        f"# {config.run.name}: prompt/completion dataset ({FORMAT_NAMES[config.data.prompt_format]})\n",
        "Each row holds a `prompt` in the run's format (for a conversation, every turn before the last "
        "answer, as `make chat` sends them; empty for a plain-text document; without the BOS, which the "
        "tokenizer adds) and a `completion` (the last answer, or the document; the trainer appends EOS), "
        "`controls` (the [start, end] character spans of prompt + completion where the format wrote a "
        "control token; everything else is text, even `</s>`), `earlier_answers` (the [start, end] spans "
        "in the prompt of a conversation's earlier answers with their closing tokens, in the loss like the "
        "completion), plus provenance columns `source`, `source_id` (the Stack Overflow question Id, the "
        "record's position from 1, or the line a conversation or document starts at), `question_score` and "
        "`answer_score` (Stack Overflow only).\n",
        f"System prompt: `{config.data.system_prompt}`\n",
        "## Splits\n",
        f"- train: {stats.train_rows} rows\n- validation: {stats.validation_rows} rows (shuffled with seed "
        f"{config.run.seed}; a question is one row, so no question is in both)\n",
        "## Sources\n",
    ]
    for source, source_lines in reading(config, stats).items():
        lines += [f"### {source}\n", *[f"- {line}" for line in source_lines], ""]
    lines += [
        f"Examples: {examples(stats)}; kept: {kept(config, stats)}.\n",
        "## Rules, in order, and the rows each removed\n",
        *[f"- {rule} ({descriptions[rule]}): {removed(stats, rule)}" for rule in stats.rules],
        "",
        f"Token lengths: {token_lengths(config, stats)}.\n",
        f"Conversations: {turns_cut(config, stats)}.\n",
        f"Special-token text: {special_text(stats)}.\n",
    ]
    lines += overlap_section(config, stats)
    if "stackoverflow" in sources:
        lines += ["## Attribution\n", STACKOVERFLOW_ATTRIBUTION + "\n"]
    return "\n".join(lines)


def summary(config: Config, stats: CurationStats, where: str) -> str:
    """What `make data` prints: one labelled line or block per step, not the JSON."""
    blocks = [(source, source_lines) for source, source_lines in reading(config, stats).items()]
    blocks += [
        ("examples", [examples(stats)]),
        ("rules", [f"{rule}: {removed(stats, rule)}" for rule in stats.rules]),
        ("kept", [kept(config, stats)]),
        ("split", [f"train {stats.train_rows}, validation {stats.validation_rows} (seed {config.run.seed})"]),
        ("tokens", [token_lengths(config, stats)]),
        *([("turns", [turns_cut(config, stats)])] if config.data.conversations else []),
        ("specials", [special_text(stats)]),
        *[("warning", [warning]) for warning in stats.warnings],
        ("written", [where]),
    ]
    width = max(len(label) for label, _ in blocks) + 2
    return "\n".join(
        f"{label if index == 0 else '':<{width}}{line}"
        for label, lines in blocks
        for index, line in enumerate(lines)
    )
