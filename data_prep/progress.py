"""Progress of long curation steps: a log line every few seconds, nothing for a step that ends sooner."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("data_prep")

PROGRESS_SECONDS = 5.0  # between two lines; a step shorter than this prints none


class Progress:
    """Counts the items a step has done and logs, at most every PROGRESS_SECONDS, one line:
    `read 40,000 rows of Questions.csv (9,800/s)`, the rate being since the step began."""

    def __init__(self, verb: str, items: str) -> None:
        self.verb, self.items = verb, items
        self.done = 0
        self.started = time.monotonic()
        self.next_line = self.started + PROGRESS_SECONDS

    def add(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now >= self.next_line:
            rate = self.done / max(now - self.started, 1e-9)
            log.info("%s %s %s (%s/s)", self.verb, f"{self.done:,}", self.items, f"{rate:,.0f}")
            self.next_line = now + PROGRESS_SECONDS
