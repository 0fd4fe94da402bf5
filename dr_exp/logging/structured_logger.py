"""StructuredLogger: the run directory's JSONL streams (metrics, events) and its config.json.

It satisfies decon_cnn's ``StructuredLoggerProtocol`` structurally; decon_cnn never imports it.
Every append is one whole line in one ``write``; readers skip a torn last line. Inside a job's
process every write is fenced (:func:`dr_exp.fence.guard`): an attempt that no longer owns its
job records nothing. ``error.txt`` is not written here: the worker writes it from the job's
report, so it has one writer.

In a job with several ranks (:mod:`dr_exp.ranks`) only rank 0 writes: on the other ranks every
method is a no-op, so a trainer may log from every rank without duplicating a line.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Any

from dr_exp import fence
from dr_exp.fileio import append_line, atomic_write
from dr_exp.ranks import current_rank
from dr_exp.rundir import RunDir


class StructuredLogger:
    def __init__(self, log_dir: str | os.PathLike[str], job_id: str, worker_id: str,
                 attempt: int | None = None) -> None:
        self.run = RunDir(Path(log_dir))
        self.run.root.mkdir(parents=True, exist_ok=True)
        self.job_id = job_id
        self.worker_id = worker_id
        env_attempt = os.environ.get("DR_EXP_ATTEMPT")
        self.attempt = attempt if attempt is not None else (int(env_attempt) if env_attempt else None)
        self.writes = current_rank() == 0  # only rank 0 of a multi-rank job writes the run directory

    def log_config(self, config: dict[str, Any]) -> None:
        if not self.writes:
            return
        fence.guard()
        atomic_write(self.run.config, json.dumps(config, indent=2, default=str) + "\n")

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        if not self.writes:
            return
        fence.guard()
        row: dict[str, Any] = {"time": time.time()}
        row.update(metrics)
        append_line(self.run.metrics, row)

    def log_event(self, event_type: str, data: dict[str, Any] | None = None) -> None:
        if not self.writes:
            return
        fence.guard()
        row: dict[str, Any] = {"time": time.time(), "event": event_type, "job_id": self.job_id,
                               "worker_id": self.worker_id}
        if self.attempt is not None:
            row["attempt"] = self.attempt
        row.update(data or {})
        append_line(self.run.events, row)

    def log_error(self, error: BaseException, context: dict[str, Any] | None = None) -> None:
        """An ``error`` event with the exception's type, message and where it was raised."""
        where = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
        self.log_event("error", {"error_type": type(error).__name__, "message": str(error)[:500],
                                 "where": f"{where[0].filename}:{where[0].lineno}" if where else None,
                                 **(context or {})})
