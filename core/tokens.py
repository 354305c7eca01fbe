"""Where text becomes token ids, for every stage: curation's length count, training's rows, the ids infer,
chat, compare and eval send, the merge's and export's checks, and `make inspect`.

Text is always text. A tokenizer turns the text `</s>` (or `<|eot_id|>`, `<s>`) into the control token
wherever it occurs; SentencePiece, which Meta's reference code encodes with, never does. Here only the
spans a format marked as its own (core/prompts.py's Rendered) become control ids; everything else is
encoded with special-token matching off, and the tokenizer adds its BOS in front as usual. Encoding in
segments between controls is what the tokenizer itself does around a special token, so text without such
characters gets exactly the ids a plain call gives (tests check it on three tokenizers).

It needs only the `tokenizers` backend (a transformers fast tokenizer's `backend_tokenizer`), so curation's
workers use it without transformers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from tokenizers import Tokenizer

from core.prompts import Rendered, as_rendered


def backend_of(tokenizer: Any) -> Tokenizer:
    """The `tokenizers` backend of a transformers tokenizer, or the backend itself."""
    return tokenizer if isinstance(tokenizer, Tokenizer) else tokenizer.backend_tokenizer


def added_in_front(backend: Tokenizer) -> list[int]:
    """What the tokenizer puts before the text when it adds special tokens: [BOS], or nothing."""
    with_specials = backend.encode("a", add_special_tokens=True).ids
    text_only = backend.encode("a", add_special_tokens=False).ids
    for start in range(len(with_specials) - len(text_only) + 1):
        if with_specials[start : start + len(text_only)] == text_only:
            return with_specials[:start]
    return []


def encode_batch(
    tokenizer: Any, items: Sequence[Rendered | str], add_special_tokens: bool = True
) -> list[list[int]]:
    """The ids of each item: its text encoded as text, its control spans as their ids, the tokenizer's BOS
    in front (with add_special_tokens). A plain string is text only."""
    backend = backend_of(tokenizer)
    segments: list[str] = []
    plans: list[list[int | str]] = []  # per item: an index into segments, or a control token's text
    for item in items:
        plan: list[int | str] = []
        for piece, is_control in text_and_controls(item):
            if is_control:
                plan.append(piece)
            else:
                plan.append(len(segments))
                segments.append(piece)
        plans.append(plan)
    matching = backend.encode_special_tokens
    backend.encode_special_tokens = True  # the text's `</s>` is three pieces of text
    try:
        encoded = [e.ids for e in backend.encode_batch_fast(segments, add_special_tokens=False)]
    finally:
        backend.encode_special_tokens = matching
    front = added_in_front(backend) if add_special_tokens else []
    return [
        front
        + [
            i
            for step in plan
            for i in (encoded[step] if isinstance(step, int) else [control_id(backend, step)])
        ]
        for plan in plans
    ]


def text_and_controls(item: Rendered | str) -> Iterator[tuple[str, bool]]:
    """The item in order as runs of text (False) and control tokens (True), none empty; a string is text."""
    item = as_rendered(item)
    position = 0
    for start, end in [*item.controls, (len(item.text), len(item.text))]:
        if start > position:
            yield item.text[position:start], False
        if end > start:
            yield item.text[start:end], True
        position = end


def encode(tokenizer: Any, item: Rendered | str, add_special_tokens: bool = True) -> list[int]:
    return encode_batch(tokenizer, [item], add_special_tokens)[0]


def control_id(backend: Tokenizer, token: str) -> int:
    token_id = backend.token_to_id(token)
    if token_id is None:
        raise ValueError(f"the format wrote {token!r}, which is not a token of this tokenizer")
    return token_id


WORD_MARK = "\u2581"  # SentencePiece's ▁: a space, once normalized


def splits_between_words(backend: Tokenizer) -> bool:
    """Whether the ids of a text cut where a space follows another character are the ids of its two parts
    side by side, so that the count of a text's start is at most the count of the whole: true of a
    SentencePiece-style BPE (spaces become ▁, the text one piece before the model, as Meta's Llama-2 and the
    embedded base's tokenizers) none of whose vocabulary or added tokens holds a ▁ after another character,
    for then no merge joins the two sides of such a cut."""
    import json

    spec = json.loads(backend.to_str())
    model, pre_tokenizer = spec["model"], spec.get("pre_tokenizer")
    if model.get("type") != "BPE" or model.get("dropout"):
        return False
    one_piece = pre_tokenizer is None or (
        pre_tokenizer.get("type") == "Metaspace" and pre_tokenizer.get("split") is False
    )
    spaces_become_marks = WORD_MARK in json.dumps(spec.get("normalizer"), ensure_ascii=False) or (
        pre_tokenizer is not None
    )
    pieces = [*model["vocab"], *(token["content"] for token in spec.get("added_tokens", []))]
    joins_words = any(WORD_MARK in piece.lstrip(WORD_MARK) or " " in piece for piece in pieces)
    return one_piece and spaces_become_marks and not joins_words


def start_of(item: Rendered, characters: int) -> Rendered:
    """The item's text up to its last cut within `characters` where a space follows another character (and no
    control token is cut), or the whole item when it is that short or has no such cut."""
    text = item.text
    if len(text) <= characters:
        return item
    cut = characters
    while (cut := text.rfind(" ", 0, cut)) > 0:
        inside_control = any(start < cut < end for start, end in item.controls)
        if text[cut - 1] not in (" ", WORD_MARK) and not inside_control:
            return item.sliced(0, cut)
    return item


CUT = "\0"  # marks where words_of cuts a text


def words_of(text: str) -> list[str] | None:
    """The text cut before each space that follows another character (not a space or a ▁): the cuts no
    merge crosses in a tokenizer that splits_between_words. None for a text holding the NUL marking them."""
    if CUT in text:
        return None
    marked = text.replace(" ", CUT + " ").replace(" " + CUT, " ").replace(WORD_MARK + CUT, WORD_MARK)
    return marked.removeprefix(CUT).split(CUT)


class WordCounts:
    """The token count of each text as encode_batch encodes it (`add_special_tokens=False`), by words, for a
    tokenizer that splits_between_words: the ids of a text are its first word's then each later word's, so
    the count is a sum over its words, each encoded once and remembered. Words recur from row to row: 8,000
    curated rows took 1.2 s with no word known, 0.4 s with all known, and the tokenizer 4.1 s (it gets each
    text as one piece). A later word is counted after `a` (a cut), less the count of `a`."""

    CAPACITY = 1 << 19  # words remembered, per kind; then forgotten all at once (about 70 MB of strings)

    def __init__(self, backend: Tokenizer) -> None:
        self._backend = backend
        self._first: dict[str, int] = {}  # a text's first word: encoded as the text's start
        self._later: dict[str, int] = {}  # a later word, space first: encoded after another word
        self._a = self._encoded(["a"])[0]

    def __call__(self, text: str) -> int:
        words = words_of(text)
        if words is None:
            return self._encoded([text])[0]
        first, later = words[0], words[1:]
        try:
            return self._first[first] + sum(map(self._later.__getitem__, later))
        except KeyError:
            self._learn(first, later)
            return self._first[first] + sum(map(self._later.__getitem__, later))

    def _learn(self, first: str, later: list[str]) -> None:
        if len(self._first) >= self.CAPACITY or len(self._later) >= self.CAPACITY:
            self._first.clear()
            self._later.clear()
        if first not in self._first:
            self._first[first] = self._encoded([first])[0]
        new = [word for word in set(later) if word not in self._later]
        for word, count in zip(new, self._encoded(["a" + word for word in new]), strict=True):
            self._later[word] = count - self._a

    def _encoded(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in encode_batch(self._backend, texts, add_special_tokens=False)]
