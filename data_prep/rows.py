"""One example at a time: a source's record to a rendered training row, and the checks on that row alone.

This is what the curation workers run, so it imports neither transformers nor datasets: a worker holds
lxml, pyarrow and the tokenizer's Rust backend, nothing more.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import takewhile
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa
from tokenizers import Tokenizer

from core.errors import UserError
from core.prompts import (
    ChatFormat,
    Llama2Format,
    Rendered,
    TrainingRow,
    controls_in,
    conversation_row,
)
from core.tokens import (
    WordCounts,
    added_in_front,
    encode_batch,
    splits_between_words,
    start_of,
    text_and_controls,
)
from data_prep.html import html_to_markdown
from data_prep.rules import EMPTY, NO_CODE_BLOCK, TOO_LONG

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
        # [start, end] in the prompt of each earlier answer of a conversation and its closing token, in the
        # loss as the completion is (core/prompts.py: conversation_row); none in a single-turn row
        ("earlier_answers", pa.list_(pa.list_(pa.int32()))),
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
    """One question and its answer as a source gives them: HTML for Stack Overflow, plain text for Alpaca;
    the last turn of a conversation, with the turns before it; or a plain-text document (the answer, with no
    question). A named tuple: it crosses to the workers three times faster than a dataclass."""

    source: str
    source_id: str
    question: str
    answer: str
    title: str = ""
    html: bool = False
    question_score: int | None = None
    answer_score: int | None = None
    history: tuple[tuple[str, str], ...] = ()  # a conversation's earlier (user, answer) turns
    system: str | None = None  # a conversation's own system message: it replaces data.system_prompt
    plain_text: bool = False  # a document: no prompt, every token in the loss


@dataclass(frozen=True)
class RowSettings:
    system_prompt: str | None
    require_code_block: bool
    chat: ChatFormat
    max_length: int = 512
    drop_too_long: bool = True  # data.too_long: drop (else a conversation keeps its first turn, truncated)
    count_rows: bool = False  # count each row's tokens up to max_length as it is rendered (TokenCounter)


@dataclass
class PreparedBatch:
    """A batch of rendered rows and, row by row, what the rules need: the one-row rule each breaks (or
    None) and the question's digest."""

    rows: pa.RecordBatch
    failed_rules: list[str | None]
    question_keys: list[bytes]
    turns_cut: int = 0  # later turns of conversations left out to fit train.max_length
    spells_special: list[bool] | None = None  # per row (given a TokenCounter): spells_special_token
    tokens: list[int] | None = None  # per row, with RowSettings.count_rows: tokens, exact up to max_length


def has_code_block(markdown: str) -> bool:
    """True when the text holds a real fenced code block with something in it, not just a word like `for`."""
    return any(match["code"].strip() for match in _FENCED_BLOCK.finditer(markdown))


def normalized_question(text: str) -> str:
    """Whitespace runs collapsed and case folded: what "the same question" means for deduplication."""
    return " ".join(text.split()).casefold()


def question_key(text: str) -> bytes:
    """A 128-bit digest of the normalized question: equal texts, equal keys; holding 16 bytes per row."""
    return hashlib.blake2b(normalized_question(text).encode(), digest_size=16).digest()


def example_key(example: Example, user: str) -> bytes:
    """What "the same example" means for deduplication: the question; for a conversation, all of it (two
    conversations may open alike and go apart); for a document, its text."""
    if example.plain_text:
        return question_key(example.answer)
    if example.history:
        turns = [example.system or "", *(text for turn in example.history for text in turn), user]
        return question_key("\x1f".join([*turns, example.answer]))
    return question_key(user)


def user_and_answer(example: Example) -> tuple[str, str]:
    """The user message (for Stack Overflow the title, a blank line, the converted body) and the answer; a
    document is all answer, exactly as written."""
    if example.plain_text:
        return "", example.answer
    if not example.html:
        return example.question.strip(), example.answer.strip()
    body = html_to_markdown(example.question)
    return f"{example.title}\n\n{body}".strip(), html_to_markdown(example.answer)


def failed_rule(user: str, answer: str, settings: RowSettings, plain_text: bool = False) -> str | None:
    """The first one-row rule the example breaks, in the order they are applied, or None. A document has
    only the first; a conversation's code-block rule looks at its last answer."""
    if plain_text:
        return None if answer.strip() else EMPTY
    if not user or not answer:
        return EMPTY
    if settings.require_code_block and not has_code_block(answer):
        return NO_CODE_BLOCK
    return None


def training_row_of(example: Example, user: str, answer: str, settings: RowSettings) -> TrainingRow:
    """The example in the run's format: a document as it is; a question, or a conversation's turns."""
    if example.plain_text:
        return TrainingRow(Rendered(""), Rendered(answer))
    system = settings.system_prompt if example.system is None else example.system
    return conversation_row(settings.chat, system, [*example.history, (user, answer)])


def turns_that_fit(row: TrainingRow, settings: RowSettings, count_tokens: TokenCounter) -> int:
    """How many of a conversation's first turns make a row of at most train.max_length tokens (0: not even
    the first). The row of the first k turns is the whole row's text up to the k-th answer's closing token,
    which ends a piece the tokenizer encodes on its own, so one count per turn of the whole row's prefixes."""
    whole = row.prompt + row.completion
    ends = [end - len(settings.chat.end_of_answer) for _, end in row.earlier_answers] + [len(whole.text)]
    counts = count_tokens([whole.sliced(0, end) for end in ends])
    return sum(1 for _ in takewhile(lambda count: count <= settings.max_length, counts))


def render_row(
    example: Example, user: str, answer: str, settings: RowSettings, count_tokens: TokenCounter | None
) -> tuple[dict[str, Any] | None, int]:
    """The row's columns and how many later turns were cut to fit train.max_length (none without
    `count_tokens`); no row for a conversation whose first turn alone is too long, under
    `data.too_long: drop`."""
    row = training_row_of(example, user, answer, settings)
    turns = [*example.history, (user, answer)]
    measured = row.earlier_answers and count_tokens is not None
    kept = turns_that_fit(row, settings, count_tokens) if measured else len(turns)
    if kept == 0 and settings.drop_too_long:
        return None, 0
    if kept < len(turns):
        kept = max(kept, 1)
        *history, (user, answer) = turns[:kept]
        row = training_row_of(example._replace(history=tuple(history)), user, answer, settings)
    return row_columns(example, row), len(turns) - kept


def training_text(columns: dict[str, Any]) -> Rendered:
    """A row's prompt + completion, with the control tokens its format wrote."""
    return Rendered(columns["prompt"] + columns["completion"], tuple(map(tuple, columns["controls"])))


def row_columns(example: Example, row: TrainingRow) -> dict[str, Any]:
    prompt, completion = row.prompt, row.completion
    return {
        "prompt": prompt.text,
        "completion": completion.text,
        "controls": [list(span) for span in (prompt + completion).controls],
        "earlier_answers": [list(span) for span in row.earlier_answers],
        "source": example.source,
        "source_id": example.source_id,
        "question_score": example.question_score,
        "answer_score": example.answer_score,
    }


# TokenCounter.up_to counts a long text's start first, of this many times the characters per token of the
# starts it counted last: long enough to be over the limit for most rows that are, short enough to save work.
START_MARGIN = 1.25


class TokenCounter:
    """Tokens of training sequences (BOS, prompt, completion, then the EOS the trainer appends), counted
    by the run's fast tokenizer's Rust backend as training encodes them (core/tokens.py). It pickles as
    the backend's JSON, so a worker needs only the `tokenizers` library."""

    def __init__(self, backend: Tokenizer) -> None:
        self._backend = backend
        decoder = backend.get_added_tokens_decoder().values()
        self.special_tokens = [token.content for token in decoder if token.special]
        self._starts_count_less = splits_between_words(backend)
        self._characters_per_token = 4.0  # until the first starts are counted (2 to 4 in practice)
        self._word_counts = WordCounts(backend) if self._starts_count_less else None
        self._front = len(added_in_front(backend))

    def __call__(self, texts: Sequence[Rendered | str]) -> list[int]:
        """Counted by words where the tokenizer allows it (WordCounts), else by the tokenizer."""
        if self._word_counts is None:
            return [len(ids) + 1 for ids in encode_batch(self._backend, texts)]
        count = self._word_counts
        return [
            self._front + 1 + sum(1 if control else count(part) for part, control in text_and_controls(text))
            for text in texts
        ]

    def up_to(self, texts: list[Rendered], limit: int) -> list[int]:
        """The counts of __call__ for the texts of at most `limit` tokens; a longer text may get the count of
        its start only, over `limit` too: what the length rule needs. Where the tokenizer allows it
        (core.tokens.splits_between_words), a long text's start is counted first, and the rest only when the
        start fits: most of a long row is never encoded."""
        if not self._starts_count_less:
            return self(texts)
        reach = int(START_MARGIN * self._characters_per_token * limit)
        starts = [start_of(text, reach) for text in texts]
        counts = self(starts)
        if sum(counts):
            self._characters_per_token = sum(len(start.text) for start in starts) / sum(counts)
        again = [i for i, count in enumerate(counts) if count <= limit and starts[i] is not texts[i]]
        for i, count in zip(again, self([texts[i] for i in again]), strict=True):
            counts[i] = count
        return counts

    def spells_special_token(self, text: Rendered) -> bool:
        """Whether the text holds a special token's text outside its format's own control tokens: text that
        a plain tokenizer call would have turned into control ids, kept as text here."""
        if not any(token in text.text for token in self.special_tokens):  # most texts: no regular expression
            return False
        return bool(set(controls_in(text.text, self.special_tokens).controls) - set(text.controls))

    def __getstate__(self) -> str:
        return self._backend.to_str()

    def __setstate__(self, spec: str) -> None:
        self.__init__(Tokenizer.from_str(spec))


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


def prepare_batch(
    examples: list[Example], settings: RowSettings, count_tokens: TokenCounter | None = None
) -> PreparedBatch:
    """Examples converted and rendered, with what the rules need to know of each: a conversation is cut
    after its last turn that fits train.max_length (never inside an answer). With a TokenCounter, whether
    each row spells a special token, and with `settings.count_rows` its tokens."""
    columns: dict[str, list] = {name: [] for name in ROW_SCHEMA.names}
    failed_rules, question_keys, turns_cut, texts = [], [], 0, []
    for example in examples:
        user, answer = user_and_answer(example)
        rule = failed_rule(user, answer, settings, example.plain_text)
        row, cut = (None, 0) if rule else render_row(example, user, answer, settings, count_tokens)
        if row is None:
            rule = rule or TOO_LONG
            row = row_columns(example, TrainingRow(Rendered(""), Rendered("")))
        turns_cut += cut
        texts.append(training_text(row))
        for name, value in row.items():
            columns[name].append(value)
        failed_rules.append(rule)
        question_keys.append(example_key(example, user))
    batch = pa.RecordBatch.from_pydict(columns, schema=ROW_SCHEMA)
    if count_tokens is None:
        return PreparedBatch(batch, failed_rules, question_keys, turns_cut)
    spelled = [count_tokens.spells_special_token(text) for text in texts]
    tokens = count_tokens.up_to(texts, settings.max_length) if settings.count_rows else None
    return PreparedBatch(batch, failed_rules, question_keys, turns_cut, spelled, tokens)
