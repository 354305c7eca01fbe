"""Whether texts we test on already occur in the training data: the longest run of shared n-grams.

Texts are compared as normalized tokens: lowercased words (runs of letters, digits and `_`), so that
spacing, indentation, punctuation and case do not hide a copy, and runs of brackets and commas such as
`[1, 2, 3]` do not count as text (the GPT-3 study compared words too). A probe (an evaluation problem, a
validation row) overlaps the training data when one of its n-grams (13 by default, as in the GPT-3 and
Llama 2 contamination studies) occurs in a training row; the report gives the longest such run, in
tokens, and the row.

Only the probes are indexed; the training rows stream past the index in chunks, so memory follows the
number of probes and the chunk, not the size of the training split (millions of rows). A chunk is
compared in numpy: each word becomes the id the probes gave it (0 when no probe has it: an n-gram with
such a word can match nothing), each n-gram a 64-bit hash of its ids, and only the n-grams whose hash a
probe n-gram has are compared token by token, so that a hash collision never makes an overlap.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import chain, islice, repeat

import numpy as np

TOKEN = re.compile(r"\w+")
NON_WORD = bytes(c for c in range(128) if not (chr(c).isalnum() or chr(c) == "_"))  # in ASCII
ASCII_WORDS = bytes.maketrans(NON_WORD, b" " * len(NON_WORD))
NON_ASCII_NON_WORD = re.compile(r"[^\w\x00-\x7f]+")
DEFAULT_NGRAM = 13
CHUNK_ROWS = 5_000  # training rows compared at once: ~1.5M tokens; with 2,000 probes, a peak under 200 MB
UNKNOWN = 0  # the id of a word no probe has
SEPARATOR = -1  # stands before each row's ids: no n-gram holding it is compared, so none spans two rows
MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # of the polynomial hash of an n-gram's ids, modulo 2**64
FILTER_BITS = 24  # a 16 MB table: a few percent of it set by a few hundred thousand probe n-grams


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


def _words(text: str) -> list[bytes]:
    """normalized_tokens(text) in UTF-8, 1.5 to 4 times faster: a regular expression blanks the non-ASCII
    characters that are in no word (most texts have none), bytes.translate the ASCII ones, and split
    cuts at the blanks (no byte of a non-ASCII character in UTF-8 is ASCII whitespace)."""
    text = text.lower()
    if not text.isascii():
        text = NON_ASCII_NON_WORD.sub(" ", text)
    return text.encode().translate(ASCII_WORDS).split()


def _ids(word_lists: Iterable[list[bytes]], vocabulary: dict[bytes, int]) -> tuple[np.ndarray, np.ndarray]:
    """The lists' word ids end to end, each list after a SEPARATOR (the id of b"", which is no word), and
    where each list's first word is. A list is dropped as soon as its ids are taken."""
    words = chain.from_iterable(chain((b"",), tokens) for tokens in word_lists)
    ids = np.fromiter(map(vocabulary.get, words, repeat(UNKNOWN)), np.int64)
    return ids, np.flatnonzero(ids == SEPARATOR) + 1


def _ngram_hashes(ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The hash of every n-gram of `ids`, by start, and the starts of the n-grams that lie in one list and
    hold no UNKNOWN."""
    count = max(len(ids) - n + 1, 0)
    values = ids.view(np.uint64)
    hashes = values[:count].copy()
    for offset in range(1, n):
        hashes *= MULTIPLIER  # wraps modulo 2**64, as meant
        hashes += values[offset : offset + count]
    gaps = np.concatenate(([0], np.cumsum(ids <= UNKNOWN, dtype=np.int32)))
    return hashes, np.flatnonzero(gaps[n:] == gaps[:count])


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """range(start, start + count) for each pair, end to end."""
    ends = np.cumsum(counts)
    return np.repeat(starts - ends + counts, counts) + np.arange(ends[-1] if len(ends) else 0)


def _distinct(values: np.ndarray) -> np.ndarray:
    """The values sorted, once each (np.unique, faster on millions of integers)."""
    values = np.sort(values)
    return values[np.diff(values, prepend=values[:1] - 1) != 0]


@dataclass
class _Index:
    """The probes' n-grams as grams (a gram: one n-gram, one hash) in the order of their hashes, and where
    each gram occurs in the probes.

    The occurrences of a gram in a chunk's row are numbered (probe * chunk_rows + row) * width + position:
    sorted, those of one probe in one row come together, by position, and a run of consecutive positions
    is a run of consecutive numbers (`width` leaves a gap between two probes or rows)."""

    vocabulary: dict[bytes, int]  # every probe word's id (from 1), in UTF-8, and b"" -> SEPARATOR
    seen: np.ndarray  # (2**FILTER_BITS,): whether a gram's hash has these top bits; drops most misses cheaply
    hashes: np.ndarray  # the grams' distinct hashes, sorted
    grams_of: np.ndarray  # (hashes + 1,): the grams of hashes[h] are grams_of[h] : grams_of[h + 1]
    columns: np.ndarray  # (n, grams): the ids of each gram, one row per offset (compared offset by offset)
    first: np.ndarray  # (grams + 1,): gram g occurs at first[g] : first[g + 1] of `occurs`
    occurs: np.ndarray  # the numbers of the occurrences, gram by gram, in a row 0
    chunk_rows: int
    width: int  # more than any probe's last n-gram position + 1

    @classmethod
    def of(cls, words: list[list[bytes]], n: int, chunk_rows: int) -> _Index:
        vocabulary = {b"": SEPARATOR}
        for word in chain.from_iterable(words):
            vocabulary.setdefault(word, len(vocabulary))
        ids, starts = _ids(words, vocabulary)
        hashes, at = _ngram_hashes(ids, n)
        at = at[np.argsort(hashes[at])]
        hashes = hashes[at]
        # A gram is a run of occurrences of one hash and one n-gram. Should two n-grams share a hash and
        # sort in turns, an n-gram is several grams, each with some of its occurrences, which is as good.
        new = np.ones(len(at), bool)
        new[1:] = hashes[1:] != hashes[:-1]
        again = np.flatnonzero(~new)  # the hash of the occurrence before: the same n-gram, or a collision
        for offset in range(n):
            new[again] |= ids[at[again] + offset] != ids[at[again - 1] + offset]
        first = np.append(np.flatnonzero(new), len(at))
        hashes = hashes[first[:-1]]
        distinct = _distinct(hashes)
        seen = np.zeros(1 << FILTER_BITS, bool)
        seen[hashes >> np.uint64(64 - FILTER_BITS)] = True
        probes = np.searchsorted(starts, at, "right") - 1
        width = max(map(len, words), default=0) + 1
        return cls(
            vocabulary,
            seen,
            distinct,
            np.append(np.searchsorted(hashes, distinct), len(hashes)),
            ids[at[first[:-1]] + np.arange(n)[:, None]],
            first,
            probes * chunk_rows * width + at - starts[probes],  # < 2**63 unless probes hold ~10**7 tokens
            chunk_rows,
            width,
        )

    def occurrences(self, ids: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
        """The numbers, sorted, of the occurrences of each gram in the probes, in each row of `_ids` (at
        most chunk_rows) that holds the gram, once however often the row holds it."""
        hashes, at = _ngram_hashes(ids, n)
        at = at[self.seen[hashes[at] >> np.uint64(64 - FILTER_BITS)]]
        at = at[np.argsort(hashes[at])]  # searchsorted goes 4 times faster through sorted values
        found = np.minimum(np.searchsorted(self.hashes, hashes[at]), len(self.hashes) - 1)
        hit = self.hashes[found] == hashes[at]
        at, found = at[hit], found[hit]
        counts = self.grams_of[found + 1] - self.grams_of[found]
        at, grams = np.repeat(at, counts), _ranges(self.grams_of[found], counts)
        same = np.ones(len(at), bool)
        for offset, column in enumerate(self.columns):  # a different n-gram of the same hash is no match
            same &= ids[at + offset] == column[grams]
        rows = np.searchsorted(starts, at[same], "right") - 1
        gram_count = len(self.columns[0])
        rows, grams = np.divmod(_distinct(rows * gram_count + grams[same]), gram_count)
        counts = self.first[grams + 1] - self.first[grams]
        return np.sort(self.occurs[_ranges(self.first[grams], counts)] + np.repeat(rows * self.width, counts))

    def longest(self, occurrences: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
        """Each probe's longest run of consecutive positions within one row: (probe, row, start, tokens).
        Of runs as long, the one of the first row, then the first start (as `longest_runs`)."""
        starts = np.flatnonzero(np.diff(occurrences, prepend=-2) != 1)
        tokens = np.diff(np.append(starts, len(occurrences))) + n - 1
        pairs, positions = np.divmod(occurrences[starts], self.width)
        probes, rows = np.divmod(pairs, self.chunk_rows)
        # runs are in probe, row, start order: each probe's first run of its greatest length
        first = np.flatnonzero(np.diff(probes, prepend=-1))
        longest = np.repeat(np.maximum.reduceat(tokens, first), np.diff(np.append(first, len(probes))))
        best = np.flatnonzero(tokens == longest)
        best = best[np.diff(probes[best], prepend=-1) != 0]
        return probes[best], rows[best], positions[best], tokens[best]


def find_overlaps(
    probes: Sequence[str],
    training: Iterable[str],
    n: int = DEFAULT_NGRAM,
    progress: Callable[[int], object] | None = None,
) -> list[Overlap]:
    """For each probe that shares an n-gram with a training row, its longest shared run and that row (of
    rows with runs as long, the first). `progress` is called with the number of rows of each chunk done.

    A run is a stretch of the probe whose consecutive n-grams all occur in the same training row (they may
    sit apart there, so the run's length is an upper bound of the longest verbatim copy; every n-gram in it
    is a verbatim copy of at least n tokens).
    """
    probe_words = [_words(text) for text in probes]
    index = _Index.of(probe_words, n, CHUNK_ROWS)
    if not len(index.hashes):  # no probe has n tokens
        return []
    best_tokens = np.zeros(len(probes), np.int64)
    best_row, best_start = np.zeros_like(best_tokens), np.zeros_like(best_tokens)
    rows, done = iter(training), 0
    while chunk := list(islice(rows, CHUNK_ROWS)):
        ids, starts = _ids(map(_words, chunk), index.vocabulary)
        probe, row, start, tokens = index.longest(index.occurrences(ids, starts, n), n)
        row += done
        longer = tokens > best_tokens[probe]  # strictly: an earlier chunk's row wins a tie
        probe = probe[longer]
        best_tokens[probe], best_row[probe], best_start[probe] = tokens[longer], row[longer], start[longer]
        done += len(chunk)
        if progress is not None:
            progress(len(chunk))
    overlaps = []
    for probe in map(int, np.flatnonzero(best_tokens)):
        start, tokens = int(best_start[probe]), int(best_tokens[probe])
        run = b" ".join(probe_words[probe][start : start + tokens]).decode()
        overlaps.append(Overlap(probe, int(best_row[probe]), tokens, run))
    return overlaps
