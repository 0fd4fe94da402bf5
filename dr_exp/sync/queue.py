"""The durable sync queue: one file per job under ``sync/queue/``, written before any upload.

An entry stays until its upload succeeded and was verified; a failure records the error and a
next-try time (exponential backoff), so a crash, a dead server or a kill -9 loses nothing and a
later ``dr_exp sync run`` (or any worker) completes it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dr_exp.api import Experiment
from dr_exp.errors import SyncError
from dr_exp.fileio import atomic_write
from dr_exp.sync.handler import SyncHandler, SyncUnavailable

MAX_BACKOFF = 300.0


@dataclass
class DrainReport:
    done: list[tuple[str, int]] = field(default_factory=list)  # (job id, objects uploaded)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (job id, message)
    fatal: SyncError | None = None


class SyncQueue:
    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self.dir = exp.layout.sync_dir / "queue"

    def _path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.json"

    def enqueue(self, job_id: str, reason: str) -> None:
        """Record durably that ``job_id`` must be synced (idempotent; keeps retry state)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        entry = self.read(job_id) or {"job_id": job_id, "attempts": 0, "next_try": 0.0}
        entry.update(reason=reason, queued_at=time.time())
        atomic_write(self._path(job_id), json.dumps(entry))

    def read(self, job_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(job_id).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def entries(self) -> list[dict[str, Any]]:
        out = []
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        for name in names:
            if name.endswith(".json") and not name.startswith("."):
                entry = self.read(name[:-5])
                if entry is not None:
                    out.append(entry)
        return out

    def pending_for(self, job_ids: set[str]) -> list[str]:
        return [e["job_id"] for e in self.entries() if e["job_id"] in job_ids]

    def drain(self, handler: SyncHandler, job_id: str | None = None, respect_backoff: bool = True) -> DrainReport:
        """Try every due entry once. A configuration error (bad bucket, credentials) stops the
        drain and is reported as ``fatal``; entries stay queued either way."""
        report = DrainReport()
        now = time.time()
        for entry in self.entries():
            jid = entry["job_id"]
            if job_id and jid != job_id:
                continue
            if respect_backoff and entry.get("next_try", 0) > now:
                continue
            queued_at = entry.get("queued_at")
            try:
                result = handler.sync_job(jid)
            except SyncError as exc:
                attempts = int(entry.get("attempts", 0)) + 1
                entry.update(attempts=attempts, last_error=str(exc), last_try=time.time(),
                             next_try=time.time() + min(MAX_BACKOFF, 2.0 ** attempts))
                atomic_write(self._path(jid), json.dumps(entry))
                self._mark(jid, {"state": "error", "message": str(exc), "at": time.time()})
                report.errors.append((jid, str(exc)))
                if not isinstance(exc, SyncUnavailable):
                    report.fatal = exc
                    break
                continue
            current = self.read(jid)
            if current is not None and current.get("queued_at") == queued_at:
                self._path(jid).unlink(missing_ok=True)  # not re-queued while we uploaded
            self._mark(jid, {"state": "synced", "at": time.time(), "objects": result.objects})
            report.done.append((jid, result.uploaded))
        return report

    def _mark(self, job_id: str, sync: dict[str, Any]) -> None:
        self.exp.set_sync_state(job_id, sync)

    def status(self) -> dict[str, Any]:
        entries = self.entries()
        manifests = self.exp.layout.sync_dir / "manifests"
        synced = len([n for n in os.listdir(manifests) if n.endswith(".json")]) if manifests.is_dir() else 0
        failing = [e for e in entries if e.get("last_error")]
        return {"pending": len(entries) - len(failing), "failing": len(failing), "synced_runs": synced,
                "last_errors": [(e["job_id"], e["last_error"], e.get("attempts", 0)) for e in failing[-5:]]}
