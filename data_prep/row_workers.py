"""The curation's worker processes: each holds the row settings and the tokenizer, set once, and prepares
or counts the batches data_prep/curate.py sends it.

A module of its own so that a spawned worker, which imports it, loads only what preparing rows needs
(data_prep/rows.py: lxml, pyarrow, the tokenizer), not the curation stage's configuration models and
sources' readers: 0.25 s less of each worker's start, while the main process reads Answers.csv.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from core.prompts import Rendered
from data_prep.allocators import tune_allocators
from data_prep.rows import Example, PreparedBatch, RowSettings, TokenCounter, prepare_batch
from data_prep.workers import worker_map

# What a worker process holds: set once by the pool's initializer (or in this process when num_proc is 1).
_settings: RowSettings | None = None
_count_tokens: TokenCounter | None = None


class _NoPandas(importlib.abc.MetaPathFinder):
    """Makes `import pandas` fail in a worker, as if pandas were not installed. pyarrow imports pandas, an
    optional dependency of its, on its first conversion of a Python list (to check whether the list is a
    pandas object): 0.4 s of each worker's time and 60 MB of its memory, for nothing a worker does."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.partition(".")[0] == "pandas":
            raise ImportError("pandas is not imported in a curation worker")


def _start_worker(settings: RowSettings, count_tokens: TokenCounter, spawned: bool = False) -> None:
    global _settings, _count_tokens
    _settings, _count_tokens = settings, count_tokens
    if spawned:
        sys.meta_path.insert(0, _NoPandas())
        tune_allocators()


def prepare(batch: list[Example]) -> PreparedBatch:
    """The batch through prepare_batch, with the worker's settings and tokenizer."""
    return prepare_batch(batch, _settings, _count_tokens)


def count(texts: list[Rendered]) -> list[int]:
    """The texts' token counts (TokenCounter)."""
    return _count_tokens(texts)


def count_up_to(limit: int, texts: list[Rendered]) -> list[int]:
    """The texts' token counts, exact up to `limit` (TokenCounter.up_to)."""
    return _count_tokens.up_to(texts, limit)


@contextmanager
def workers(settings: RowSettings, count_tokens: TokenCounter, num_proc: int) -> Iterator[Callable]:
    """An ordered, lazy `map(function, items)` over `num_proc` worker processes holding the settings and
    the tokenizer. They are spawned, not forked: each holds lxml, pyarrow and the tokenizer, not this
    process's memory; they start while this process reads Answers.csv."""
    if num_proc == 1:
        _start_worker(settings, count_tokens)
        yield map
        return
    with worker_map(num_proc, _start_worker, (settings, count_tokens, True)) as ordered_map:
        yield ordered_map
