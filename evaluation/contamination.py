"""Whether texts we test on already occur in the training data: the longest run of shared n-grams.

Texts are compared as normalized tokens: lowercased words (runs of letters, digits and `_`), so that
spacing, indentation, punctuation and case do not hide a copy, and runs of brackets and commas such as
`[1, 2, 3]` do not count as text (the GPT-3 study compared words too). A probe (an evaluation problem, a
validation row) overlaps the training data when one of its n-grams (13 by default, as in the GPT-3 and
Llama 2 contamination studies) occurs in a training row; the report gives the longest such run, in
tokens, and the row.

Only the probes are indexed; the training rows are streamed past the index, so memory follows the
number of probes (hundreds), not the size of the training split (millions of rows).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TOKEN = re.compile(r"\w+")
DEFAULT_NGRAM = 13


def normalized_tokens(text: str) -> list[str]:
    """Lowercased words; whitespace and punctuation dropped."""
    return TOKEN.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


@dataclass(frozen=True)
class Overlap:
    probe: int  # index of the probe text
    row: int  # index of the training row it overlaps most
    tokens: int  # length of the longest shared run of normalized tokens (at least n)
    text: str  # that run, as normalized tokens joined by spaces


def longest_runs(probe_positions: Iterable[int], n: int) -> tuple[int, int]:
    """The longest run of consecutive n-gram start positions: (first position, tokens it spans)."""
    best_start, best_length, start, previous = -1, 0, -1, -2
    for position in sorted(set(probe_positions)):
        start = position if position != previous + 1 else start
        previous = position
        if position - start + n > best_length:
            best_start, best_length = start, position - start + n
    return best_start, best_length


def find_overlaps(probes: Sequence[str], training: Iterable[str], n: int = DEFAULT_NGRAM) -> list[Overlap]:
    """For each probe that shares an n-gram with a training row, its longest shared run and that row.

    A run is a stretch of the probe whose consecutive n-grams all occur in the same training row (they may
    sit apart there, so the run's length is an upper bound of the longest verbatim copy; every n-gram in it
    is a verbatim copy of at least n tokens).
    """
    probe_tokens = [normalized_tokens(text) for text in probes]
    index: dict[tuple[str, ...], list[tuple[int, int]]] = defaultdict(list)
    for probe, tokens in enumerate(probe_tokens):
        for position, gram in enumerate(ngrams(tokens, n)):
            index[gram].append((probe, position))
    best: dict[int, Overlap] = {}
    for row, text in enumerate(training):
        hits: dict[int, list[int]] = defaultdict(list)
        for gram in set(ngrams(normalized_tokens(text), n)):
            for probe, position in index.get(gram, ()):
                hits[probe].append(position)
        for probe, positions in hits.items():
            start, length = longest_runs(positions, n)
            if probe not in best or length > best[probe].tokens:
                run = " ".join(probe_tokens[probe][start : start + length])
                best[probe] = Overlap(probe, row, length, run)
    return [best[probe] for probe in sorted(best)]
