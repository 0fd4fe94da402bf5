"""Finding attempts whose worker is gone, and putting their jobs back (or failing them).

A lease not refreshed for its ``lease_seconds`` has expired, judged by file mtimes that the file
server stamped (compared with :meth:`ExperimentStore.server_now`), never by one node's wall clock
against another's. Every decision is re-checked under the record's lock, where a late heartbeat
(:meth:`Experiment.refresh` with ``careful``) also takes it, so a lease is either refreshed or
taken, never both. Nothing a single bad file does (a malformed lease, a directory in its place)
stops the sweep: it is skipped here and reported by ``validate``.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from dr_exp.errors import CorruptRecord, JobNotFound
from dr_exp.job import Attempt
from dr_exp.state import Status

if TYPE_CHECKING:
    from dr_exp.api import Experiment
    from dr_exp.store import LeaseInfo

log = logging.getLogger(__name__)


def recover(exp: Experiment, full_scan: bool, lease_seconds: float) -> list[tuple[str, str]]:
    """Re-queue (or fail) jobs whose lease expired; return ``(job_id, what happened)``.

    ``lease_seconds`` is the expiry for leases that do not state their own (and the grace for a
    claim that never got as far as a lease). ``full_scan`` also finds running records whose lease
    file is missing altogether (e.g. deleted by hand)."""
    store = exp.store
    if not store.exists():
        return []
    now = store.server_now()
    done: list[tuple[str, str]] = []
    for info in store.leases():
        if now - info.mtime > info.lease_seconds(lease_seconds):
            try:
                what = _expired(exp, info, now, lease_seconds)
            except OSError as exc:  # one job's files must not stop the sweep
                log.warning("could not recover %s: %s", info.path, exc)
                continue
            if what:
                done.append((info.job_id, what))
    # A marker taken from the queue by a claimer that died before it wrote the lease.
    for marker, ctime in store.claimed_markers():
        if now - ctime <= lease_seconds:
            continue
        with store.lock(marker.job_id):
            rec = exp.read_or_none(marker.job_id)
            if rec is not None and rec.status == Status.PENDING and rec.marker == marker.name:
                if store.release(marker.name, rec.gpus):
                    done.append((marker.job_id, "stale claim returned to the queue"))
            elif rec is not None:
                store.discard_claimed(marker.name)
    if full_scan:
        for rec in store.iter_records():
            if rec.status != Status.RUNNING or os.path.lexists(exp.layout.lease(rec.id, rec.attempts)):
                continue
            try:
                age = now - os.stat(exp.layout.record(rec.id)).st_mtime
            except FileNotFoundError:
                continue
            if age > lease_seconds:
                with store.lock(rec.id):
                    attempt = Attempt(rec.id, rec.attempts, rec.worker_id or "", exp.layout.lease(rec.id, rec.attempts),
                                      lease_seconds, rec)
                    if exp.lose(attempt, f"worker {rec.worker_id} lost (its lease is missing)"):
                        done.append((rec.id, "re-queued (lease missing)"))
    return done


def _expired(exp: Experiment, info: LeaseInfo, now: float, default_seconds: float) -> str | None:
    store = exp.store
    with store.lock(info.job_id):
        fresh = store.read_lease(info.job_id, info.attempt)
        if fresh is None or now - fresh.mtime <= fresh.lease_seconds(default_seconds):
            return None  # ended or refreshed meanwhile
        try:
            rec = store.read_record(info.job_id)
        except JobNotFound:
            store.remove_lease(info.job_id, info.attempt)
            return "removed the lease of a job that has no record"
        except CorruptRecord:
            return None  # validate reports it; the lease stays until the record is dealt with
        if rec.status == Status.PENDING and rec.attempts == info.attempt - 1:
            # Its claimer died between taking the lease and recording `running`.
            store.remove_lease(info.job_id, info.attempt)
            store.enqueue(rec)
            return "claimer died before starting it; returned to the queue"
        if rec.status != Status.RUNNING or rec.attempts != info.attempt:
            store.remove_lease(info.job_id, info.attempt)
            return None  # a leftover of an attempt that already ended
        attempt = Attempt(rec.id, info.attempt, rec.worker_id or "", info.path,
                          fresh.lease_seconds(default_seconds), rec)
        after = exp.lose(attempt, f"worker {rec.worker_id} lost (lease expired)")
        if after is None:
            return None
        if after.status == Status.PENDING:
            return f"re-queued (worker lost; {after.worker_losses} of {after.max_worker_losses} losses allowed)"
        return "failed (too many lost workers)"
