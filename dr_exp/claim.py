"""Claiming: which queue entry a worker tries next, and when it lists the queue again.

A claim costs the same with 1,000 or 50,000 pending jobs: the worker keeps a sorted batch of
queue entries in memory (only the resource classes it can serve: jobs needing at most as many GPUs
as it holds) and lists the queue again only when the batch runs out, or when a "job added" signal
of one of its classes changed (checked at most every ``refresh_seconds``, by opening one small
file per class), or once a minute as a safety net. So an idle queue costs a worker nothing but
those few opens, and a newly submitted high-priority job is still seen within ``refresh_seconds``.
Taking an entry is one rename; the loser of a race tries another.
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
FULL_RELIST_SECONDS = 60.0


def _priority(entry: str) -> str:
    return entry.partition("/")[2][:4]


class Claimer:
    """One worker's cursor over the queue. ``begin(entry)`` turns a taken queue entry into an
    attempt (or None when its job is no longer pending); it is :meth:`Experiment._begin`."""

    def __init__(self, store: ExperimentStore, begin: Callable[[str], Attempt | None]) -> None:
        self.store = store
        self.begin = begin
        self._batch: deque[str] = deque()
        self._listed_at = -FULL_RELIST_SECONDS
        self._checked_at = 0.0
        self._signal: tuple[int, ...] = ()
        self._gpus: int | None = None
        self._contended = False

    def _stale(self, refresh_seconds: float, max_gpus: int | None) -> bool:
        now = time.monotonic()
        if not self._batch or max_gpus != self._gpus or now - self._listed_at > FULL_RELIST_SECONDS:
            return True
        if now - self._checked_at < refresh_seconds:
            return False
        self._checked_at = now
        return self.store.added_state(max_gpus) != self._signal

    def claim(self, refresh_seconds: float = DEFAULT_REFRESH_SECONDS, max_gpus: int | None = None) -> Attempt | None:
        """Take the next job in claim order that needs at most ``max_gpus`` GPUs (any when
        None), or None if there is none."""
        relisted = False
        while True:
            if self._stale(refresh_seconds, max_gpus):
                if relisted:
                    return None
                # The signal is read before listing: a job added meanwhile changes it again.
                self._signal = self.store.added_state(max_gpus)
                self._batch = deque(self.store.list_markers(max_gpus))
                self._listed_at = self._checked_at = time.monotonic()
                self._gpus = max_gpus
                relisted = True
                if not self._batch:
                    return None
            entry = self._next_entry()
            if not self.store.take(entry):
                self._contended = True  # another worker won this one
                continue
            self._contended = False
            attempt = self.begin(entry)
            if attempt is not None:
                return attempt

    def _next_entry(self) -> str:
        """The head of the batch; right after losing a race, a random one of the first few of
        the head's priority instead. Workers list the same queue in the same order, so without
        this they move in lockstep and collide on every entry."""
        batch = self._batch
        if self._contended and len(batch) > 1:
            prio = _priority(batch[0])
            span = 1
            while span < min(len(batch), CLAIM_WINDOW) and _priority(batch[span]) == prio:
                span += 1
            pick = random.randrange(span)
            if pick:
                entry = batch[pick]
                del batch[pick]
                return entry
        return batch.popleft()
