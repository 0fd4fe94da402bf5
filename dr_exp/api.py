"""The Python API over one experiment: submit, sweep, list, get, cancel, retry, claim, recover.

The CLI and the worker both go through :class:`Experiment`; nothing here prints.
"""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dr_exp import compose as _compose
from dr_exp.errors import CorruptRecord, DrExpError, JobNotFound, StorageError
from dr_exp.job import DEFAULT_MAX_ATTEMPTS, DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY, JobRecord
from dr_exp.rundir import RunDir
from dr_exp.state import Status, transition
from dr_exp.store import ExperimentStore

DEFAULT_BASE_PATH = "./dr_exp_runs"
DEFAULT_EXPERIMENT = "default"
DEFAULT_LEASE_SECONDS = 60.0
DEFAULT_HEARTBEAT_SECONDS = 10.0
# After a lost race a worker claims a random one of this many queue heads (same priority).
CLAIM_WINDOW = 16


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise DrExpError(f"{name}={raw!r} is not a number of seconds; unset it or give e.g. {name}={default:g}") from None
    if value <= 0:
        raise DrExpError(f"{name}={raw!r} must be positive")
    return value


@dataclass
class SubmitResult:
    """What a submit or sweep did: the jobs written and the duplicates skipped."""

    submitted: list[JobRecord] = field(default_factory=list)
    skipped: list[tuple[dict[str, str] | list[str], str]] = field(default_factory=list)  # (point, existing id)
    sweep_id: str | None = None


def _check_priority(priority: int) -> int:
    if not isinstance(priority, int) or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise DrExpError(f"priority {priority!r} is out of range; "
                         f"use an integer from {MIN_PRIORITY} to {MAX_PRIORITY} (higher runs first)")
    return priority


def _parse_tags(tags: str | Iterable[str] | None) -> list[str]:
    if tags is None:
        return []
    items = tags.split(",") if isinstance(tags, str) else list(tags)
    out = [t.strip() for t in items if t.strip()]
    for tag in out:
        if any(c.isspace() for c in tag):
            raise DrExpError(f"tag {tag!r} contains whitespace; separate tags with commas: --tags a,b")
    return out


class Experiment:
    """One experiment directory: ``<base_path>/<experiment>/``."""

    def __init__(self, base_path: str | os.PathLike[str] | None = None, experiment: str | None = None) -> None:
        base_path = base_path or os.environ.get("DR_EXP_BASE_PATH") or DEFAULT_BASE_PATH
        experiment = experiment or os.environ.get("DR_EXP_EXPERIMENT") or DEFAULT_EXPERIMENT
        self.store = ExperimentStore(base_path, experiment)
        self.name = self.store.experiment
        self._batch: deque[str] = deque()
        self._hostname = socket.gethostname()
        self._listed_at = 0.0
        self._contended = False

    # -- submitting ----------------------------------------------------------------------------
    def submit(self, config_path: str, config_name: str, overrides: str | list[str] | None = None,
               priority: int = DEFAULT_PRIORITY, tags: str | Iterable[str] | None = None,
               force: bool = False, max_attempts: int | None = None,
               timeout: float | None = None) -> SubmitResult:
        """Compose one config and queue it (skipped if an identical run is already active or done)."""
        composed = [_compose.compose_one(config_path, config_name, _compose.split_overrides(overrides))]
        return self._submit_composed(composed, priority, tags, force, max_attempts, timeout, sweep_id=None)

    def sweep(self, config: str, params: str | list[str], overrides: str | list[str] | None = None,
              priority: int = DEFAULT_PRIORITY, tags: str | Iterable[str] | None = None,
              force: bool = False, max_attempts: int | None = None,
              timeout: float | None = None) -> SubmitResult:
        """Expand ``params`` with Hydra's sweeper semantics, compose every point, then queue all."""
        path = Path(config).expanduser()
        if path.suffix not in (".yaml", ".yml"):
            raise DrExpError(f"--config {config!r} should be a .yaml job config, e.g. exp_configs/noop.yaml")
        if not path.is_file():
            raise DrExpError(f"config file {config} does not exist; list exp_configs/ for the available ones")
        fixed = _compose.split_overrides(overrides)
        points = [fixed + p for p in _compose.parse_sweep(params)]
        composed = _compose.compose_many(path.parent, path.stem, points, _compose.sweep_keys(params))
        return self._submit_composed(composed, priority, tags, force, max_attempts, timeout,
                                     sweep_id=uuid.uuid4().hex[:12])

    def submit_configs(self, configs: list[dict[str, Any]], priority: int = DEFAULT_PRIORITY,
                       tags: str | Iterable[str] | None = None, force: bool = False,
                       max_attempts: int | None = None, timeout: float | None = None) -> SubmitResult:
        """Queue already-composed configs (plain dicts with ``_target_``), e.g. built in Python."""
        composed = []
        for config in configs:
            _compose.check_target(config, "config")
            composed.append(_compose.ComposedConfig("", "", [], dict(config), {}))
        return self._submit_composed(composed, priority, tags, force, max_attempts, timeout, sweep_id=None)

    def _submit_composed(self, composed: list[_compose.ComposedConfig], priority: int,
                         tags: str | Iterable[str] | None, force: bool, max_attempts: int | None,
                         timeout: float | None, sweep_id: str | None) -> SubmitResult:
        priority = _check_priority(priority)
        tag_list = _parse_tags(tags)
        if max_attempts is not None and max_attempts < 1:
            raise DrExpError(f"--max-attempts {max_attempts} must be at least 1")
        if timeout is not None and timeout <= 0:
            raise DrExpError(f"--timeout {timeout} must be a positive number of seconds")
        records = []
        for c in composed:
            cfg_attempts = c.config.get("max_attempts")
            cfg_timeout = c.config.get("timeout")
            records.append(JobRecord(
                id=str(uuid.uuid4()), experiment=self.name, config=c.config, priority=priority,
                tags=tag_list, config_path=c.config_path, config_name=c.config_name,
                overrides=c.overrides, sweep_id=sweep_id, sweep_params=c.sweep_params,
                max_attempts=int(max_attempts or cfg_attempts or DEFAULT_MAX_ATTEMPTS),
                timeout=float(timeout or cfg_timeout) if (timeout or cfg_timeout) else None,
            ))
        self.store.ensure()
        result = SubmitResult(sweep_id=sweep_id)
        seen: set[str] = set()
        for record in records:
            existing = None if force else self._active_duplicate(record.config_hash)
            if existing is None and not force and record.config_hash in seen:
                existing = "(same sweep)"
            if existing is not None:
                result.skipped.append((record.sweep_params or record.overrides, existing))
                continue
            seen.add(record.config_hash)
            record.storage_path = str(self.store.run_dir(record.id))
            self.store.write_record(record)
            self.store.make_spare(record.id)
            self.store.index_store(record.config_hash, record.id)
            self.store.add_marker(record)
            result.submitted.append(record)
        return result

    def _active_duplicate(self, config_hash: str) -> str | None:
        job_id = self.store.index_lookup(config_hash)
        if job_id is None:
            return None
        try:
            rec = self.store.read_record(job_id)
        except (JobNotFound, CorruptRecord):
            return None
        if rec.status in (Status.PENDING, Status.RUNNING, Status.COMPLETED):
            return rec.id
        return None

    # -- reading -------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        self.require()
        try:
            return self.store.read_record(self.store.resolve_job_id(job_id))
        except CorruptRecord as exc:
            dest = self.store.quarantine(exc.path, exc.reason)
            raise DrExpError(f"record {exc.path} is unreadable ({exc.reason}); moved to {dest}") from None

    def list(self, status: str | Iterable[str] | None = None, tags: str | Iterable[str] | None = None,
             sweep_id: str | None = None, problems: list[str] | None = None) -> list[JobRecord]:
        """Records filtered by status, tags (all must match) and sweep id, in claim order."""
        statuses = None
        if status:
            statuses = {s.strip() for s in (status.split(",") if isinstance(status, str) else status)}
            bad = statuses - {s.value for s in Status}
            if bad:
                raise DrExpError(f"unknown status {', '.join(sorted(bad))}; use one of {', '.join(s.value for s in Status)}")
        want_tags = set(_parse_tags(tags))
        if not self.store.exists():
            return []
        out = []
        for rec in self.store.iter_records(problems):
            if statuses and rec.status not in statuses:
                continue
            if want_tags and not want_tags.issubset(rec.tags):
                continue
            if sweep_id and not (rec.sweep_id or "").startswith(sweep_id):
                continue
            out.append(rec)
        out.sort(key=lambda r: (-r.priority, r.seq))
        return out

    def counts(self, problems: list[str] | None = None) -> dict[str, int]:
        counts = {s.value: 0 for s in Status}
        for rec in self.list(problems=problems):
            counts[rec.status] += 1
        return counts

    # -- changing state -------------------------------------------------------------------------
    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a pending job at once; a running one is stopped by its worker within seconds."""
        self.require()
        job_id = self.store.resolve_job_id(job_id)
        with self.store.lock(job_id):
            rec = self.store.read_record(job_id)
            was = rec.status
            transition(rec, Status.CANCELLED, "cancelled by user", finished_at=time.time())
            self.store.write_record(rec)
            if was == Status.PENDING:
                self.store.drop_marker(rec)
            else:
                # The worker watches its lease; removing it makes the worker stop the child.
                self.store.remove_lease(job_id)
        return rec

    def retry(self, job_id: str) -> JobRecord:
        """Put a failed or cancelled job back in the queue with a fresh attempt budget."""
        self.require()
        job_id = self.store.resolve_job_id(job_id)
        with self.store.lock(job_id):
            rec = self.store.read_record(job_id)
            transition(rec, Status.PENDING, "retried by user", attempts=0, preemptions=0,
                       error=None, result=None, finished_at=None, worker_id=None)
            self.store.write_record(rec)
            self.store.add_marker(rec)
        return rec

    def set_priority(self, job_id: str, priority: int) -> JobRecord:
        """Change a job's priority; a pending job moves to its new place in the queue."""
        self.require()
        priority = _check_priority(priority)
        job_id = self.store.resolve_job_id(job_id)
        with self.store.lock(job_id):
            rec = self.store.read_record(job_id)
            if rec.status == Status.PENDING:
                self.store.drop_marker(rec)
                rec.priority = priority
                self.store.write_record(rec)
                self.store.add_marker(rec)
            else:
                rec.priority = priority
                self.store.write_record(rec)
        return rec

    def run_dir(self, job: str | JobRecord) -> RunDir:
        """The run directory of a job (by id or record), wherever the experiment now lives."""
        return self.store.layout.run_dir(job.id if isinstance(job, JobRecord) else job)

    # -- claiming ---------------------------------------------------------------------------------
    def claim(self, worker_id: str, lease_seconds: float = DEFAULT_LEASE_SECONDS,
              refresh_seconds: float = 2.0) -> JobRecord | None:
        """Take the next job in claim order, or None if the queue is empty.

        Markers are listed at most every ``refresh_seconds`` (or when the in-memory batch runs
        out), so a claim costs a rename and one record update whatever the queue length.
        """
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
            if not self.store.take_marker(name):
                self._contended = True  # another worker won this one
                continue
            self._contended = False
            rec = self._start_claimed(name, worker_id, lease_seconds)
            if rec is not None:
                return rec

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

    def claim_job(self, job_id: str, worker_id: str, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> JobRecord:
        """Claim one particular pending job (``job run-one``), through the same steps as :meth:`claim`."""
        rec = self.get(job_id)
        if rec.status != Status.PENDING:
            raise DrExpError(f"job {rec.id} is {rec.status}; only a pending job can be run "
                             "(`dr_exp job retry` puts a failed or cancelled one back)")
        if not self.store.take_marker(rec.marker):
            raise DrExpError(f"job {rec.id} was just claimed by another worker")
        claimed = self._start_claimed(rec.marker, worker_id, lease_seconds)
        if claimed is None:
            raise DrExpError(f"job {rec.id} changed state while being claimed; see `dr_exp job show {rec.id}`")
        return claimed

    def _start_claimed(self, marker: str, worker_id: str, lease_seconds: float) -> JobRecord | None:
        job_id = marker.split("-", 2)[2]
        store = self.store
        try:
            with store.lock(job_id):
                try:
                    rec = store.read_record(job_id)
                except JobNotFound:
                    rec = None
                except CorruptRecord as exc:
                    store.quarantine(exc.path, exc.reason)
                    rec = None
                if rec is None or rec.status != Status.PENDING:
                    # Cancelled (or removed) between listing and claim: the marker is stale.
                    os.unlink(store.claimed_dir / marker)
                    return None
                # The claimed marker becomes the lease (a rename, not a new file).
                store.write_lease(job_id, worker_id, lease_seconds, rec.attempts + 1, claimed_marker=marker)
                transition(rec, Status.RUNNING, f"claimed by {worker_id}", worker_id=worker_id,
                           host=self._hostname, attempts=rec.attempts + 1,
                           started_at=time.time(), finished_at=None)
                # No fsync here: the write is still atomic (readers on any node see the old or
                # the new record), and if a power loss drops it, the job reads as pending with
                # a lease that will expire -- exactly a claimer that died, which recovery re-queues.
                store.write_record(rec, durable=False, via=store.spare_path(job_id), keep_old=True)
                return rec
        except FileNotFoundError:
            return None

    def finish(self, job_id: str, owner: str, attempt: int, status: Status | str, reason: str = "",
               **fields: Any) -> JobRecord | None:
        """Record the end of an attempt, if this worker still owns it (else None: the job was
        cancelled or recovered meanwhile and the outcome is dropped)."""
        store = self.store
        with store.lock(job_id):
            rec = store.read_record(job_id)
            if rec.status != Status.RUNNING or rec.worker_id != owner or rec.attempts != attempt:
                return None
            status = Status(status)
            if status != Status.PENDING:
                fields.setdefault("finished_at", time.time())
            transition(rec, status, reason, **fields)
            # The lease file becomes the new record (rewritten, fsynced, renamed into jobs/):
            # one rename instead of creating a temp file and then unlinking the lease.
            if not store.write_record(rec, via=store.lease_file(job_id)):
                store.remove_lease(job_id)
            if status == Status.PENDING:
                store.add_marker(rec)
        return rec

    # -- recovery ---------------------------------------------------------------------------------
    def recover(self, full_scan: bool = False) -> list[tuple[str, str]]:
        """Re-queue (or fail) jobs whose lease expired; return ``(job_id, what happened)``.

        Expiry compares lease mtimes with the file server's clock (:meth:`ExperimentStore.server_now`).
        ``full_scan`` also finds running records whose lease file is missing altogether.
        """
        if not self.store.exists():
            return []
        store = self.store
        now = store.server_now()
        done: list[tuple[str, str]] = []
        for name in store.list_dir(store.leases_dir):
            if name.startswith(".") or not name.endswith(".json"):
                continue
            job_id = name[:-5]
            lease = store.read_lease(job_id)
            if lease is None:
                continue
            content, mtime = lease
            ttl = float(content.get("lease_seconds", DEFAULT_LEASE_SECONDS))
            if now - mtime > ttl:
                what = self._recover_one(job_id, now)
                if what:
                    done.append((job_id, what))
        # A claimed marker whose claimer died before it wrote a lease.
        for name in store.list_dir(store.claimed_dir):
            job_id = name.split("-", 2)[-1]
            try:
                age = now - os.stat(store.claimed_dir / name).st_ctime
            except FileNotFoundError:
                continue
            if age > DEFAULT_LEASE_SECONDS and not store.lease_path(job_id).exists():
                with store.lock(job_id):
                    rec = self.read_or_none(job_id)
                    if rec is not None and rec.status == Status.PENDING:
                        store.requeue_claimed_marker(name)
                        done.append((job_id, "stale claim returned to the queue"))
        if full_scan:
            for rec in store.iter_records():
                if rec.status == Status.RUNNING and not store.lease_path(rec.id).exists():
                    age = now - os.stat(store.record_path(rec.id)).st_mtime
                    if age > DEFAULT_LEASE_SECONDS:
                        what = self._recover_one(rec.id, now, lease_missing=True)
                        if what:
                            done.append((rec.id, what))
        return done

    def read_or_none(self, job_id: str) -> JobRecord | None:
        """The record, or None if it is missing or unreadable."""
        try:
            return self.store.read_record(job_id)
        except (JobNotFound, CorruptRecord):
            return None

    def _recover_one(self, job_id: str, now: float, lease_missing: bool = False) -> str | None:
        store = self.store
        with store.lock(job_id):
            lease = store.read_lease(job_id)
            if not lease_missing:
                if lease is None:
                    return None
                content, mtime = lease
                if now - mtime <= float(content.get("lease_seconds", DEFAULT_LEASE_SECONDS)):
                    return None  # refreshed meanwhile
            rec = self.read_or_none(job_id)
            if rec is None or rec.status != Status.RUNNING:
                store.remove_lease(job_id)
                if rec is not None and rec.status == Status.PENDING:
                    # Its claimer died between taking the lease and recording `running`.
                    if not store.requeue_claimed_marker(rec.marker):
                        store.add_marker(rec, exist_ok=True)
                    return "claimer died before starting it; returned to the queue"
                return None
            checkpoint = last_checkpoint(store.run_dir(job_id)) or rec.resume_from
            lost = f"worker {rec.worker_id} lost (lease expired)"
            if rec.failed_attempts < rec.max_attempts:
                transition(rec, Status.PENDING, lost, resume_from=checkpoint, worker_id=None)
                store.write_record(rec)
                store.remove_lease(job_id)
                store.add_marker(rec)
                return f"re-queued (attempt {rec.attempts} of {rec.max_attempts} lost)"
            transition(rec, Status.FAILED, lost, finished_at=time.time(),
                       error={"type": "WorkerLost", "message": f"{lost}; no attempts left"})
            store.write_record(rec)
            store.remove_lease(job_id)
            return "failed (no attempts left)"

    def require(self) -> None:
        """Raise a clear error if the experiment directory does not exist."""
        if not self.store.exists():
            raise StorageError(
                f"no experiment at {self.store.root}; check --base-path/--experiment "
                "(or DR_EXP_BASE_PATH/DR_EXP_EXPERIMENT), or submit a job first"
            )


def last_checkpoint(run_dir: str | os.PathLike[str]) -> str | None:
    """``checkpoints/last.ckpt`` if present, else the newest ``last.ckpt`` below ``checkpoints/``
    (multi-stage runs keep one folder per stage), else the newest checkpoint file there."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if last.is_file():
        return str(last)
    if not ckpt_dir.is_dir():
        return None
    for pattern in ("**/last.ckpt", "**/*"):
        files = [p for p in ckpt_dir.glob(pattern) if p.is_file() and not p.name.startswith(".")]
        if files:
            return str(max(files, key=lambda p: p.stat().st_mtime))
    return None
