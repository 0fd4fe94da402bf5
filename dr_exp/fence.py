"""Fencing: a job's process stops the moment its attempt no longer owns the job.

The worker heartbeats the attempt's lease; the job's own process watches that lease from a
thread. If the lease disappears (the job was cancelled, or recovered and re-queued) or stops
being refreshed for three quarters of its length (the worker is paused, hung on a dead mount,
or gone), the process kills its whole process group at once -- before any other worker can
consider the lease expired and start the job again. Staleness is judged by whether the lease's
mtime changes, measured on this node's monotonic clock, so it does not depend on clocks agreeing.

:func:`guard` repeats the check synchronously; the runner calls it before writing a result, and
the run directory's logger before every line, so a stale attempt never records anything.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

_current: Fence | None = None


class Fence:
    def __init__(self, lease_path: str, lease_seconds: float, outcome_path: str | None = None) -> None:
        self.lease_path = lease_path
        self.stale_after = 0.75 * lease_seconds
        self.interval = max(0.05, min(1.0, lease_seconds / 10))
        self.outcome_path = outcome_path
        self._mtime: int | None = None
        self._changed_at = time.monotonic()
        self._lock = threading.Lock()

    def check(self) -> str | None:
        """None while the attempt owns its job; otherwise why it does not."""
        with self._lock:
            try:
                fd = os.open(self.lease_path, os.O_RDONLY)  # a fresh open revalidates NFS attributes
            except FileNotFoundError:
                return "its lease is gone (the job was cancelled, or taken over after its worker was lost)"
            try:
                mtime = os.fstat(fd).st_mtime_ns
            finally:
                os.close(fd)
            now = time.monotonic()
            if mtime != self._mtime:
                self._mtime, self._changed_at = mtime, now
                return None
            if now - self._changed_at > self.stale_after:
                return f"its worker stopped heartbeating its lease for {now - self._changed_at:.1f}s"
            return None

    def stop(self, reason: str) -> None:
        """Leave a note for the worker, then kill this job's whole process group."""
        if self.outcome_path:
            try:
                with open(self.outcome_path, "w") as fh:
                    json.dump({"status": "fenced", "reason": reason}, fh)
            except OSError:
                pass
        print(f"[dr_exp] stopping: {reason}", flush=True)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    def start(self) -> None:
        global _current
        _current = self
        self.check()
        threading.Thread(target=self._watch, name="dr_exp-fence", daemon=True).start()

    def _watch(self) -> None:
        while True:
            time.sleep(self.interval)
            reason = self.check()
            if reason:
                self.stop(reason)


def guard() -> None:
    """Stop this process now if the job's attempt no longer owns the job (no-op outside a job)."""
    fence = _current
    if fence is not None:
        reason = fence.check()
        if reason:
            fence.stop(reason)
