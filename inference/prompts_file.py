"""Prompts to answer in bulk: a text file with one prompt per line, or a `.jsonl` file with one object per
line: `prompt`, and optionally `system` (null: the configured system prompt; "": none) and `reference`
(an expected answer, which `make compare` scores against)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError
from core.jsonl import json_objects
from core.prompts import ChatFormat, Rendered

FIELDS = ("prompt", "system", "reference")


@dataclass(frozen=True)
class PromptRequest:
    prompt: str
    system: str | None = None  # None: the configured system prompt
    reference: str | None = None
    where: str | None = None  # how messages name it: "prompts.txt line 3"

    def rendered(self, chat: ChatFormat, default_system: str | None) -> Rendered:
        return chat.rendered_prompt(self.prompt, default_system if self.system is None else self.system)


def parse_prompt_lines(text: str, source: str) -> list[PromptRequest]:
    """One prompt per non-blank line."""
    return [
        PromptRequest(line.strip(), where=f"{source} line {number}")
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip()
    ]


def parse_prompt_jsonl(text: str, source: str) -> list[PromptRequest]:
    """One JSON object per non-blank line; a bad line is named with its number."""
    requests = []
    for where, record in json_objects(text, source, "an object with a prompt"):
        unknown = sorted(set(record) - set(FIELDS))
        if unknown:
            raise UserError(f"{where}: unknown field {unknown[0]!r} (allowed: {', '.join(FIELDS)})")
        if not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
            raise UserError(f"{where}: `prompt` must be a non-empty string")
        for field in ("system", "reference"):
            if record.get(field) is not None and not isinstance(record[field], str):
                raise UserError(f"{where}: `{field}` must be a string or null")
        prompt, system, reference = record["prompt"].strip(), record.get("system"), record.get("reference")
        requests.append(PromptRequest(prompt, system, reference, where))
    return requests


def read_prompts(path: Path) -> list[PromptRequest]:
    """The prompts of a `.jsonl` file or of a plain text file; a missing or empty file is an error."""
    if not path.is_file():
        raise UserError(f"prompts file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"prompts file {path} is not UTF-8 text") from None
    parse = parse_prompt_jsonl if path.suffix == ".jsonl" else parse_prompt_lines
    requests = parse(text, str(path))
    if not requests:
        raise UserError(f"prompts file {path} holds no prompts")
    return requests
