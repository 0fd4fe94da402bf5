"""Job states, the table of legal transitions, and the policy for what an attempt's end becomes.

:func:`transition` is the only code that writes a record's ``status``; :func:`next_after` is the
only code that decides whether an attempt that did not complete is retried.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import TYPE_CHECKING

from dr_exp.errors import InvalidTransition

if TYPE_CHECKING:
    from dr_exp.job import JobRecord


class Status(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PRUNED = "pruned"  # stopped early by an adaptive sweep's pruner: a result, not an error

    def __str__(self) -> str:
        return self.value


TRANSITIONS: dict[Status, frozenset[Status]] = {
    # pending -> failed: a recovery that finds no attempts left on a claimed-but-dead job.
    Status.PENDING: frozenset({Status.RUNNING, Status.CANCELLED, Status.FAILED}),
    # running -> pending: handed back (pre-empted, worker trouble), worker lost, or a failed
    # attempt that the policy retries.
    Status.RUNNING: frozenset({Status.PENDING, Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.PRUNED}),
    Status.COMPLETED: frozenset(),
    Status.PRUNED: frozenset(),
    # Only an explicit retry brings a failed or cancelled job back.
    Status.FAILED: frozenset({Status.PENDING}),
    Status.CANCELLED: frozenset({Status.PENDING}),
}

FINISHED = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.PRUNED})
ACTIVE = frozenset({Status.PENDING, Status.RUNNING})
HISTORY_LIMIT = 50


class Ending(str, Enum):
    """How an attempt that did not complete ended. The worker (or recovery) names one; the
    policy below turns it into the job's next state."""

    ERROR = "error"              # the trainer raised, or its process died (crash, OOM kill)
    TIMEOUT = "timeout"          # the job ran past its ``timeout``
    FATAL = "fatal"              # an error that would repeat on every attempt (bad config, bad data)
    WORKER_LOST = "worker_lost"  # its worker stopped heartbeating (killed, node died, paused)
    HANDED_BACK = "handed_back"  # pre-empted, or its worker could not write (disk full)


def next_after(record: JobRecord, ending: Ending) -> Status:
    """The state a running job moves to after an attempt ended without completing.

    - A hand-back never fails the job and never spends an attempt.
    - A lost worker is the cluster's fault, not the job's: it counts against the job's own
      budget ``max_worker_losses``, not against ``max_attempts``.
    - An error or a timeout is the job's failure: retried while ``max_attempts`` last (a timeout
      is an error like any other: a hung attempt may well succeed on another node).
    - A fatal error fails at once.

    The counters on ``record`` must already include this attempt (see :mod:`dr_exp.api`).
    """
    if ending == Ending.HANDED_BACK:
        return Status.PENDING
    if ending == Ending.WORKER_LOST:
        return Status.PENDING if record.worker_losses < record.max_worker_losses else Status.FAILED
    if ending == Ending.FATAL:
        return Status.FAILED
    return Status.PENDING if record.failed_attempts < record.max_attempts else Status.FAILED


def transition(record: JobRecord, new: Status | str, reason: str = "", **fields: object) -> None:
    """Move ``record`` to ``new`` if the table allows it, and append to its history.

    Extra ``fields`` are set on the record in the same step (e.g. ``worker_id``).
    """
    new = Status(new)
    old = Status(record.status)
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(
            f"job {record.id} is {old.value}; it cannot become {new.value}"
            + (" (use `dr_exp job retry` to run it again)" if old in (Status.FAILED, Status.CANCELLED) else "")
        )
    now = time.time()
    for key, value in fields.items():
        if not hasattr(record, key):
            raise AttributeError(f"JobRecord has no field {key!r}")
        setattr(record, key, value)
    record.status = new.value
    record.updated_at = now
    entry: dict[str, object] = {"at": now, "from": old.value, "to": new.value}
    if reason:
        entry["reason"] = reason
    record.history.append(entry)
    del record.history[:-HISTORY_LIMIT]
