"""Curation's rules: their names, the order they apply in, and what each removes.

The one-row rules (empty, no code block) are checked by the workers (data_prep/rows.py); the duplicate
and length rules by the main process (data_prep/curate.py); the card and the summary describe them
(data_prep/card.py). All of them take the rules from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.config import Config

EMPTY = "empty question or answer"
NO_CODE_BLOCK = "answer without a code block"
DUPLICATE = "duplicate question"
TOO_LONG = "longer than train.max_length"


def active_rules(config: Config) -> list[str]:
    """The rules in the order they apply; each row is counted against the first one it breaks."""
    rules = [EMPTY]
    if config.data.require_code_block:
        rules.append(NO_CODE_BLOCK)
    rules.append(DUPLICATE)
    if config.data.too_long == "drop":
        rules.append(TOO_LONG)
    return rules


def rule_descriptions(config: Config) -> dict[str, str]:
    """What each rule removes, for the dataset card."""
    return {
        EMPTY: "the question or the answer is empty once converted to Markdown",
        NO_CODE_BLOCK: "the answer has no fenced code block with code in it; on with data.require_code_block",
        DUPLICATE: "the question's text, whitespace collapsed and case folded, was already kept",
        TOO_LONG: f"BOS + prompt + completion + EOS is over {config.train.max_length} tokens of the run's "
        "tokenizer; on with `data.too_long: drop`",
    }
