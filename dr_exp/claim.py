"""Claiming: which marker a worker tries next, and when it lists the queue again.

A claim costs the same with 1,000 or 50,000 pending jobs: the worker keeps a sorted batch of
markers in memory and re-lists ``queue/`` only when the batch runs out or every
``refresh_seconds`` (so a newly submitted high-priority job is seen quickly). Taking a marker is
one rename; the loser of a race tries the next one.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable

from dr_exp.job import Attempt
from dr_exp.store import ExperimentStore

# After a lost race a worker claims a random one of this many queue heads (same priority).
CLAIM_WINDOW = 16
DEFAULT_REFRESH_SECONDS = 2.0


class Claimer:
    """One worker's cursor over the queue. ``begin(marker)`` turns a taken marker into an
    attempt (or None when its job is no longer pending); it is :meth:`Experiment._begin`."""

    def __init__(self, store: ExperimentStore, begin: Callable[[str], Attempt | None]) -> None:
        self.store = store
        self.begin = begin
        self._batch: deque[str] = deque()
        self._listed_at = 0.0
        self._contended = False

    def claim(self, refresh_seconds: float = DEFAULT_REFRESH_SECONDS) -> Attempt | None:
        """Take the next job in claim order, or None if the queue is empty."""
        relisted = False
        while True:
            if not self._batch or time.monotonic() - self._listed_at > refresh_seconds:
                if relisted:
                    return None
                self._batch = deque(self.store.list_markers())
                self._listed_at = time.monotonic()
                relisted = True
                if not self._batch:
                    return None
            name = self._next_marker()
            if not self.store.take(name):
                self._contended = True  # another worker won this one
                continue
            self._contended = False
            attempt = self.begin(name)
            if attempt is not None:
                return attempt

    def _next_marker(self) -> str:
        """The head of the batch; right after losing a race, a random one of the first few of
        the head's priority instead. Workers list the same queue in the same order, so without
        this they move in lockstep and collide on every marker."""
        batch = self._batch
        if self._contended and len(batch) > 1:
            prio = batch[0][:4]
            span = 1
            while span < min(len(batch), CLAIM_WINDOW) and batch[span][:4] == prio:
                span += 1
            pick = random.randrange(span)
            if pick:
                name = batch[pick]
                del batch[pick]
                return name
        return batch.popleft()
