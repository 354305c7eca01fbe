"""The n-gram contamination check against the plain loop it replaced, kept here as the reference: the same
overlaps on the sample data, on hand-made cases and on random ones, and the speed that lets curation check
a training split of hundreds of thousands of rows."""

from __future__ import annotations

import csv
import json
import random
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from evaluation import contamination
from evaluation.contamination import (
    Overlap,
    find_overlaps,
    find_overlaps_in_chunks,
    longest_runs,
    ngrams,
    normalized_tokens,
)

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"


def reference_overlaps(probes: Sequence[str], training: Iterable[str], n: int = 13) -> list[Overlap]:
    """The check as it was: each training row's n-grams looked up in a dict of the probes', in Python."""
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


def in_arrow_chunks(probes: Sequence[str], training: Sequence[str], n: int = 13, size: int = 3) -> list:
    """find_overlaps given Arrow arrays, as curation gives them: the training rows in chunks of `size`, which
    are compared in parts of CHUNK_ROWS when longer. A lone surrogate, which Arrow's UTF-8 cannot hold,
    becomes the `?` it is read as."""

    def as_arrow(texts: Sequence[str]) -> pa.Array:
        return pa.array([text.replace("\ud800", "?") for text in texts], pa.string())

    chunks = [training[start : start + size] for start in range(0, len(training), size)]
    return find_overlaps_in_chunks(as_arrow(probes), map(as_arrow, chunks), n)


def in_numbered_chunks(
    probes: Sequence[str], training: Sequence[str], n: int = 13, size: int = 3, seed: int = 0
) -> list:
    """find_overlaps given the training rows as curation reads them: in an order of their own (as they lie
    in its rows file, here a seeded shuffle), in chunks of `size` with their numbers, ascending within each
    chunk; the lowest-numbered row still wins a tie."""
    order = np.random.default_rng(seed).permutation(len(training))
    chunks = []
    for start in range(0, len(order), size):
        numbers = np.sort(order[start : start + size])
        chunks.append((pa.array([training[number] for number in numbers], pa.string()), numbers))
    return find_overlaps_in_chunks(pa.array(probes, pa.string()), chunks, n)


def sample_texts() -> list[str]:
    """The sample Stack Overflow questions (title and body), answers and Alpaca records, as they come."""

    def rows(name: str) -> list[dict[str, str]]:
        with open(SAMPLES / "stackoverflow" / name, newline="", encoding="utf-8") as file:
            return list(csv.DictReader(file))

    alpaca = json.loads((SAMPLES / "alpaca.json").read_text(encoding="utf-8"))
    return [
        *(question["Title"] + "\n\n" + question["Body"] for question in rows("Questions.csv")),
        *(answer["Body"] for answer in rows("Answers.csv")),
        *(" ".join((record["instruction"], record["input"], record["output"])) for record in alpaca),
    ]


def words(first: int, last: int) -> str:
    return " ".join(f"w{i}" for i in range(first, last))


@pytest.mark.parametrize("n", [4, 8, 13])
@pytest.mark.parametrize("chunk_rows", [7, contamination.CHUNK_ROWS])
def test_the_sample_data_gives_the_reference_overlaps(n, chunk_rows, monkeypatch):
    monkeypatch.setattr(contamination, "CHUNK_ROWS", chunk_rows)
    texts = sample_texts()
    probes, training = texts[::2], texts[1::2]
    expected = reference_overlaps(probes, training, n)
    assert expected
    assert find_overlaps(probes, iter(training), n) == expected
    assert in_arrow_chunks(probes, training, n) == in_arrow_chunks(probes, training, n, 10**6) == expected
    assert in_numbered_chunks(probes, training, n, 5) == expected
    pairs = [tuple(training[start : start + 2]) for start in range(0, len(training), 2)]  # tuples of texts
    assert find_overlaps_in_chunks(probes, pairs, n) == expected


@pytest.mark.parametrize("chunk_rows", [1, 2, contamination.CHUNK_ROWS])
def test_hand_made_cases(chunk_rows, monkeypatch):
    monkeypatch.setattr(contamination, "CHUNK_ROWS", chunk_rows)
    repeated = words(100, 113)  # 13 words
    probes = [
        words(0, 40),  # 0: rows 1 (14 tokens) and 2 (16 tokens): the longer wins
        words(200, 240),  # 1: rows 3 and 4 share 15 tokens each: the earlier wins
        words(300, 324),  # 2: 24 words, only across the boundary of rows 5 and 6: no overlap
        f"{repeated} {repeated}",  # 3: row 7 holds one copy, row 8 three: the copy of both, 26 tokens
        "Café, NAÏVE “quoted” déjà-vu → x_1 " + words(400, 412),  # 4: words in and out of ASCII, row 9
    ]
    training = [
        "nothing in common",
        f"a {words(0, 14)} b",
        f"{words(10, 26)} c {words(0, 13)}",
        f"{words(210, 225)} {words(200, 212)}",
        words(220, 235),
        words(300, 312),
        words(312, 324),
        f"z {repeated} z",
        f"{repeated} {repeated} {repeated}",
        "CAFÉ café naïve quoted DÉJÀ vu x_1 " + words(400, 407),
    ]
    overlaps = find_overlaps(probes, iter(training))
    assert overlaps == reference_overlaps(probes, training) == in_arrow_chunks(probes, training)
    for seed in range(10):  # row 4 before row 3 in some: row 3 still wins the tie of probe 1
        assert in_numbered_chunks(probes, training, 13, 2, seed) == overlaps
    assert [(o.probe, o.row, o.tokens) for o in overlaps] == [(0, 2, 16), (1, 3, 15), (3, 8, 26), (4, 9, 13)]
    assert overlaps[0].text == words(10, 26)
    assert overlaps[3].text == "café naïve quoted déjà vu x_1 " + words(400, 407)


RANDOM_WORDS = ["a", "B", "c_1", "é", "ß", "日本", "a.b", "x-y", "42", "Ω"]  # "a.b" is 2 words, "Ω" is "ω"


def random_texts(rng: random.Random, count: int, vocabulary: list[str]) -> list[str]:
    return [" ".join(rng.choices(vocabulary, k=rng.randint(0, 30))) for _ in range(count)]


@pytest.mark.parametrize("slot_bits", [contamination.SLOT_BITS, 2])
@pytest.mark.parametrize("multiplier", [contamination.MULTIPLIER, np.uint64(1)])
def test_random_cases_give_the_reference_overlaps(multiplier, slot_bits, monkeypatch):
    """Few words, so that n-grams repeat within and across rows and probes; with a multiplier of 1 an
    n-gram's hash is the sum of its ids, so that many n-grams share a hash and only the comparison of
    their words tells them apart. With a table of 4 slots, most hashes share their slot with others and
    are searched for."""
    monkeypatch.setattr(contamination, "MULTIPLIER", multiplier)
    monkeypatch.setattr(contamination, "SLOT_BITS", slot_bits)
    rng = random.Random(0)
    for _ in range(150):
        vocabulary = rng.sample(RANDOM_WORDS, rng.randint(1, 6))
        probes = random_texts(rng, rng.randint(0, 8), vocabulary)
        training = random_texts(rng, rng.randint(0, 30), vocabulary)
        n = rng.randint(1, 6)
        monkeypatch.setattr(contamination, "CHUNK_ROWS", rng.randint(1, 8))
        expected = reference_overlaps(probes, training, n)
        assert find_overlaps(probes, iter(training), n) == expected
        assert in_arrow_chunks(probes, training, n, rng.randint(1, 10)) == expected
        assert in_numbered_chunks(probes, training, n, rng.randint(1, 10), rng.randint(0, 99)) == expected


# Letters and digits in and out of ASCII, `_`, punctuation, spaces of all kinds, a combining mark, a letter
# whose lowercase is two characters (İ), a surrogate a JSON file can hold, an emoji.
CHARACTERS = "aZ9_ é ÉßΣς日本٣²-.,;“”\t\n\x00\x1c\xa0\u2028\u3000\u0301İ\ud800🙂"


def test_texts_of_any_characters_give_the_reference_overlaps():
    rng = random.Random(1)
    for _ in range(100):
        probes = ["".join(rng.choices(CHARACTERS, k=40)) for _ in range(rng.randint(1, 10))]
        training = ["".join(rng.choices(CHARACTERS, k=40)) for _ in range(rng.randint(1, 20))]
        n = rng.randint(1, 2)
        expected = reference_overlaps(probes, training, n)
        assert find_overlaps(probes, iter(training), n) == expected
        assert in_arrow_chunks(probes, training, n, rng.randint(1, 10)) == expected


def test_a_training_split_of_300k_rows_takes_seconds():
    """300,000 rows of 60 random words, each with one of 50 stock phrases of 20 words, against 300 probes
    of 80 random words with two phrases each: every probe overlaps some 12,000 rows by 20 tokens, as in a
    templated dump, and half of the probes have a longer stretch, 21 to 40 words, copied into one row."""
    rng = np.random.default_rng(0)
    vocabulary = [f"word{i}" for i in range(50_000)]
    phrases = rng.integers(0, len(vocabulary), (50, 20))
    rows = rng.integers(0, len(vocabulary), (300_000, 60))
    rows[:, 30:50] = phrases[rng.integers(0, len(phrases), len(rows))]
    probes = rng.integers(0, len(vocabulary), (300, 80))
    probes[:, 40:60] = phrases[rng.integers(0, len(phrases), len(probes))]
    probes[:, 60:80] = phrases[rng.integers(0, len(phrases), len(probes))]

    def text(ids: Iterable[int]) -> str:
        return " ".join(map(vocabulary.__getitem__, ids))

    planted = {}  # probe -> (row, the words copied there)
    for probe in range(0, len(probes), 2):
        row, length = probe * 997, 21 + probe % 20
        rows[row, 5 : 5 + length] = probes[probe, :length]
        planted[probe] = (row, text(probes[probe, :length]))
    # Next to its phrases, a probe has words no row has, so that no row makes a phrase's run longer.
    texts = [f"{text(p[:40])} x {text(p[40:60])} y {text(p[60:])} z" for p in probes.tolist()]
    training = (text(row) for row in rows.tolist())
    started = time.perf_counter()
    overlaps = find_overlaps(texts, training)
    seconds = time.perf_counter() - started
    assert [o.probe for o in overlaps] == list(range(len(probes)))
    assert {o.probe: (o.row, o.text) for o in overlaps if o.tokens > 20} == planted
    assert seconds < 120, f"{seconds:.0f} s"


def test_the_words_of_every_character_are_the_normalized_tokens():
    """Every code point, side by side and one by one: the words cut out in bytes are the tokens of the
    regular expression on the lowercased text (a character may lowercase to several, as İ)."""
    characters = "".join(map(chr, range(0x110000)))
    texts = [characters, " ".join(characters), "", "Two WORDS"]
    items = contamination._words(texts).to_pylist()
    assert all(blank and not blank.strip(b" ") for blank in items[1::2])
    expected = [[b"\0", *(token.encode() for token in normalized_tokens(text))] for text in texts]
    assert items[::2] == [word for words in expected for word in words]


def test_passages_are_the_grams_that_always_occur_together():
    """With n = 1 a gram is a word. `q r` occurs twice, always together: one passage, placed twice. `p q`
    is not one (`q` also follows `t`), nor `r s` (`r` is also followed by `u`), nor `z z`: no gram can
    follow itself, so `z` is a passage of one word, placed twice in its probe."""
    index = contamination._Index.of(contamination._words(["P q r s", "t q r u", "z z"]), 1, 10)
    passages = defaultdict(list)
    grams = index.vocabulary.take(pa.array(index.columns[0])).to_pylist()
    for gram, passage, place in zip(grams, index.passage_of, index.place, strict=True):
        passages[int(passage)].append((int(place), gram.decode()))
    placed = defaultdict(list)  # (probe, position) of each passage's occurrences
    for passage in passages:
        for number in index.occurs[index.first[passage] : index.first[passage + 1]].tolist():
            placed[" ".join(word for _, word in sorted(passages[passage]))].append(
                (number // (index.chunk_rows * index.width), number % index.width)
            )
    assert dict(placed) == {
        "p": [(0, 0)],
        "q r": [(0, 1), (1, 1)],
        "s": [(0, 3)],
        "t": [(1, 0)],
        "u": [(1, 3)],
        "z": [(2, 0), (2, 1)],
    }


def test_ranges_and_repeats_are_numpys_without_holding_the_gil():
    rng = np.random.default_rng(0)
    for _ in range(300):
        size = rng.integers(0, 12)
        starts, counts = rng.integers(-50, 50, size), rng.integers(0, 4, size)
        pairs = zip(starts.tolist(), counts.tolist(), strict=True)
        expected = [value for start, count in pairs for value in range(start, start + count)]
        assert contamination._ranges(starts, counts).tolist() == expected
        assert contamination._repeated(starts, counts).tolist() == np.repeat(starts, counts).tolist()


@pytest.mark.parametrize("n", range(1, 20))
def test_ngram_hashes_are_the_polynomial_of_the_ids(n):
    rng = np.random.default_rng(n)
    ids = rng.integers(contamination.UNKNOWN, 5, 500).astype(np.int32)
    hashes, whole = contamination._ngram_hashes(ids, n)
    values = ids.astype(np.uint64)
    horner = values[: len(values) - n + 1].copy()
    for offset in range(1, n):  # Horner's rule, as the hashes were computed before
        horner = horner * contamination.MULTIPLIER + values[offset : offset + len(horner)]
    assert np.array_equal(hashes, horner)
    assert np.flatnonzero(whole).tolist() == [
        start for start in range(len(ids) - n + 1) if (ids[start : start + n] > 0).all()
    ]
