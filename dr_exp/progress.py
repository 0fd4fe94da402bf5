"""How far an experiment's queue is: counts per state, jobs finished per minute, time to drain.

The rate comes from the records' own start and finish times, so it is right from the first look
(no warm-up of samples) and the same wherever it is computed: ``dr_exp status --watch``, a
launcher in the foreground, the dashboard and its ``/experiments/{exp}/status``.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from dr_exp.job import JobRecord

# Throughput is measured over the jobs that finished within this window.
RATE_WINDOW = 600.0
_COUNTED = frozenset({"pending", "running", "completed", "failed", "cancelled"})


@dataclass
class QueueState:
    pending: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    jobs_per_minute: float | None = None
    eta_seconds: float | None = None

    @property
    def total(self) -> int:
        return self.pending + self.running + self.completed + self.failed + self.cancelled

    @property
    def finished(self) -> int:
        return self.completed + self.failed + self.cancelled

    @property
    def drained(self) -> bool:
        return self.pending == 0 and self.running == 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def measure(records: Iterable[JobRecord], now: float | None = None, window: float = RATE_WINDOW) -> QueueState:
    """Counts per state; jobs/minute over the jobs that ended (completed or failed) in the last
    ``window`` seconds, timed from the earliest start among them and the running ones; the time
    to drain the pending and running jobs at that rate."""
    now = time.time() if now is None else now
    counts = dict.fromkeys(_COUNTED, 0)
    ended = 0
    first_start = now
    last_end = 0.0
    since = now - window
    for rec in records:
        status = rec.status
        if status in counts:
            counts[status] += 1
        if status == "running":
            if rec.started_at:
                first_start = min(first_start, rec.started_at)
        elif (status == "completed" or status == "failed") and rec.finished_at and rec.finished_at >= since:
            ended += 1
            last_end = max(last_end, rec.finished_at)
            if rec.started_at:
                first_start = min(first_start, rec.started_at)
    state = QueueState(**counts)
    # While jobs are left the clock runs until now; once drained, until the last job ended.
    end = now if state.pending or state.running else last_end
    span = end - max(first_start, since)
    if ended and span > 0:
        state.jobs_per_minute = ended / span * 60.0
        state.eta_seconds = (state.pending + state.running) / state.jobs_per_minute * 60.0
    return state


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def describe(state: QueueState) -> str:
    """One line: ``pending 12 · running 2 · done 30 · failed 1 · 4.2 jobs/min · drains in ~3m10s``."""
    parts = [f"pending {state.pending}", f"running {state.running}", f"done {state.completed}",
             f"failed {state.failed}"]
    if state.cancelled:
        parts.append(f"cancelled {state.cancelled}")
    if state.jobs_per_minute is not None:
        parts.append(f"{state.jobs_per_minute:.3g} jobs/min")
    if state.drained:
        parts.append("queue drained")
    elif state.eta_seconds is not None:
        parts.append(f"drains in ~{fmt_duration(state.eta_seconds)}")
    return " · ".join(parts)


class LiveLine:
    """A live progress line on a terminal (rich): a bar of finished jobs and :func:`describe`.

    :meth:`tick` may be called often; it re-reads the experiment at most every ``interval``
    seconds, and backs off on experiments so large that reading them takes a while.
    """

    def __init__(self, base_path: str | os.PathLike[str], experiment: str, interval: float = 1.0,
                 stream: Any = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        from dr_exp.dashboard.data import ExperimentReader

        self.reader = ExperimentReader(base_path, experiment)
        self.interval = interval
        self._next = 0.0
        self.state: QueueState | None = None
        console = Console(file=stream or sys.stderr)
        # The bar only where the line still fits beside it (80-column terminals get the text).
        columns = [BarColumn(bar_width=20), MofNCompleteColumn()] if console.width >= 110 else []
        self._progress = Progress(*columns, TextColumn("{task.description}"), console=console,
                                  auto_refresh=False, transient=False)
        state = self._measure()
        self._task = self._progress.add_task(describe(state), total=state.total or None, completed=state.finished)
        self._progress.start()
        self._closed = False
        # Restore the terminal (rich hides the cursor) even if the caller dies of an exception.
        atexit.register(self.close)

    def tick(self, force: bool = False) -> QueueState | None:
        if not force and time.monotonic() < self._next:
            return self.state
        state = self._measure()
        self._progress.update(self._task, total=state.total or None, completed=state.finished,
                              description=describe(state))
        self._progress.refresh()
        return state

    def _measure(self) -> QueueState:
        now = time.monotonic()
        self.state = measure(self.reader.scan().records)
        self._next = now + max(self.interval, 10 * (time.monotonic() - now))
        return self.state

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            self.tick(force=True)
        finally:
            self._progress.stop()


class _NoLine:
    def tick(self, force: bool = False) -> None:
        return None

    def close(self) -> None:
        return None


def foreground_line(base_path: str | os.PathLike[str], experiment: str) -> LiveLine | _NoLine:
    """A :class:`LiveLine` on stderr when it is a terminal and this process runs in its
    foreground; otherwise (a log file, ``&``, sbatch) an object whose methods do nothing."""
    try:
        fd = sys.stderr.fileno()
        if not os.isatty(fd) or os.tcgetpgrp(fd) != os.getpgrp():
            return _NoLine()
    except (OSError, ValueError, AttributeError):
        return _NoLine()
    return LiveLine(base_path, experiment)


def watch(base_path: str | os.PathLike[str], experiment: str, interval: float = 2.0, until_done: bool = False,
          echo: Any = print) -> QueueState | None:
    """Follow the queue until Ctrl-C (or, with ``until_done``, until nothing is pending or
    running): a live line on a terminal, else one line whenever the counts change."""
    from dr_exp.dashboard.data import ExperimentReader

    line = LiveLine(base_path, experiment, interval, stream=sys.stdout) if sys.stdout.isatty() else None
    reader = line.reader if line is not None else ExperimentReader(base_path, experiment)
    state: QueueState | None = None
    last: tuple[int, ...] = ()
    try:
        while True:
            if line is not None:
                state = line.tick(force=True)
            else:
                state = measure(reader.scan().records)
                counts = (state.pending, state.running, state.completed, state.failed, state.cancelled)
                if counts != last:  # a new line when the counts change, not with every new rate
                    echo(describe(state))
                    last = counts
            if until_done and state is not None and state.drained:
                return state
            time.sleep(interval)
    except KeyboardInterrupt:
        return state
    finally:
        if line is not None:
            line.close()
