"""The Python API over one experiment: what the CLI and the worker use, and the only writer of
job records.

- Submitting: :meth:`Experiment.submit`, :meth:`~Experiment.sweep`, :meth:`~Experiment.submit_configs`.
- Reading: :meth:`~Experiment.get`, :meth:`~Experiment.list`, :meth:`~Experiment.counts`,
  :meth:`~Experiment.run_dir`.
- Changing a job: :meth:`~Experiment.cancel`, :meth:`~Experiment.retry`,
  :meth:`~Experiment.set_priority`, :meth:`~Experiment.set_sync_state`.
- The lifecycle of an attempt: :meth:`~Experiment.claim` gives an :class:`~dr_exp.job.Attempt`;
  it ends with exactly one of :meth:`~Experiment.complete`, :meth:`~Experiment.fail`,
  :meth:`~Experiment.hand_back` or :meth:`~Experiment.prune`, or is found lost by
  :meth:`~Experiment.recover`. What a failure becomes is decided by :func:`dr_exp.state.next_after`.

Nothing here prints.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dr_exp import compose as _compose
from dr_exp.claim import DEFAULT_REFRESH_SECONDS, Claimer
from dr_exp.errors import CorruptRecord, DrExpError, JobNotFound, StorageError
from dr_exp.job import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_WORKER_LOSSES,
    DEFAULT_PRIORITY,
    Attempt,
    JobRecord,
    canonical_json,
    config_hash,
)
from dr_exp.layout import MAX_PRIORITY, MIN_PRIORITY, Layout, parse_marker
from dr_exp.rundir import RunDir
from dr_exp.state import FINISHED, Ending, Status, next_after, transition
from dr_exp.store import NO_SPACE, ExperimentStore, storage_error
from dr_exp.summary import Summary, SummaryDamaged, block_lines, count_statuses, summary_line

DEFAULT_BASE_PATH = "./dr_exp_runs"
DEFAULT_EXPERIMENT = "default"
DEFAULT_LEASE_SECONDS = 60.0
DEFAULT_HEARTBEAT_SECONDS = 10.0
# Reading the record to record a finished attempt tries this long (s) before giving up on it:
# losing a result to a passing stale read would cost a whole run.
_END_READ_SECONDS = 5.0


def env_float(name: str, default: float) -> float:
    """A positive number of seconds from the environment, or ``default`` when unset."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise DrExpError(f"{name}={raw!r} is not a number of seconds; unset it or give e.g. {name}={default:g}") from None
    if not value > 0 or value == float("inf"):
        raise DrExpError(f"{name}={raw!r} must be a positive number of seconds")
    return value


@dataclass
class SubmitResult:
    """What a submit or sweep did: the jobs written and the duplicates skipped."""

    submitted: list[JobRecord] = field(default_factory=list)
    skipped: list[tuple[dict[str, str] | list[str], str]] = field(default_factory=list)  # (point, existing id)
    sweep_id: str | None = None


def check_priority(priority: Any) -> int:
    if type(priority) is not int or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise DrExpError(f"priority {priority!r} is out of range; "
                         f"use an integer from {MIN_PRIORITY} to {MAX_PRIORITY} (higher runs first)")
    return priority


def parse_tags(tags: str | Iterable[str] | None) -> list[str]:
    if tags is None:
        return []
    items = tags.split(",") if isinstance(tags, str) else list(tags)
    out = [t.strip() for t in items if isinstance(t, str) and t.strip()]
    if len(out) != len([t for t in items if not isinstance(t, str) or t.strip()]):
        raise DrExpError(f"tags {tags!r} must be strings; separate tags with commas: --tags a,b")
    for tag in out:
        if any(c.isspace() for c in tag):
            raise DrExpError(f"tag {tag!r} contains whitespace; separate tags with commas: --tags a,b")
    return out


class Experiment:
    """One experiment directory: ``<base_path>/<experiment>/``."""

    def __init__(self, base_path: str | os.PathLike[str] | None = None, experiment: str | None = None) -> None:
        if experiment == "":
            raise StorageError("empty experiment name; give --experiment NAME (or unset it for 'default')")
        base_path = base_path or os.environ.get("DR_EXP_BASE_PATH") or DEFAULT_BASE_PATH
        experiment = experiment or os.environ.get("DR_EXP_EXPERIMENT") or DEFAULT_EXPERIMENT
        self.store = ExperimentStore(base_path, experiment)
        self.layout: Layout = self.store.layout
        self.name = self.store.experiment
        self._claimer = Claimer(self.store, self._begin)
        self._claiming: tuple[str, float] = ("", DEFAULT_LEASE_SECONDS)

    def require(self) -> None:
        """Raise a clear error if the experiment directory does not exist."""
        if not self.store.exists():
            raise StorageError(f"no experiment at {self.store.root}; check --base-path/--experiment "
                               "(or DR_EXP_BASE_PATH/DR_EXP_EXPERIMENT), or submit a job first")

    # -- submitting ----------------------------------------------------------------------------
    def submit(self, config_path: str, config_name: str, overrides: str | list[str] | None = None,
               priority: int = DEFAULT_PRIORITY, tags: str | Iterable[str] | None = None,
               force: bool = False, max_attempts: int | None = None, timeout: float | None = None,
               searchpath: Iterable[str] = (), max_worker_losses: int | None = None) -> SubmitResult:
        """Compose one config and queue it (skipped if an identical run is already active or done)."""
        queueing = self._queueing(priority, tags, max_attempts, timeout, max_worker_losses)
        composed = [_compose.compose_one(config_path, config_name, _compose.split_overrides(overrides),
                                         searchpath=searchpath)]
        return self._queue(composed, force, None, **queueing)

    def sweep(self, config: str, params: str | list[str], overrides: str | list[str] | None = None,
              priority: int = DEFAULT_PRIORITY, tags: str | Iterable[str] | None = None,
              force: bool = False, max_attempts: int | None = None, timeout: float | None = None,
              searchpath: Iterable[str] = (), max_worker_losses: int | None = None) -> SubmitResult:
        """Expand ``params`` with Hydra's sweeper semantics, compose every point, then queue all
        of them (or none, if any point or any write fails)."""
        queueing = self._queueing(priority, tags, max_attempts, timeout, max_worker_losses)
        path = _compose.sweep_config_file(config, "exp_configs/noop.yaml")
        fixed = _compose.split_overrides(overrides)
        grid, typed = _compose.expand_sweep(params)
        composed = _compose.compose_many(path.parent, path.stem, [fixed + p for p in grid], _compose.sweep_keys(params),
                                         searchpath=searchpath, typed=typed)
        return self._queue(composed, force, uuid.uuid4().hex[:12], **queueing)

    def submit_configs(self, configs: list[dict[str, Any] | _compose.ComposedConfig], priority: int = DEFAULT_PRIORITY,
                       tags: str | Iterable[str] | None = None, force: bool = False,
                       max_attempts: int | None = None, timeout: float | None = None,
                       max_worker_losses: int | None = None, sweep_id: str | None = None) -> SubmitResult:
        """Queue already-composed configs: plain dicts with ``_target_`` (e.g. built in Python), or
        :class:`~dr_exp.compose.ComposedConfig` from :func:`~dr_exp.compose.compose_many`, whose
        source, sweep params and study trial the records keep."""
        queueing = self._queueing(priority, tags, max_attempts, timeout, max_worker_losses)
        composed = []
        checked: dict[Any, Any] = {}
        shared: dict[int, Any] = {}
        for i, config in enumerate(configs):
            if isinstance(config, _compose.ComposedConfig):
                composed.append(config)
                continue
            plain, canonical = _compose.plain_config(config, f"config #{i}", shared)
            _compose.check_config(plain, f"config #{i}", checked)
            composed.append(_compose.ComposedConfig("", "", [], plain, {}, canonical))
        return self._queue(composed, force, sweep_id, **queueing)

    @staticmethod
    def _queueing(priority: int, tags: str | Iterable[str] | None, max_attempts: int | None,
                  timeout: float | None, max_worker_losses: int | None) -> dict[str, Any]:
        """The queueing options, checked before anything is composed or written."""
        if max_attempts is not None and (type(max_attempts) is not int or max_attempts < 1):
            raise DrExpError(f"--max-attempts {max_attempts} must be an integer of at least 1")
        if max_worker_losses is not None and (type(max_worker_losses) is not int or max_worker_losses < 1):
            raise DrExpError(f"--max-worker-losses {max_worker_losses} must be an integer of at least 1")
        if timeout is not None and not (isinstance(timeout, (int, float)) and 0 < timeout < float("inf")):
            raise DrExpError(f"--timeout {timeout} must be a positive number of seconds")
        return {"priority": check_priority(priority), "tags": parse_tags(tags), "max_attempts": max_attempts,
                "timeout": timeout, "max_worker_losses": max_worker_losses}

    def submit_composed(self, composed: list[_compose.ComposedConfig], rerun_of: list[dict[str, Any]],
                        priority: int = DEFAULT_PRIORITY, tags: str | Iterable[str] | None = None,
                        max_attempts: int | None = None, timeout: float | None = None,
                        max_worker_losses: int | None = None, sweep_id: str | None = None) -> SubmitResult:
        """Queue configs composed earlier, exactly as they were (source, overrides and sweep
        parameters kept): a rerun, so duplicates are never skipped. ``rerun_of[i]`` says what the
        i-th one reruns; it goes into that record's provenance."""
        queueing = self._queueing(priority, tags, max_attempts, timeout, max_worker_losses)
        checked: dict[str, Any] = {}
        for i, c in enumerate(composed):
            _compose.check_config(_compose.plain_config(c.config, f"config #{i}")[0], f"config #{i}", checked)
        return self._queue(composed, True, sweep_id, rerun_of=rerun_of, **queueing)

    def _queue(self, composed: list[_compose.ComposedConfig], force: bool, sweep_id: str | None, *,
               priority: int, tags: list[str], max_attempts: int | None, timeout: float | None,
               max_worker_losses: int | None, rerun_of: list[dict[str, Any]] | None = None) -> SubmitResult:
        # Provenance once per batch (git state, packages, command line); each record gets a small summary.
        from dr_exp import provenance  # only submitting needs it (git, package versions)

        capture = provenance.capture_submit((c.config_path, str(c.config.get("_target_", ""))) for c in composed)
        records = []
        for i, c in enumerate(composed):
            config = dict(c.config)
            # Scheduling keys become record fields; no trainer ever sees them.
            attempts = max_attempts or _positive_int(config.pop("max_attempts", None), "max_attempts") \
                or DEFAULT_MAX_ATTEMPTS
            limit = timeout or _positive_number(config.pop("timeout", None), "timeout")
            resources = resources_of(config)
            job_id = str(uuid.uuid4())
            canonical = c.canonical if c.canonical is not None else canonical_json(config)
            record = JobRecord(
                id=job_id, experiment=self.name, config=config, config_hash=config_hash(config, canonical),
                priority=priority, tags=list(tags),
                config_path=c.config_path or None, config_name=c.config_name or None, overrides=c.overrides,
                sweep_id=sweep_id, sweep_params=c.sweep_params, study=c.study, max_attempts=attempts, timeout=limit,
                max_worker_losses=max_worker_losses or DEFAULT_MAX_WORKER_LOSSES, resources=resources,
                storage_path=Layout.run_dir_relative(job_id),
                provenance=capture.summary(c.config_path, str(config.get("_target_", "")),
                                           rerun_of[i] if rerun_of else None))
            record.reuse_config_json(canonical)
            records.append(record)
        self.store.ensure()
        result = SubmitResult(sweep_id=sweep_id)
        existing = {} if force else self._active_duplicates({r.config_hash for r in records})
        seen: set[str] = set()
        for record in records:
            dup = existing.get(record.config_hash) or ("(same sweep)" if record.config_hash in seen and not force else None)
            if dup is not None:
                result.skipped.append((record.sweep_params or record.overrides, dup))
                continue
            seen.add(record.config_hash)
            result.submitted.append(record)
        try:
            if result.submitted:
                capture.save(self.layout)
            self.store.create_jobs(result.submitted)
        except OSError as exc:
            raise storage_error(exc, f"could not queue {len(result.submitted)} jobs in {self.store.root} "
                                "(nothing was queued)") from None
        if len(result.submitted) > 1000:
            try:
                self.fold_summary()
            except OSError:
                pass  # folding is an optimisation; the jobs are queued
        return result

    def _active_duplicates(self, hashes: set[str]) -> dict[str, str]:
        """config hash -> id of a pending, running or completed job with that config."""
        out = {}
        for digest, ids in self.store.index_lookup(hashes).items():
            for job_id in reversed(ids):
                rec = self.read_or_none(job_id)
                if rec is not None and rec.config_hash == digest and \
                        rec.status in (Status.PENDING, Status.RUNNING, Status.COMPLETED):
                    out[digest] = rec.id
                    break
        return out

    # -- reading -------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        """One record by id or unique prefix. Nothing is changed, even if it is unreadable."""
        self.require()
        try:
            return self.store.read_record(self.store.resolve_job_id(job_id))
        except CorruptRecord as exc:
            raise DrExpError(f"record {exc.path} is unreadable ({exc.reason}); "
                             "`dr_exp validate --fix` moves it to quarantine/") from None

    def read_or_none(self, job_id: str) -> JobRecord | None:
        """The record, or None if it is missing or unreadable."""
        try:
            return self.store.read_record(job_id)
        except (JobNotFound, CorruptRecord):
            return None

    def list(self, status: str | Iterable[str] | None = None, tags: str | Iterable[str] | None = None,
             sweep_id: str | None = None, problems: list[str] | None = None) -> list[JobRecord]:
        """Records filtered by status, tags (all must match) and sweep id, in claim order.
        Unreadable records are skipped and described in ``problems``."""
        statuses = parse_statuses(status)
        want_tags = set(parse_tags(tags))
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

    def counts(self, problems: list[str] | None = None, pending_by_gpus: dict[int, int] | None = None
               ) -> dict[str, int]:
        """Jobs per state, from the summary (records are not read); from the records when the
        summary disagrees with them on the number of jobs. ``pending_by_gpus`` is filled with
        the pending jobs per resource class (GPUs needed) on the way."""
        raw: dict[bytes, int] = {}
        by_gpus: dict[int, int] = {}
        seen: list[str] = []
        for block in self._summary_blocks(seen):
            count_statuses(block, raw, by_gpus)
        counts = {s.value: 0 for s in Status}
        if any("the summary lists" in p for p in seen):
            by_gpus.clear()
            for rec in self.store.iter_records(problems):
                counts[rec.status] += 1
                if rec.status == Status.PENDING:
                    by_gpus[rec.gpus] = by_gpus.get(rec.gpus, 0) + 1
        else:
            for status, n in raw.items():
                counts[status.decode()] = n
            if problems is not None:
                problems.extend(seen)
        if pending_by_gpus is not None:
            pending_by_gpus.update(by_gpus)
        return counts

    def summaries(self, status: str | Iterable[str] | None = None, tags: str | Iterable[str] | None = None,
                  sweep_id: str | None = None, problems: list[str] | None = None) -> Iterator[dict[str, Any]]:
        """Summary rows of the jobs (id, status, priority, params, metrics...; see
        :mod:`dr_exp.summary`), filtered, streamed: no record is read, memory does not grow with
        the number of jobs."""
        want_tags = set(parse_tags(tags))
        for line in self.summary_lines(status, problems):
            row = json.loads(line.decode())
            if want_tags and not want_tags.issubset(row.get("tags") or ()):
                continue
            if sweep_id and not (row.get("sweep") or "").startswith(sweep_id):
                continue
            yield row

    def fold_summary(self, force: bool = False) -> str | None:
        """Keep the summary in shape (workers call this now and then; see :mod:`dr_exp.summary`):
        rebuild it from the records if it is damaged, else fold its logs into a new snapshot when
        they have grown. Says what it did, or None."""
        if not self.store.exists():
            return None
        summary = Summary(self.layout)
        damage = summary.damage()
        if not damage:
            try:
                return "folded the job summary" if summary.compact(force) else None
            except SummaryDamaged as exc:
                damage = str(exc)
        return f"rebuilt the job summary from {self.rebuild_summary()} records ({damage})"

    def rebuild_summary(self) -> int:
        """Rebuild the summary from the records alone; returns the number of jobs."""
        self.require()
        return Summary(self.layout).rebuild(self.store.iter_records())

    def summary_lines(self, status: str | Iterable[str] | None = None,
                      problems: list[str] | None = None) -> Iterator[bytes]:
        """The summary's lines (JSON, one job each), filtered by status without parsing them."""
        statuses = parse_statuses(status)
        wanted = {s.encode() for s in statuses} if statuses else None
        for block in self._summary_blocks(problems):
            yield from block_lines(block, wanted)

    def summary_blocks(self, status: str | Iterable[str] | None = None,
                       problems: list[str] | None = None) -> Iterator[bytes]:
        """:meth:`summary_lines` in blocks of whole lines (a few MiB each), for callers that
        search whole blocks instead of looking at every line."""
        statuses = parse_statuses(status)
        wanted = {s.encode() for s in statuses} if statuses else None
        for block in self._summary_blocks(problems):
            if wanted is not None:
                block = b"".join(block_lines(block, wanted))
            if block:
                yield block

    def _summary_blocks(self, problems: list[str] | None) -> Iterator[bytes]:
        if not self.store.exists():
            return
        summary = Summary(self.layout)
        blocks = summary.blocks() if summary.exists() else None
        try:
            first = next(blocks) if blocks is not None else None
        except StopIteration:
            first = None
        except SummaryDamaged as exc:
            if problems is not None:
                problems.append(f"the job summary cannot be trusted ({exc}); read the records instead "
                                "(a worker rebuilds it, or `dr_exp validate --rebuild-index`)")
            blocks = None
        if blocks is None:  # no summary (an experiment from before summaries), or a damaged one
            records = iter(self.store.iter_records(problems))
            while chunk := b"".join(summary_line(rec) for rec in itertools.islice(records, 4096)):
                yield chunk
            return
        if first is not None:
            yield first
        yield from blocks
        if problems is not None:
            n = summary.jobs
            on_disk = self.store.count_records()
            if on_disk != n:
                problems.append(f"the summary lists {n} jobs but {on_disk} records exist (a crash mid-write, or "
                                "files changed by hand); `dr_exp validate --rebuild-index` rebuilds it")

    def live_workers(self, within: float) -> list[dict[str, Any]]:
        """Workers seen within the last ``within`` seconds (they refresh ``logs/<id>.env.json``),
        with their GPU counts. Judged by this machine's clock: a hint, not a lease."""
        now = time.time()
        out = []
        for path in self.layout.logs_dir.glob("*.env.json"):
            try:
                if now - path.stat().st_mtime > within:
                    continue
                info = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(info, dict):
                out.append(info)
        return out

    def run_dir(self, job: str | JobRecord) -> RunDir:
        """The run directory of a job (by id or record), wherever the experiment now lives."""
        return self.layout.run_dir(job.id if isinstance(job, JobRecord) else job)

    # -- changing a job -----------------------------------------------------------------------------
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
                self.store.dequeue(rec)
            else:
                # The worker watches its lease; removing it makes the worker stop the job.
                self.store.remove_lease(job_id, rec.attempts)
        return rec

    def retry(self, job_id: str) -> JobRecord:
        """Put a failed or cancelled job back in the queue with a fresh attempt budget."""
        self.require()
        job_id = self.store.resolve_job_id(job_id)
        with self.store.lock(job_id):
            rec = self.store.read_record(job_id)
            # Attempt numbers are never reused (each attempt has its own lease file), so the
            # budget restarts from here instead of from zero.
            transition(rec, Status.PENDING, "retried by user", attempt_base=rec.attempts, preemptions=0,
                       worker_losses=0, error=None, result=None, finished_at=None, worker_id=None)
            self.run_dir(rec).unpack()  # it will be written to again
            self.store.write_record(rec)
            self.store.enqueue(rec)
        return rec

    def set_priority(self, job_id: str, priority: int) -> JobRecord:
        """Change a job's priority; a pending job moves to its new place in the queue."""
        self.require()
        priority = check_priority(priority)
        job_id = self.store.resolve_job_id(job_id)
        with self.store.lock(job_id):
            rec = self.store.read_record(job_id)
            pending = rec.status == Status.PENDING
            if pending:
                self.store.dequeue(rec)
            rec.priority = priority
            self.store.write_record(rec)
            if pending:
                self.store.enqueue(rec)
        return rec

    def set_sync_state(self, job_id: str, sync: dict[str, Any]) -> None:
        """Record how the job's run directory stands with S3 (never a state change)."""
        with self.store.lock(job_id):
            try:
                rec = self.store.read_record(job_id)
            except (JobNotFound, CorruptRecord):
                return
            rec.sync = sync
            self.store.write_record(rec)

    def rewrite(self, job_id: str) -> JobRecord | None:
        """Write a readable record again as it reads now (``validate --fix`` fills in the fields a
        record lacked with their defaults this way). None if it is missing or unreadable."""
        with self.store.lock(job_id):
            rec = self.read_or_none(job_id)
            if rec is not None:
                self.store.write_record(rec)
        return rec

    # -- claiming ------------------------------------------------------------------------------
    def claim(self, worker_id: str, lease_seconds: float = DEFAULT_LEASE_SECONDS,
              refresh_seconds: float = DEFAULT_REFRESH_SECONDS, gpus: int | None = None) -> Attempt | None:
        """Take the next job in claim order (among those needing at most ``gpus`` GPUs; any when
        None) and start an attempt of it, or None if there is none. A job whose files are
        unusable is skipped (and quarantined if really corrupt)."""
        self._claiming = (worker_id, lease_seconds)
        return self._claimer.claim(refresh_seconds, gpus)

    def claim_job(self, job_id: str | None = None, worker_id: str = "", lease_seconds: float = DEFAULT_LEASE_SECONDS
                  ) -> Attempt:
        """Claim one particular pending job (``job run-one``), through the same steps as
        :meth:`claim`; without ``job_id``, the next one in the queue (DrExpError if it is empty)."""
        if not worker_id:
            raise DrExpError("claim_job needs a worker_id, e.g. claim_job(worker_id='worker-01')")
        if job_id is None:
            attempt = self.claim(worker_id, lease_seconds)
            if attempt is None:
                raise DrExpError(f"no pending job to claim in {self.store.root}")
            return attempt
        rec = self.get(job_id)
        if rec.status != Status.PENDING:
            raise DrExpError(f"job {rec.id} is {rec.status}; only a pending job can be run "
                             "(`dr_exp job retry` puts a failed or cancelled one back)")
        entry = f"g{rec.gpus}/{rec.marker}"
        if not self.store.take(entry):
            raise DrExpError(f"job {rec.id} was just claimed by another worker")
        self._claiming = (worker_id, lease_seconds)
        attempt = self._begin(entry)
        if attempt is None:
            raise DrExpError(f"job {rec.id} changed state while being claimed; see `dr_exp job show {rec.id}`")
        return attempt

    def _begin(self, entry: str) -> Attempt | None:
        """Turn a taken queue entry (``g<N>/<marker>``) into a running attempt, if its job is
        still pending."""
        worker_id, lease_seconds = self._claiming
        gpus, _, marker = entry.partition("/")
        parsed = parse_marker(marker)
        store = self.store
        if parsed is None:
            store.discard_claimed(marker)
            return None
        with store.lock(parsed.job_id):
            try:
                rec: JobRecord | None = store.read_record(parsed.job_id)
            except JobNotFound:
                rec = None
            except CorruptRecord as exc:
                if store.quarantine_if_corrupt(exc) is None:
                    store.release(marker, int(gpus[1:]))  # perhaps a passing stale read: leave it for later
                    return None
                rec = None
            if rec is None or rec.status != Status.PENDING or rec.marker != marker or f"g{rec.gpus}" != gpus:
                store.discard_claimed(marker)  # cancelled, re-prioritised or removed since listed
                return None
            transition(rec, Status.RUNNING, f"claimed by {worker_id}", worker_id=worker_id,
                       host=self.layout.host, attempts=rec.attempts + 1, started_at=time.time(), finished_at=None)
            try:
                return store.begin_attempt(marker, rec, lease_seconds)
            except OSError as exc:
                raise storage_error(exc, f"could not start job {rec.id}; it stays pending") from None

    # -- the end of an attempt --------------------------------------------------------------------
    def owns(self, attempt: Attempt) -> bool:
        """Whether ``attempt`` still owns its job (cheap: its lease file exists)."""
        return self.store.lease_alive(attempt)

    def refresh(self, attempt: Attempt, careful: bool = False) -> bool:
        """Heartbeat ``attempt``'s lease. ``careful`` (after a long gap, e.g. the worker was
        paused) checks under the record's lock that the attempt still owns the job first, so a
        lease that recovery is about to take is never refreshed. False: the attempt is lost."""
        if not careful:
            return self.store.refresh_lease(attempt)
        with self.store.lock(attempt.job_id):
            rec = self.read_or_none(attempt.job_id)
            if rec is None or not _owner(rec, attempt):
                return False
            return self.store.refresh_lease(attempt)

    def complete(self, attempt: Attempt, result: dict[str, Any]) -> JobRecord | None:
        """The attempt succeeded: ``completed`` with ``result``. None if it no longer owned the job
        (cancelled or taken over meanwhile): the outcome is dropped."""
        return self._end(attempt, lambda rec: transition(rec, Status.COMPLETED, "completed", result=result,
                                                         error=None, finished_at=time.time()))

    def fail(self, attempt: Attempt, error: dict[str, Any], ending: Ending = Ending.ERROR) -> JobRecord | None:
        """The attempt failed (``ending``: ERROR, TIMEOUT or FATAL); the policy retries or fails."""
        def apply(rec: JobRecord) -> None:
            new = next_after(rec, ending)
            reason = f"attempt {attempt.number} failed: {error.get('type')}: {error.get('message')}"[:300]
            if new == Status.PENDING:
                transition(rec, new, reason + "; retrying", error=error, worker_id=None)
            else:
                transition(rec, new, reason, error=error, finished_at=time.time())
        return self._end(attempt, apply)

    def hand_back(self, attempt: Attempt, resume_from: str | None, reason: str = "pre-empted") -> JobRecord | None:
        """The attempt stopped on request (pre-emption, the worker's own trouble): ``pending``
        again, resuming from ``resume_from`` (relative to the run directory); costs no attempt."""
        return self._end(attempt, lambda rec: transition(
            rec, next_after(rec, Ending.HANDED_BACK), reason, preemptions=rec.preemptions + 1,
            resume_from=resume_from or rec.resume_from, worker_id=None))

    def prune(self, attempt: Attempt, result: dict[str, Any], reason: str) -> JobRecord | None:
        """The attempt was stopped early by an adaptive sweep's pruner: ``pruned`` (final)."""
        return self._end(attempt, lambda rec: transition(rec, Status.PRUNED, reason, result=result,
                                                         finished_at=time.time()))

    def _end(self, attempt: Attempt, apply: Any) -> JobRecord | None:
        store = self.store
        deadline = time.monotonic() + _END_READ_SECONDS
        while True:
            with store.lock(attempt.job_id):
                try:
                    rec = store.read_record(attempt.job_id)
                except JobNotFound:
                    store.remove_lease(attempt.job_id, attempt.number)  # nothing left to record into
                    return None
                except CorruptRecord as exc:
                    if time.monotonic() < deadline:
                        rec = None
                    else:
                        store.quarantine_if_corrupt(exc)
                        store.remove_lease(attempt.job_id, attempt.number)
                        return None
                if rec is not None:
                    if not _owner(rec, attempt) or not store.lease_alive(attempt):
                        return None
                    apply(rec)
                    try:
                        store.end_attempt(attempt, rec)
                    except OSError as exc:
                        raise storage_error(exc, f"could not record the end of job {rec.id}") from None
                    break
            time.sleep(0.5)
        self._ended(rec)
        return rec

    def _ended(self, rec: JobRecord) -> None:
        """The hook after an attempt's end is recorded: a trial of an adaptive sweep that has
        finished tells its study and asks for the next trial (never raises; see :mod:`dr_exp.study`)."""
        if rec.study is not None and rec.status in FINISHED:
            from dr_exp.study import trial_ended

            trial_ended(self, rec)

    # -- recovery ---------------------------------------------------------------------------------
    def recover(self, full_scan: bool = False, lease_seconds: float | None = None) -> list[tuple[str, str]]:
        """Re-queue (or fail) jobs whose worker stopped heartbeating; see :mod:`dr_exp.recovery`."""
        from dr_exp.recovery import recover

        return recover(self, full_scan, lease_seconds or env_float("DR_EXP_LEASE_SECONDS", DEFAULT_LEASE_SECONDS))

    def lose(self, attempt: Attempt, reason: str) -> JobRecord | None:
        """The attempt's worker was lost (its lease expired): the policy re-queues or fails it.
        Callers have checked, under the record's lock, that the lease really expired."""
        def apply(rec: JobRecord) -> None:
            rec.worker_losses += 1
            checkpoint = self.run_dir(rec).last_checkpoint()
            resume = self.run_dir(rec).relative(checkpoint) if checkpoint else rec.resume_from
            new = next_after(rec, Ending.WORKER_LOST)
            if new == Status.PENDING:
                transition(rec, new, reason, resume_from=resume, worker_id=None)
            else:
                transition(rec, new, f"{reason}; lost {rec.worker_losses} workers, no more allowed",
                           finished_at=time.time(),
                           error={"type": "WorkerLost", "message": f"{reason}; {rec.worker_losses} workers lost"})
        return self._end_locked(attempt, apply)

    def _end_locked(self, attempt: Attempt, apply: Any) -> JobRecord | None:
        """:meth:`_end` for callers that already hold the record's lock."""
        rec = self.read_or_none(attempt.job_id)
        if rec is None or not _owner(rec, attempt):
            return None
        apply(rec)
        self.store.end_attempt(attempt, rec)
        self._ended(rec)
        return rec


def _owner(rec: JobRecord, attempt: Attempt) -> bool:
    return rec.status == Status.RUNNING and rec.attempts == attempt.number and rec.worker_id == attempt.worker_id


def parse_statuses(status: str | Iterable[str] | None) -> set[str] | None:
    if not status:
        return None
    statuses = {s.strip() for s in (status.split(",") if isinstance(status, str) else status)}
    bad = statuses - {s.value for s in Status}
    if bad:
        raise DrExpError(f"unknown status {', '.join(sorted(bad))}; use one of {', '.join(s.value for s in Status)}")
    return statuses


GPU_ACCELERATORS = ("gpu", "cuda")


def resources_of(config: dict[str, Any]) -> dict[str, int]:
    """What a job needs from its worker. ``resources: {gpus: N}`` in the job config (moved into
    the record, so trainers never see it), else ``trainer.devices`` when ``trainer.accelerator``
    is a GPU (a list of device ids counts its length; ``auto``/-1 count as one), else none."""
    given = config.pop("resources", None)
    if given is not None:
        if not isinstance(given, dict) or any(type(v) is not int or v < 0 for v in given.values()):
            raise DrExpError(f"the config's resources: {given!r} must map names to counts, e.g. resources: {{gpus: 2}}")
        return dict(given)
    trainer = config.get("trainer")
    if not isinstance(trainer, dict) or str(trainer.get("accelerator", "")).lower() not in GPU_ACCELERATORS:
        return {}
    devices = trainer.get("devices", 1)
    if isinstance(devices, list):
        return {"gpus": max(1, len(devices))}
    if type(devices) is int and devices > 0:
        return {"gpus": devices}
    return {"gpus": 1}


def _positive_int(value: Any, key: str) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise DrExpError(f"the config's {key}: {value!r} must be an integer of at least 1")
    return value


def _positive_number(value: Any, key: str) -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float) or not value > 0:
        raise DrExpError(f"the config's {key}: {value!r} must be a positive number of seconds")
    return float(value)


__all__ = ["DEFAULT_BASE_PATH", "DEFAULT_EXPERIMENT", "DEFAULT_HEARTBEAT_SECONDS", "DEFAULT_LEASE_SECONDS",
           "FINISHED", "NO_SPACE", "Experiment", "SubmitResult", "env_float"]
