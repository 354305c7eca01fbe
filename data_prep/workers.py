"""An ordered, lazy `map` over worker processes that an interrupt or an error stops at once.

`multiprocessing.Pool` cannot promise that: its `terminate()` joins a task thread that may be blocked for
good, writing a batch no worker will ever read or waiting on a queue lock that a killed worker held (2
hangs in 15 Ctrl-Cs during `make data` here). Here each worker has a pipe of its own and shares no lock,
so killing the workers can block nothing, and a worker that dies is seen as the end of its pipe.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

from core.errors import UserError


def _serve(connection: Connection, initializer: Callable[..., None], initargs: tuple) -> None:
    """A worker: set up once, then answer each (function, item) with (True, result) or (False, error)."""
    initializer(*initargs)
    while True:
        try:
            function, item = connection.recv()
        except EOFError:  # the parent closed its end, or died
            return
        try:
            reply = (True, function(item))
        except Exception as error:
            reply = (False, error)
        connection.send(reply)


def _worker_died() -> UserError:
    return UserError(
        "a data worker process died (killed by the system, out of memory?): "
        "run again with a smaller data.num_proc"
    )


def _receive(connection: Connection) -> Any:
    try:
        succeeded, value = connection.recv()
    except (EOFError, ConnectionError):
        raise _worker_died() from None
    if not succeeded:
        raise value
    return value


class OrderedMap:
    """`map(function, items)` through the workers, results in the items' order. Each worker has one item
    in flight: a worker is sent an item only after its last result was read, so it is waiting to read
    and a send never blocks on a worker that is itself blocked sending (a pipe holds only 64 KiB). The
    next item is taken and pickled before a worker is free for it, so that a worker waits for the send
    alone, not also for the items' iterator (the CSV reader) and the pickling (2% of curation's time)."""

    def __init__(self, connections: list[Connection]) -> None:
        self.connections = connections
        self.in_flight: deque[Connection] = deque()  # the workers holding an item, oldest item first

    def __call__(self, function: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        while self.in_flight:  # the results of a map left unfinished, so that none is taken for ours
            _receive(self.in_flight.popleft())
        payloads = (ForkingPickler.dumps((function, item)) for item in items)  # what Connection.send sends
        ready = next(payloads, None)

        def send_next(connection: Connection) -> None:
            nonlocal ready
            if ready is None:
                return
            try:
                connection.send_bytes(ready)
            except ConnectionError:
                raise _worker_died() from None
            self.in_flight.append(connection)
            ready = next(payloads, None)

        for connection in self.connections:
            send_next(connection)
        while self.in_flight:
            connection = self.in_flight.popleft()
            result = _receive(connection)
            send_next(connection)  # before the caller takes the result, so the worker is busy meanwhile
            yield result


@contextmanager
def worker_map(count: int, initializer: Callable[..., None], initargs: tuple) -> Iterator[OrderedMap]:
    """`count` spawned worker processes, each set up by `initializer(*initargs)`, as an ordered `map`.
    Leaving the block kills them: they hold nothing worth waiting for."""
    context = multiprocessing.get_context("spawn")
    processes, connections = [], []
    # Ctrl-C reaches every process of the terminal's process group, workers included; only this process
    # acts on it. The workers start ignoring SIGINT: they inherit that from their first instruction.
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for _ in range(count):
            ours, theirs = context.Pipe()
            process = context.Process(target=_serve, args=(theirs, initializer, initargs), daemon=True)
            process.start()
            processes.append(process)
            theirs.close()  # the worker's end lives in the worker alone, so its death ends the pipe
            connections.append(ours)
        signal.signal(signal.SIGINT, handler)
        yield OrderedMap(connections)
    finally:
        signal.signal(signal.SIGINT, handler)
        for process in processes:
            process.kill()
        for process in processes:
            process.join()
        for connection in connections:
            connection.close()
