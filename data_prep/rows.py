"""One example at a time: a source's record to a rendered training row, and the checks on that row alone.

This is what the curation workers run, so it imports neither transformers nor datasets: a worker holds
lxml, pyarrow and the tokenizer's Rust backend, nothing more.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa
from tokenizers import Tokenizer

from core.errors import UserError
from core.prompts import ChatFormat, Llama2Format, Rendered, curated_row
from core.tokens import encode_batch
from data_prep.html import html_to_markdown
from data_prep.rules import EMPTY, NO_CODE_BLOCK

if TYPE_CHECKING:
    from core.config import Config

ROW_SCHEMA = pa.schema(
    [
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("question_score", pa.int64()),
        ("answer_score", pa.int64()),
        # [start, end] of each control token the format wrote into prompt + completion (a chat template's
        # headers; none in Llama-2's single-turn rows): the rest is text, whatever it spells (core/tokens.py)
        ("controls", pa.list_(pa.list_(pa.int32()))),
    ]
)

# A fenced block as CommonMark writes it: a line opening with three or more backticks (or tildes), an
# optional info string, the code, and a line closing with a fence of the same character at least as long.
_FENCED_BLOCK = re.compile(
    r"^(?P<indent>[ ]*)(?P<fence>(?P<char>[`~])(?P=char){2,})[^\n`]*\n"
    r"(?P<code>(?:.*\n)*?)(?P=indent)(?P=fence)(?P=char)*[ \t]*$",
    re.MULTILINE,
)


class Example(NamedTuple):
    """One question and its answer as a source gives them: HTML for Stack Overflow, plain text for Alpaca.
    A named tuple: it crosses to the workers three times faster than a dataclass."""

    source: str
    source_id: str
    question: str
    answer: str
    title: str = ""
    html: bool = False
    question_score: int | None = None
    answer_score: int | None = None


@dataclass(frozen=True)
class RowSettings:
    system_prompt: str | None
    require_code_block: bool
    chat: ChatFormat


@dataclass
class PreparedBatch:
    """A batch of rendered rows and, row by row, what the rules need: the one-row rule each breaks (or
    None) and the question's digest."""

    rows: pa.RecordBatch
    failed_rules: list[str | None]
    question_keys: list[bytes]


def has_code_block(markdown: str) -> bool:
    """True when the text holds a real fenced code block with something in it, not just a word like `for`."""
    return any(match["code"].strip() for match in _FENCED_BLOCK.finditer(markdown))


def normalized_question(text: str) -> str:
    """Whitespace runs collapsed and case folded: what "the same question" means for deduplication."""
    return " ".join(text.split()).casefold()


def question_key(text: str) -> bytes:
    """A 128-bit digest of the normalized question: equal texts, equal keys; holding 16 bytes per row."""
    return hashlib.blake2b(normalized_question(text).encode(), digest_size=16).digest()


def user_and_answer(example: Example) -> tuple[str, str]:
    """The user message (for Stack Overflow the title, a blank line, the converted body) and the answer."""
    if not example.html:
        return example.question.strip(), example.answer.strip()
    body = html_to_markdown(example.question)
    return f"{example.title}\n\n{body}".strip(), html_to_markdown(example.answer)


def failed_rule(user: str, answer: str, settings: RowSettings) -> str | None:
    """The first one-row rule the example breaks, in the order they are applied, or None."""
    if not user or not answer:
        return EMPTY
    if settings.require_code_block and not has_code_block(answer):
        return NO_CODE_BLOCK
    return None


def render_row(example: Example, user: str, answer: str, settings: RowSettings) -> dict[str, Any]:
    prompt = settings.chat.rendered_prompt(user, settings.system_prompt)
    completion = settings.chat.rendered_completion(answer)
    return {
        "prompt": prompt.text,
        "completion": completion.text,
        "controls": [list(span) for span in (prompt + completion).controls],
        "source": example.source,
        "source_id": example.source_id,
        "question_score": example.question_score,
        "answer_score": example.answer_score,
    }


def row_text(row: dict[str, Any]) -> Rendered:
    """A curated row's prompt + completion, with the control tokens its format wrote."""
    prompt, completion = curated_row(row["prompt"], row["completion"], row.get("controls"))
    return prompt + completion


class TokenCounter:
    """Tokens of training sequences (BOS, prompt, completion, then the EOS the trainer appends), counted
    by the run's fast tokenizer's Rust backend as training encodes them (core/tokens.py). It pickles as
    the backend's JSON, so a worker needs only the `tokenizers` library."""

    def __init__(self, backend: Tokenizer) -> None:
        self._backend = backend

    def __call__(self, texts: list[Rendered]) -> list[int]:
        return [len(ids) + 1 for ids in encode_batch(self._backend, texts)]

    @property
    def special_tokens(self) -> list[str]:
        return [token.content for token in self._backend.get_added_tokens_decoder().values() if token.special]

    def __getstate__(self) -> str:
        return self._backend.to_str()

    def __setstate__(self, spec: str) -> None:
        self._backend = Tokenizer.from_str(spec)


def load_row_tokenizer(config: Config) -> tuple[TokenCounter, ChatFormat]:
    """The run's tokenizer as training loads it (core.model.load_tokenizer): its chat format, and its backend
    to count tokens with. For Meta's Llama-2 files that is `legacy: true`, which counts text after a special
    token as training does. The embedded base's tokenizer.json is exactly that backend (a test checks it)
    and its format Llama-2's, so in the default run they are had directly, sparing this process
    transformers and torch (4 s and 250 MB)."""
    from core.model import base_tokenizer, chat_format, resolve_base

    model = resolve_base(config)
    if config.model.name_or_path == "embedded" and config.data.prompt_format == "llama2":
        return TokenCounter(Tokenizer.from_file(str(Path(model) / "tokenizer.json"))), Llama2Format()
    try:
        tokenizer = base_tokenizer(config)
    except OSError as error:
        raise UserError(f"cannot load the tokenizer of {model}: {error}".replace("\n", " ")) from None
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise UserError(f"the tokenizer of {model} is not a fast tokenizer: curation needs one")
    return TokenCounter(tokenizer.backend_tokenizer), chat_format(tokenizer)


def prepare_batch(examples: list[Example], settings: RowSettings) -> PreparedBatch:
    """Examples converted and rendered, with what the rules need to know of each."""
    columns: dict[str, list] = {name: [] for name in ROW_SCHEMA.names}
    failed_rules, question_keys = [], []
    for example in examples:
        user, answer = user_and_answer(example)
        for name, value in render_row(example, user, answer, settings).items():
            columns[name].append(value)
        failed_rules.append(failed_rule(user, answer, settings))
        question_keys.append(question_key(user))
    return PreparedBatch(pa.RecordBatch.from_pydict(columns, schema=ROW_SCHEMA), failed_rules, question_keys)
