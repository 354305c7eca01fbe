"""Whether texts we test on already occur in the training data: the longest run of shared n-grams.

Texts are compared as normalized tokens: lowercased words (runs of letters, digits and `_`), so that
spacing, indentation, punctuation and case do not hide a copy, and runs of brackets and commas such as
`[1, 2, 3]` do not count as text (the GPT-3 study compared words too). A probe (an evaluation problem, a
validation row) overlaps the training data when one of its n-grams (13 by default, as in the GPT-3 and
Llama 2 contamination studies) occurs in a training row; the report gives the longest such run, in
tokens, and the row.

Only the probes are indexed; the training rows stream past the index in chunks, so memory follows the
number of probes and the chunk, not the size of the training split (millions of rows). A chunk is
compared without a Python step per word (nor per text, for a chunk given as an Arrow array, but for its
texts with an uppercase letter out of ASCII): its words are cut out of one byte string by numpy, each becomes
the id the probes gave it by pyarrow's `index_in` (UNKNOWN when no probe has it: an n-gram with such a
word can match nothing), each n-gram a 64-bit hash of its ids, and only the n-grams whose hash a probe
n-gram has are compared token by token (where the n-gram before matched, its last token), so that a hash
collision never makes an overlap. The runs a row makes are found in the probes' passages (stretches of
n-grams that always occur together), once for all the probes that share a passage.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from itertools import islice

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

TOKEN = re.compile(r"\w+")
BLANK = ord(" ")
# A bytes.translate table: lowercases ASCII letters and blanks the other ASCII characters that are in no
# word; keeps the bytes of the characters out of ASCII (all 0x80 or more in UTF-8). Applied twice, the same.
ASCII_WORDS = bytes(
    c if c >= 0x80 else ord(chr(c).lower()) if TOKEN.match(chr(c)) else BLANK for c in range(256)
)
SEPARATOR_WORD = b"\0"  # stands before each text's words; no text has it (ASCII_WORDS blanks NUL)
DEFAULT_NGRAM = 13
Texts = Sequence[str] | pa.Array | pa.ChunkedArray  # an Arrow array is read with no step per text
NumberedChunk = tuple[Texts, np.ndarray]  # training rows and their numbers (ascending)
CHUNK_ROWS = 2_000  # training rows compared at once: ~600k tokens (5,000 went 10% slower, missing caches)
SEPARATOR = 0  # the id of SEPARATOR_WORD, first in the vocabulary; the probes' words have ids 1 and up
UNKNOWN = -1  # the id of a word no probe has. No n-gram holding either is compared: none spans two rows
MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # of the polynomial hash of an n-gram's ids, modulo 2**64
THREADS = 2  # chunks compared at once
SLOT_BITS = 22  # a 16 MB table of int32: a few percent of its slots taken by a few hundred thousand hashes
SHARED_SLOT = -1  # in the table: the slot of several hashes (a few percent of the taken ones)


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


def _ascii_words(text: str) -> bytes:
    """The text lowercased, in UTF-8, its ASCII characters that are in no word blanked."""
    if text.isascii():  # most are: ASCII_WORDS lowercases them, faster than str.lower
        return text.encode().translate(ASCII_WORDS)
    # str.lower: a character out of ASCII may lowercase to several (İ). errors="replace": a lone surrogate,
    # which UTF-8 cannot hold, becomes "?", blanked as it is: neither is in a word.
    return text.lower().encode(errors="replace").translate(ASCII_WORDS)


@cache
def _word_characters() -> np.ndarray:
    """Whether TOKEN takes each code point into a word (found by TOKEN itself, so that it is the same)."""
    characters = "".join(map(chr, range(0x110000)))
    word = np.zeros(len(characters), bool)
    for match in TOKEN.finditer(characters):
        word[match.start() : match.end()] = True
    return word


def _blank_non_ascii_non_words(data: np.ndarray) -> None:
    """Blanks the characters out of ASCII that are in no word, in UTF-8 `data` (most texts have none)."""
    lead = np.flatnonzero(data >= 0xC0)  # the first byte of each; the others are 0x80 to 0xBF
    size = 2 + (data[lead] >= 0xE0) + (data[lead] >= 0xF0)  # in bytes
    # The code point: the first byte's low bits, then 6 bits of each byte after it. Reading 3 bytes after
    # each, the bits of those past the character are shifted off.
    code = data[lead] & (0x7F >> size)
    for offset in (1, 2, 3):
        code = code << 6 | data.take(lead + offset, mode="clip") & 0x3F
    blank = ~_word_characters()[code >> 6 * (4 - size)]
    data[_ranges(lead[blank], size[blank])] = BLANK


def _in_utf8(texts: Texts) -> pa.Array:
    """The texts as an Arrow binary array, lowercased where ASCII_WORDS would not (`_ascii_words`). An
    Arrow array's texts are taken as they are, with no step in Python, where only their ASCII letters
    change in lowercase (all of most texts); the others are lowercased by Python, whose rules (`İ`, a final
    `Σ`) Arrow's lowercase lacks."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if not isinstance(texts, pa.Array):
        return pa.array([_ascii_words(text) for text in texts], pa.binary())
    where = np.flatnonzero(pc.invert(pc.string_is_ascii(texts)).to_numpy(zero_copy_only=False))
    if not len(where):
        return texts.cast(pa.binary())
    not_ascii = texts.take(where)  # only the texts out of ASCII are lowercased, twice, to compare
    changed = pc.not_equal(pc.utf8_lower(not_ascii), pc.ascii_lower(not_ascii))
    others = where[changed.to_numpy(zero_copy_only=False)]
    texts = texts.cast(pa.binary())
    if not len(others):
        return texts
    lowered = [_ascii_words(text.decode()) for text in texts.take(others).to_pylist()]
    mask = np.zeros(len(texts), bool)
    mask[others] = True
    return pc.replace_with_mask(texts, mask, pa.array(lowered, pa.binary()))


def _words(texts: Texts) -> pa.Array:
    """Each text's normalized tokens in UTF-8, after SEPARATOR_WORD, end to end, as the even items of the
    array; the odd ones are the blanks between them. No step is taken per word in Python: Arrow joins the
    texts into one byte string, each as SEPARATOR_WORD, a blank, the text and a blank, numpy blanks its
    non-word characters and finds where the runs of blanks start and end, which the array is cut at (it
    holds the string, not a copy)."""
    joined = pc.binary_join_element_wise(SEPARATOR_WORD, _in_utf8(texts), b"", b" ")
    _, offsets, values = joined.buffers()
    starts = np.frombuffer(offsets, np.int32, len(joined) + 1, joined.offset)
    used = memoryview(values or b"")[starts[0] : starts[-1]]
    array = np.frombuffer(bytearray(used).translate(ASCII_WORDS), np.uint8)  # faster than numpy's lookup
    array[starts[:-1] - starts[0]] = ord(SEPARATOR_WORD)  # which ASCII_WORDS blanked
    _blank_non_ascii_non_words(array)
    blank = array == BLANK
    cuts = np.flatnonzero(np.diff(blank, prepend=True, append=False))  # 0, the ends of the items
    return pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(cuts) - 1, [None, pa.py_buffer(cuts), pa.py_buffer(array)]
    )


def _ids(items: pa.Array, vocabulary: pa.Array) -> np.ndarray:
    """The ids of the words of `_words`: their index in `vocabulary`, UNKNOWN for a word not there."""
    found = pc.index_in(items, value_set=vocabulary)  # null where not found
    # The words' items read off the buffers: fill_null(UNKNOWN) takes 5 times longer, over the blanks too.
    validity, values = found.buffers()
    offset, length = found.offset, len(found)
    ids = np.frombuffer(values, np.int32, length, offset * 4)[::2].copy()
    if validity is not None:
        known = np.unpackbits(np.frombuffer(validity, np.uint8), count=offset + length, bitorder="little")
        ids[known[offset::2] == 0] = UNKNOWN
    return ids


def _texts(ids: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The text the id at each position of `at` is in."""
    return np.searchsorted(np.flatnonzero(ids == SEPARATOR), at, side="right") - 1


def _ngram_hashes(ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The hash of every n-gram of `ids` (the sum of its k-th id * MULTIPLIER**(n - 1 - k), modulo 2**64),
    by start, and whether each n-gram lies in one text and holds no UNKNOWN."""
    count = len(ids) - n + 1
    if count <= 0:
        return np.zeros(0, np.uint64), np.zeros(0, bool)
    values = hashes = ids.astype(np.uint64)  # UNKNOWN wraps to 2**64 - 1
    # The hashes of the runs of `length` ids, from 1 to n: doubled, then one id longer where n's binary
    # digit is 1, so about 2 log2(n) passes over the ids, where Horner's rule takes 2n. Products wrap.
    length = 1
    for digit in bin(n)[3:]:
        hashes = hashes[:-length] * np.uint64(pow(int(MULTIPLIER), length, 1 << 64)) + hashes[length:]
        length *= 2
        if digit == "1":
            hashes = hashes[:-1] * MULTIPLIER + values[length:]
            length += 1
    gaps = np.zeros(len(ids) + 1, np.int64)  # SEPARATORs and UNKNOWNs before each position
    gaps[1:] = ids <= SEPARATOR
    np.cumsum(gaps, out=gaps)  # of int64 into int64: cumsum holds the GIL where it casts (bool to int)
    return hashes, gaps[n:] == gaps[:count]


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """range(start, start + count) for each pair, end to end: the sum of steps of 1, but for the step from
    one range's end to the next one's start (np.repeat would hold the GIL, which the other thread needs)."""
    nonempty = counts > 0
    starts, counts = starts[nonempty], counts[nonempty].astype(np.int64)
    if not len(counts):
        return np.zeros(0, np.int64)
    ends = np.cumsum(counts)
    steps = np.ones(ends[-1], np.int64)
    steps[0] = starts[0]
    steps[ends[:-1]] = starts[1:] - starts[:-1] - counts[:-1] + 1
    return np.cumsum(steps, out=steps)


def _repeated(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """np.repeat(values, counts) (which holds the GIL): each value's index counted up by a cumulative sum."""
    nonempty = np.flatnonzero(counts)
    if not len(nonempty):
        return values[:0]
    ends = np.cumsum(counts[nonempty].astype(np.int64))
    marks = np.zeros(ends[-1], np.int64)
    marks[ends[:-1]] = 1
    return values[nonempty[np.cumsum(marks, out=marks)]]


def _distinct(values: np.ndarray) -> np.ndarray:
    """The values sorted, once each (np.unique, faster on millions of integers)."""
    values = np.sort(values)
    return values[np.diff(values, prepend=values[:1] - 1) != 0]


@dataclass
class _Index:
    """The probes' n-grams as grams (a gram: one n-gram, one hash) in the order of their hashes, and the
    passages they make up in the probes.

    A passage is a run of grams that occur in the probes only together, one after another: each of its
    grams but the first is preceded by the one before it, wherever it occurs, and that one always followed
    by it (a gram with several neighbours ends a passage). Every occurrence of a passage is then the same
    grams in the same order, so a training row holds the same parts of each: the row's runs are found in
    each passage once, then placed at its occurrences. On the full-size synthetic dump, where most hits
    are of grams several probes share, that places 7 times fewer runs than there are grams to place.

    An occurrence in a chunk's row is numbered (probe * chunk_rows + row) * width + position: sorted, those
    of one probe in one row come together, by position, and a run of consecutive positions is a run of
    consecutive numbers (`width` leaves a gap between two probes or rows)."""

    vocabulary: pa.Array  # the probes' words in UTF-8, sorted, each at its id: SEPARATOR_WORD first
    words: pa.Array  # the probes' words, each probe's after SEPARATOR_WORD
    starts: np.ndarray  # where each probe's first word is in `words`
    hashes: np.ndarray  # the grams' distinct hashes, sorted
    # (2**SLOT_BITS,): by the top bits of a hash, 0 when no hash has them, i + 1 when hashes[i] alone has
    # them, SHARED_SLOT when several do: most hashes are found, and most misses dropped, with one lookup
    slots: np.ndarray
    grams_of: np.ndarray  # (hashes + 1,): the grams of hashes[h] are grams_of[h] : grams_of[h + 1]
    columns: np.ndarray  # (n, grams): the ids of each gram, one row per offset (compared offset by offset)
    passage_of: np.ndarray  # (grams,): the passage each gram is in
    place: np.ndarray  # (grams,): its place in the passage, from 0
    passage_span: int  # more than any passage's grams
    first: np.ndarray  # (passages + 1,): passage p occurs at first[p] : first[p + 1] of `occurs`
    occurs: np.ndarray  # the numbers of the passages' occurrences (of their first gram), in a row 0
    chunk_rows: int
    width: int  # more than any probe's last n-gram position + 1

    @classmethod
    def of(cls, items: pa.Array, n: int, chunk_rows: int) -> _Index:
        """The index of the probes' `_words`."""
        words = items.take(np.arange(0, len(items), 2))
        # Sorted, SEPARATOR_WORD (b"\0") comes first: every other word begins with a greater byte.
        vocabulary = pc.unique(words).sort()
        ids = _ids(items, vocabulary)
        starts = np.flatnonzero(ids == SEPARATOR) + 1
        hashes, whole = _ngram_hashes(ids, n)
        at = np.flatnonzero(whole)
        at = at[np.argsort(hashes[at])]
        hashes = hashes[at]
        # A gram is a run of occurrences of one hash and one n-gram. Should two n-grams share a hash and
        # sort in turns, an n-gram is several grams, each with some of its occurrences, which is as good.
        new = np.ones(len(at), bool)
        new[1:] = hashes[1:] != hashes[:-1]
        again = np.flatnonzero(~new)  # the hash of the occurrence before: the same n-gram, or a collision
        differ, this, before = np.zeros(len(again), bool), at[again], at[again - 1]
        for offset in range(n):
            differ |= ids[offset:][this] != ids[offset:][before]
        new[again] = differ
        first = np.append(np.flatnonzero(new), len(at))
        hashes = hashes[first[:-1]]
        distinct = _distinct(hashes)
        taken, index, hashes_in_slot = np.unique(
            distinct >> np.uint64(64 - SLOT_BITS), return_index=True, return_counts=True
        )
        slots = np.zeros(1 << SLOT_BITS, np.int32)
        slots[taken] = np.where(hashes_in_slot == 1, index + 1, SHARED_SLOT)
        gram_at = np.full(len(ids) + 1, -1)  # the gram at each position; -1 where none, and at -1
        gram_at[at] = np.cumsum(new) - 1
        passage_of, place, heads = _passages(gram_at, at, first)
        head_of = passage_of[gram_at[heads]]
        order = np.lexsort((heads, head_of))  # by passage, then position
        heads, head_of = heads[order], head_of[order]
        probes = _texts(ids, heads)
        width = int(np.diff(starts, append=len(ids) + 1).max(initial=1))  # a probe's words + 1
        return cls(
            vocabulary,
            words,
            starts,
            distinct,
            slots,
            np.append(np.searchsorted(hashes, distinct), len(hashes)),
            ids[at[first[:-1]] + np.arange(n)[:, None]],
            passage_of,
            place,
            int(place.max(initial=0)) + 2,
            np.searchsorted(head_of, np.arange(passage_of.max(initial=-1) + 2)),
            probes * chunk_rows * width + heads - starts[probes],  # < 2**63 unless probes hold ~10**7 tokens
            chunk_rows,
            width,
        )

    def runs(self, ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The runs of probe positions whose grams all occur in one row of `_ids` (at most chunk_rows), as
        the numbers of their first positions, sorted, and their lengths in tokens."""
        hashes, whole = _ngram_hashes(ids, n)
        slots = self.slots[hashes >> np.uint64(64 - SLOT_BITS)]
        at = np.flatnonzero(whole & (slots != 0))
        slots = slots[at]
        found = slots - 1  # the index of the hash alone in its slot
        shared = np.flatnonzero(slots == SHARED_SLOT)
        shared = shared[np.argsort(hashes[at[shared]])]  # searchsorted goes 4 times faster through sorted
        searched = np.searchsorted(self.hashes, hashes[at[shared]])
        found[shared] = np.minimum(searched, len(self.hashes) - 1)
        hit = self.hashes[found] == hashes[at]
        at, grams = at[hit], found[hit]
        if len(self.hashes) < len(self.place):  # two grams share a hash: a hash's index is not its gram's
            counts = self.grams_of[grams + 1] - self.grams_of[grams]
            at, grams = _repeated(at, counts), _ranges(self.grams_of[grams], counts)
        passages, places = self.passage_of[grams], self.place[grams]
        # A hit at the next position of the row, of the next gram of a passage, shares n - 1 ids with the
        # hit before it: where that one is its n-gram, its last id alone tells whether this one is too
        follows = np.zeros(len(at), bool)
        follows[1:] = (np.diff(at) == 1) & (np.diff(places) == 1) & (passages[1:] == passages[:-1])
        begins = np.flatnonzero(~follows)
        if not (
            self._same(ids, at[begins], grams[begins]).all()
            and np.array_equal(ids[at[follows] + n - 1], self.columns[-1][grams[follows]])
        ):  # a hash of another n-gram (hardly ever): each hit compared in full, and a stretch of its own
            same = self._same(ids, at, grams)
            at, passages, places = at[same], passages[same], places[same]
            begins = np.arange(len(at))
        lengths = np.diff(np.append(begins, len(at)))  # of each stretch of hits that follow one another
        # Each stretch as the span of numbers (row, passage, place) it holds: sorted, those that overlap or
        # meet make one run of places in a passage (passage_span leaves a gap between passages)
        rows, count = _texts(ids, at[begins]), len(self.first) - 1
        low = (rows * count + passages[begins]) * self.passage_span + places[begins]
        order = np.argsort(low)
        low, high = low[order], (low + lengths - 1)[order]
        begins = np.flatnonzero(low > np.append(-2, np.maximum.accumulate(high)[:-1]) + 1)
        grams = np.maximum.reduceat(high, begins) - low[begins] + 1
        pairs, places = np.divmod(low[begins], self.passage_span)
        rows, passages = np.divmod(pairs, count)
        # Each run placed at every occurrence of its passage
        counts = self.first[passages + 1] - self.first[passages]
        at = self.occurs[_ranges(self.first[passages], counts)]
        at += _repeated(rows * self.width + places, counts)
        order = np.argsort(at)
        at, grams = at[order], _repeated(grams, counts)[order]
        # Runs that meet in a probe (of passages one after another there) are one
        begins = np.flatnonzero(np.diff(at, prepend=-2) != np.append(1, grams[:-1]))
        return at[begins], np.add.reduceat(grams, begins) + n - 1

    def _same(self, ids: np.ndarray, at: np.ndarray, grams: np.ndarray) -> np.ndarray:
        """Whether the n-gram at each position `at` of `ids` is the gram's, not another of the same hash."""
        same = np.ones(len(at), bool)
        for offset, column in enumerate(self.columns):
            same &= ids[offset:][at] == column[grams]
        return same

    def longest(self, runs: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
        """Each probe's longest run within one row: (probe, row, start, tokens). Of runs as long, the one of
        the first row, then the first start (as `longest_runs`)."""
        at, tokens = runs
        pairs, positions = np.divmod(at, self.width)
        probes, rows = np.divmod(pairs, self.chunk_rows)
        # runs are in probe, row, start order: each probe's first run of its greatest length
        first = np.flatnonzero(np.diff(probes, prepend=-1))
        longest = _repeated(np.maximum.reduceat(tokens, first), np.diff(np.append(first, len(probes))))
        best = np.flatnonzero(tokens == longest)
        best = best[np.diff(probes[best], prepend=-1) != 0]
        return probes[best], rows[best], positions[best], tokens[best]


def _passages(gram_at: np.ndarray, at: np.ndarray, first: np.ndarray) -> tuple[np.ndarray, ...]:
    """The passages of the grams (see _Index): each gram's passage and place in it, and the positions
    where the passages occur. `gram_at` is the gram at each position (-1 where none, and last); `at` the
    positions of the grams, gram by gram, gram g's at first[g] : first[g + 1]."""
    grams = len(first) - 1
    neighbours = []
    for step in (-1, 1):  # the gram each gram follows, then precedes, wherever it occurs; else -1
        near = gram_at[at + step]
        lowest, highest = np.minimum.reduceat(near, first[:-1]), np.maximum.reduceat(near, first[:-1])
        neighbours.append(np.where(lowest == highest, lowest, -1))
    before, after = neighbours
    # No loop of grams can follow one another: a loop's first occurrence in a probe would follow none
    follows = before >= 0
    follows[follows] = after[before[follows]] == np.flatnonzero(follows)
    positions = np.sort(at)
    head = ~follows[gram_at[positions]]
    heads = positions[head]
    occurrence = np.cumsum(head) - 1  # of a passage, that each position is in
    passage_of, place = np.zeros(grams, np.int64), np.zeros(grams, np.int64)
    numbered = np.full(grams, -1)
    numbered[~follows] = np.arange(grams - np.count_nonzero(follows))
    passage_of[gram_at[positions]] = numbered[gram_at[heads]][occurrence]
    place[gram_at[positions]] = positions - heads[occurrence]
    return passage_of, place, heads


def pool_map_with_items(pool: ThreadPoolExecutor, function: Callable, items: Iterator) -> Iterator[tuple]:
    """(item, function(item)) in the items' order, with at most one item more in flight than threads."""
    pending: deque = deque()
    for item in items:
        pending.append((item, pool.submit(function, item)))
        if len(pending) > THREADS:
            item, result = pending.popleft()
            yield item, result.result()
    while pending:
        item, result = pending.popleft()
        yield item, result.result()


def _parts(training: Iterable[Texts | NumberedChunk]) -> Iterator[NumberedChunk]:
    """The chunks as numbered parts of at most CHUNK_ROWS rows; a chunk of texts alone numbered on from the
    rows before it."""
    done, size = 0, CHUNK_ROWS
    for chunk in training:
        # A tuple of texts is texts too: a numbered chunk is the one whose second item is numpy's
        numbered = isinstance(chunk, tuple) and len(chunk) == 2 and isinstance(chunk[1], np.ndarray)
        texts, numbers = chunk if numbered else (chunk, np.arange(done, done + len(chunk)))
        done += len(texts)
        for start in range(0, len(texts), size):
            yield texts[start : start + size], numbers[start : start + size]


def find_overlaps(
    probes: Texts,
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
    rows = iter(training)
    return find_overlaps_in_chunks(probes, iter(lambda: list(islice(rows, CHUNK_ROWS)), []), n, progress)


def find_overlaps_in_chunks(
    probes: Texts,
    training: Iterable[Texts | NumberedChunk],
    n: int = DEFAULT_NGRAM,
    progress: Callable[[int], object] | None = None,
) -> list[Overlap]:
    """find_overlaps, the training rows given in chunks: lists of texts, or Arrow arrays of texts, which are
    read with no step per text in Python, numbered from 0 in the order given; or (texts, row numbers) pairs,
    for rows read in an order of their own (as they lie in a file), the numbers ascending within a chunk.
    Of runs as long, the lowest-numbered row's is kept. A chunk of over CHUNK_ROWS rows is compared in
    parts."""
    index = _Index.of(_words(probes), n, CHUNK_ROWS)
    if not len(index.hashes):  # no probe has n tokens
        return []
    best_tokens = np.zeros(len(probes), np.int64)
    best_row, best_start = np.zeros_like(best_tokens), np.zeros_like(best_tokens)

    def runs(chunk: NumberedChunk) -> tuple[np.ndarray, ...]:
        return index.longest(index.runs(_ids(_words(chunk[0]), index.vocabulary), n))

    # Two chunks at a time: numpy and Arrow let go of the GIL for most of the work.
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        for (texts, numbers), found in pool_map_with_items(pool, runs, _parts(training)):
            probe, row, start, tokens = found
            row = numbers[row]  # a chunk's first row of runs as long is its lowest-numbered
            best = best_tokens[probe]
            better = (tokens > best) | ((tokens == best) & (row < best_row[probe]))
            probe = probe[better]
            best_tokens[probe], best_row[probe] = tokens[better], row[better]
            best_start[probe] = start[better]
            if progress is not None:
                progress(len(texts))
    overlaps = []
    for probe in map(int, np.flatnonzero(best_tokens)):
        start, tokens = int(index.starts[probe] + best_start[probe]), int(best_tokens[probe])
        run = b" ".join(index.words[start : start + tokens].to_pylist()).decode()
        overlaps.append(Overlap(probe, int(best_row[probe]), tokens, run))
    return overlaps
