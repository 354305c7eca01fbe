"""The curation's worker processes: an ordered map that an error, a dead worker or leaving the block ends
at once."""

import os
import signal

import pytest

from core.errors import UserError
from data_prep.workers import worker_map

_offset = 0


def _set_offset(offset: int) -> None:
    global _offset
    _offset = offset


def _shifted(number: int) -> int:
    return number + _offset


def _fail_on_three(number: int) -> int:
    if number == 3:
        raise ValueError("three")
    return number


def _pid(_: object) -> int:
    return os.getpid()


def test_results_come_in_the_items_order_from_workers_set_up_once():
    with worker_map(2, _set_offset, (100,)) as ordered_map:
        assert list(ordered_map(_shifted, range(50))) == [100 + number for number in range(50)]
        pids = set(ordered_map(_pid, range(8)))
        assert len(pids) == 2 and os.getpid() not in pids
        assert list(ordered_map(_shifted, [])) == []


def test_a_map_left_unfinished_does_not_leak_results_into_the_next():
    with worker_map(2, _set_offset, (0,)) as ordered_map:
        unfinished = ordered_map(_shifted, range(10))
        assert next(unfinished) == 0
        assert list(ordered_map(_shifted, range(1000, 1005))) == [1000, 1001, 1002, 1003, 1004]


def test_a_workers_error_is_raised_here_and_the_workers_go_on():
    with worker_map(2, _set_offset, (0,)) as ordered_map:
        with pytest.raises(ValueError, match="three"):
            list(ordered_map(_fail_on_three, range(6)))
        assert list(ordered_map(_shifted, range(4))) == [0, 1, 2, 3]


def test_a_dead_worker_is_one_line_not_a_hang():
    with worker_map(2, _set_offset, (0,)) as ordered_map:
        pids = set(ordered_map(_pid, range(2)))
        os.kill(min(pids), signal.SIGKILL)
        with pytest.raises(UserError, match="data worker process died"):
            list(ordered_map(_shifted, range(10)))
    with worker_map(2, _set_offset, (0,)) as ordered_map:
        results = ordered_map(_pid, range(100))
        os.kill(next(results), signal.SIGKILL)  # while it holds an item or waits for one
        with pytest.raises(UserError, match="data worker process died"):
            list(results)


def test_leaving_the_block_ends_every_worker_even_on_an_error():
    with pytest.raises(KeyboardInterrupt), worker_map(2, _set_offset, (0,)) as ordered_map:
        pids = set(ordered_map(_pid, range(2)))
        raise KeyboardInterrupt
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
