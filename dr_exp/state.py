"""Job states and the table of legal transitions.

:func:`transition` is the only code that writes a record's ``status``.
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

    def __str__(self) -> str:
        return self.value


TRANSITIONS: dict[Status, frozenset[Status]] = {
    # pending -> failed: a recovery that finds no attempts left on a claimed-but-dead job.
    Status.PENDING: frozenset({Status.RUNNING, Status.CANCELLED, Status.FAILED}),
    # running -> pending: pre-empted, worker found dead, or a failed attempt with retries left.
    Status.RUNNING: frozenset(
        {Status.PENDING, Status.COMPLETED, Status.FAILED, Status.CANCELLED}
    ),
    Status.COMPLETED: frozenset(),
    # Only an explicit retry brings a finished job back.
    Status.FAILED: frozenset({Status.PENDING}),
    Status.CANCELLED: frozenset({Status.PENDING}),
}

FINISHED = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
HISTORY_LIMIT = 50


def transition(record: JobRecord, new: Status | str, reason: str = "", **fields: object) -> None:
    """Move ``record`` to ``new`` if the table allows it, and append to its history.

    Extra ``fields`` are set on the record in the same step (e.g. ``worker_id``).
    """
    new = Status(new)
    old = Status(record.status)
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(
            f"job {record.id} is {old.value}; it cannot become {new.value}"
            + (" (use `dr_exp job retry` to run it again)" if old in FINISHED else "")
        )
    now = time.time()
    for key, value in fields.items():
        if not hasattr(record, key):
            raise AttributeError(f"JobRecord has no field {key!r}")
        setattr(record, key, value)
    record.status = new.value
    record.updated_at = now
    entry = {"at": now, "from": old.value, "to": new.value}
    if reason:
        entry["reason"] = reason
    record.history.append(entry)
    del record.history[:-HISTORY_LIMIT]
