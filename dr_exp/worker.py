"""The worker: claim a job, run it in a child process, record what happened, repeat.

Each job runs in its own process, forked from a fork server that has already imported the
heavy modules (torch, Lightning) once, so a crash, OOM kill or segfault in training never takes
the worker down, and a job does not pay the imports again. The worker survives anything its
child does; it heartbeats the job's lease from a thread and watches the lease to learn that a
job was cancelled or taken away.

Signals: the first SIGTERM/SIGUSR1/SIGINT asks the running job to checkpoint and hands it back
(``pending`` with ``resume_from``); a second one stops the child at once. Handlers set flags.
"""

from __future__ import annotations

import importlib
import json
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dr_exp.api import DEFAULT_HEARTBEAT_SECONDS, DEFAULT_LEASE_SECONDS, Experiment, env_float, last_checkpoint
from dr_exp.errors import DrExpError
from dr_exp.job import JobRecord
from dr_exp.logging.structured_logger import StructuredLogger
from dr_exp.runner import child_main, outcome_path
from dr_exp.state import Status
from dr_exp.store import atomic_write

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class WorkerOptions:
    worker_id: str = field(default_factory=default_worker_id)
    idle_timeout: float = 60.0
    max_jobs: int | None = None
    max_hours: float | None = None
    gpu: str | None = None
    lease_seconds: float = field(default_factory=lambda: env_float("DR_EXP_LEASE_SECONDS", DEFAULT_LEASE_SECONDS))
    heartbeat_seconds: float = field(default_factory=lambda: env_float("DR_EXP_HEARTBEAT_SECONDS", DEFAULT_HEARTBEAT_SECONDS))
    poll_seconds: float = 0.5
    preempt_grace: float = field(default_factory=lambda: env_float("DR_EXP_PREEMPT_GRACE", 120.0))
    kill_grace: float = 5.0
    preload: tuple[str, ...] = ()
    sync_interval: float = field(default_factory=lambda: env_float("DR_EXP_SYNC_INTERVAL", 30.0))
    sync_wait: float = field(default_factory=lambda: env_float("DR_EXP_SYNC_WAIT", 60.0))

    def validate(self) -> None:
        if self.heartbeat_seconds >= self.lease_seconds:
            raise DrExpError(f"heartbeat ({self.heartbeat_seconds:g}s) must be shorter than the lease "
                             f"({self.lease_seconds:g}s); e.g. heartbeat = lease / 6")
        if self.idle_timeout < 0:
            raise DrExpError("--idle-timeout must be >= 0")
        if self.max_jobs is not None and self.max_jobs < 1:
            raise DrExpError("--max-jobs must be >= 1")
        if self.max_hours is not None and self.max_hours <= 0:
            raise DrExpError("--max-hours must be > 0")


class _Heartbeat(threading.Thread):
    """Refreshes one lease every ``interval`` s; ``lost`` is set when the lease disappears."""

    def __init__(self, exp: Experiment, job_id: str, interval: float) -> None:
        super().__init__(name=f"dr_exp-heartbeat-{job_id[:8]}", daemon=True)
        self.exp, self.job_id, self.interval = exp, job_id, interval
        self.lost = threading.Event()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            if not self.exp.store.touch_lease(self.job_id):
                self.lost.set()
                return

    def stop(self) -> None:
        self._stop_event.set()


class _SyncThread(threading.Thread):
    """Drains the experiment's sync queue in the background: after each job, every
    ``interval`` seconds (re-queueing the running job so its metrics and logs go up too),
    and one last time, bounded, when the worker exits."""

    def __init__(self, exp: Experiment, handler: Any, interval: float, log: logging.Logger) -> None:
        super().__init__(name="dr_exp-sync", daemon=True)
        from dr_exp.sync import SyncQueue

        self.queue = SyncQueue(exp)
        self.handler, self.interval, self.log = handler, interval, log
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.current_job: str | None = None

    def run(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait(self.interval)
            self.wake.clear()
            if self.stopping.is_set():
                return
            if self.current_job:
                self.queue.enqueue(self.current_job, "running")
            self.drain()

    def drain(self, respect_backoff: bool = True) -> None:
        try:
            report = self.queue.drain(self.handler, respect_backoff=respect_backoff)
        except Exception:
            self.log.exception("sync drain failed")
            return
        for job_id, uploaded in report.done:
            self.log.info("synced %s (%d files uploaded)", job_id, uploaded)
        for job_id, message in report.errors:
            self.log.warning("sync of %s failed (stays queued): %s", job_id, message)

    def finish(self, own_jobs: set[str], wait: float) -> None:
        """Wait up to ``wait`` s for this worker's own entries; leave the rest queued."""
        self.stopping.set()
        self.wake.set()
        self.join(timeout=wait)
        deadline = time.monotonic() + wait
        while self.queue.pending_for(own_jobs) and time.monotonic() < deadline:
            self.drain(respect_backoff=False)
            if self.queue.pending_for(own_jobs):
                time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        left = self.queue.pending_for(own_jobs)
        if left:
            self.log.warning("%d of this worker's runs are still queued for sync (dr_exp sync run finishes them)", len(left))


class Worker:
    def __init__(self, exp: Experiment, options: WorkerOptions | None = None) -> None:
        self.exp = exp
        self.opts = options or WorkerOptions()
        self.opts.validate()
        self.worker_id = self.opts.worker_id
        self.signals = 0
        self.jobs_done = 0
        self._durations: list[float] = []
        self._ctx: Any = None
        self.log = logging.getLogger(f"dr_exp.worker.{self.worker_id}")
        self._sync: _SyncThread | None = None
        self._own_jobs: set[str] = set()

    def _start_sync(self) -> None:
        from dr_exp.sync import SyncHandler, load_config

        try:
            config = load_config(self.exp.store)
            if config is None:
                return
            handler = SyncHandler(self.exp.store, config)
        except Exception as exc:  # noqa: BLE001 - a worker runs jobs even when sync is broken
            self.log.error("S3 sync disabled: %s", exc)
            return
        self._sync = _SyncThread(self.exp, handler, self.opts.sync_interval, self.log)
        self._sync.start()
        self.log.info("syncing runs to %s", config.s3_uri)

    def _enqueue_sync(self, job_id: str, reason: str) -> dict[str, Any]:
        """Queue the run for upload before its outcome is recorded; returns record fields."""
        if self._sync is None:
            return {}
        self._sync.queue.enqueue(job_id, reason)
        self._own_jobs.add(job_id)
        return {"sync": {"state": "pending", "at": time.time()}}

    # -- setup ------------------------------------------------------------------------------
    def _setup_logging(self) -> None:
        self.exp.store.ensure()
        path = self.exp.store.logs_dir / f"{self.worker_id}.log"
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.log.addHandler(handler)
        self.log.setLevel(logging.INFO)
        self.log.propagate = False

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals += 1

    def _install_signals(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _context(self, rec: JobRecord) -> Any:
        """The fork server context, started lazily so its preload can follow the first job."""
        if self._ctx is None:
            preload = ["dr_exp.runner", *self.opts.preload]
            target = str(rec.config.get("_target_", ""))
            module_name = target.rpartition(".")[0]
            try:
                module = importlib.import_module(module_name)
                preload.extend(getattr(module, "__dr_exp_preload__", ()))
                preload.append(module_name)
            except Exception:  # noqa: BLE001 - the child will report the import error properly
                pass
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(list(dict.fromkeys(preload)))
            self._ctx = ctx
            self.log.info("fork server preloads %s", preload)
        return self._ctx

    # -- main loop --------------------------------------------------------------------------
    def run(self) -> int:
        """Claim and run jobs until idle, out of jobs/hours, or signalled. Returns an exit code."""
        self._setup_logging()
        self._install_signals()
        if self.opts.gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(self.opts.gpu)
        self._record_environment()
        self._start_sync()
        started = time.monotonic()
        deadline = started + self.opts.max_hours * 3600 if self.opts.max_hours else None
        idle_since = time.monotonic()
        next_recover = 0.0
        self.log.info("worker %s started (pid %d, experiment %s)", self.worker_id, os.getpid(), self.exp.store.root)
        while not self.signals:
            if self.opts.max_jobs is not None and self.jobs_done >= self.opts.max_jobs:
                self.log.info("max jobs (%d) done; exiting", self.opts.max_jobs)
                break
            if deadline is not None and not self._time_for_another(deadline):
                self.log.info("max hours reached (or too little left for another job); exiting")
                break
            now = time.monotonic()
            if now >= next_recover:
                for job_id, what in self.exp.recover():
                    self.log.info("recovered %s: %s", job_id, what)
                next_recover = now + max(1.0, self.opts.lease_seconds / 2)
            rec = self.exp.claim(self.worker_id, self.opts.lease_seconds)
            if rec is None:
                if time.monotonic() - idle_since >= self.opts.idle_timeout:
                    self.log.info("queue empty for %.0fs; exiting", self.opts.idle_timeout)
                    break
                time.sleep(self.opts.poll_seconds)
                continue
            self.execute(rec)
            self.jobs_done += 1
            idle_since = time.monotonic()
        if self.signals:
            self.log.info("stopping on signal")
        if self._sync is not None:
            self._sync.finish(self._own_jobs, 5.0 if self.signals >= 2 else self.opts.sync_wait)
        self.log.info("worker %s exits after %d jobs", self.worker_id, self.jobs_done)
        return 0

    def _time_for_another(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        typical = sum(self._durations) / len(self._durations) if self._durations else 0.0
        return left > typical

    def _record_environment(self) -> None:
        env = {k: v for k, v in os.environ.items()
               if k.startswith(("SLURM_", "CUDA_", "DR_EXP_")) or k in ("GPU_DEVICE_ORDINAL", "HOSTNAME")}
        info = {"worker_id": self.worker_id, "host": socket.gethostname(), "pid": os.getpid(),
                "started_at": time.time(), "env": env}
        atomic_write(self.exp.store.logs_dir / f"{self.worker_id}.env.json", json.dumps(info, indent=2), durable=False)

    # -- one job ----------------------------------------------------------------------------
    def execute(self, rec: JobRecord) -> str:
        """Run one claimed job to its end; return what was recorded."""
        store = self.exp.store
        run_dir = store.run_dir(rec.id)
        run_dir.mkdir(parents=True, exist_ok=True)
        events = StructuredLogger(run_dir, rec.id, self.worker_id)
        events.log_event("claimed", {"attempt": rec.attempts, "host": socket.gethostname()})
        self.log.info("job %s attempt %d started%s", rec.id, rec.attempts,
                      f" (resume from {rec.resume_from})" if rec.resume_from else "")
        spec = {"job_id": rec.id, "worker_id": self.worker_id, "attempt": rec.attempts,
                "storage_path": str(run_dir), "config": rec.config, "resume_from": rec.resume_from,
                "worker_pid": os.getpid()}
        out_file = outcome_path(run_dir, rec.attempts)
        out_file.unlink(missing_ok=True)
        t0 = time.monotonic()
        proc = self._context(rec).Process(target=child_main, args=(spec,), name=f"dr_exp-job-{rec.id[:8]}")
        proc.start()
        heartbeat = _Heartbeat(self.exp, rec.id, self.opts.heartbeat_seconds)
        heartbeat.start()
        if self._sync is not None:
            self._sync.current_job = rec.id
        ending = self._supervise(proc, rec, heartbeat)
        heartbeat.stop()
        if self._sync is not None:
            self._sync.current_job = None
        elapsed = time.monotonic() - t0
        self._durations.append(elapsed)
        what = self._record(rec, ending, proc.exitcode, run_dir, out_file, events)
        self.log.info("job %s attempt %d: %s after %.2fs", rec.id, rec.attempts, what, elapsed)
        if self._sync is not None:
            self._sync.wake.set()
        return what

    def _supervise(self, proc: Any, rec: JobRecord, heartbeat: _Heartbeat) -> str:
        """Wait for the child; return why it ended: exited, lost, timeout, preempted."""
        store = self.exp.store
        started = time.monotonic()
        preempt_at: float | None = None
        next_lease_check = 0.0
        while True:
            proc.join(0.05 if time.monotonic() - started < 1 else 0.2)
            if proc.exitcode is not None:
                # A child that died of a signal while the worker itself is being stopped (SLURM
                # signals every process of the allocation) was pre-empted, not broken.
                stopped = self.signals and proc.exitcode < 0
                return "preempted" if preempt_at is not None or stopped else "exited"
            now = time.monotonic()
            if now >= next_lease_check:
                next_lease_check = now + 0.5
                if heartbeat.lost.is_set() or not store.lease_path(rec.id).exists():
                    self._stop_child(proc)
                    return "lost"
            if rec.timeout and now - started > rec.timeout:
                self._stop_child(proc)
                return "timeout"
            if self.signals and preempt_at is None:
                preempt_at = now
                self.log.info("signal received: asking job %s to checkpoint", rec.id)
                self._signal_child(proc, signal.SIGUSR1)
            if preempt_at is not None and (self.signals >= 2 or now - preempt_at > self.opts.preempt_grace):
                self.log.info("stopping job %s now (%s)", rec.id,
                              "second signal" if self.signals >= 2 else "checkpoint grace expired")
                self._stop_child(proc, grace=0.0 if self.signals >= 2 else self.opts.kill_grace)
                return "preempted"

    @staticmethod
    def _signal_child(proc: Any, sig: int) -> None:
        try:
            os.kill(proc.pid, sig)
        except (ProcessLookupError, TypeError):
            pass

    def _stop_child(self, proc: Any, grace: float | None = None) -> None:
        grace = self.opts.kill_grace if grace is None else grace
        self._signal_child(proc, signal.SIGTERM)
        proc.join(grace)
        if proc.exitcode is None:
            self._signal_child(proc, signal.SIGKILL)
            proc.join(10)

    def _record(self, rec: JobRecord, ending: str, exitcode: int | None, run_dir: Path,
                out_file: Path, events: StructuredLogger) -> str:
        outcome = _read_json(out_file) or {}
        if ending == "lost":
            events.log_event("stopped", {"reason": "lease lost (cancelled or recovered elsewhere)"})
            return "stopped: the job was cancelled or taken over"

        def finish(status: Status, reason: str, **kw: Any) -> None:
            kw.update(self._enqueue_sync(rec.id, status.value))
            self.exp.finish(rec.id, self.worker_id, rec.attempts, status, reason, **kw)

        if ending == "timeout":
            msg = f"timed out after {rec.timeout:g}s"
            _write_error(run_dir, "Timeout", msg)
            events.log_event("failed", {"reason": "timeout", "attempt": rec.attempts})
            finish(Status.FAILED, "timeout", error={"type": "Timeout", "reason": "timeout", "message": msg,
                                                     "traceback_path": str(run_dir / "error.txt")})
            return "failed: timeout"
        if outcome.get("status") == "completed":
            result = _read_json(run_dir / "result.json") or {}
            events.log_event("completed", {"attempt": rec.attempts, "metrics": result.get("metrics", {})})
            finish(Status.COMPLETED, "completed", result=result, error=None)
            return "completed"
        if ending == "preempted" or outcome.get("status") == "preempted":
            ckpt = outcome.get("resume_from") or last_checkpoint(run_dir) or rec.resume_from
            events.log_event("preempted", {"attempt": rec.attempts, "resume_from": ckpt})
            finish(Status.PENDING, "preempted", resume_from=ckpt, preemptions=rec.preemptions + 1, worker_id=None)
            return f"preempted (resume from {ckpt})"
        if outcome.get("status") == "failed":
            error = {"type": outcome.get("type"), "message": outcome.get("message")}
        else:
            error = {"type": "ChildCrashed", "message": _describe_exit(exitcode)}
            _write_error(run_dir, error["type"], error["message"])
            events.log_event("failed", {"attempt": rec.attempts, **error})
        error.update(exitcode=exitcode, attempt=rec.attempts, traceback_path=str(run_dir / "error.txt"),
                     log_path=str(run_dir / "logs" / "train.log"), log_tail=_tail(run_dir / "logs" / "train.log"))
        reason = f"attempt {rec.attempts} failed: {error['type']}: {error['message']}"[:300]
        if rec.failed_attempts < rec.max_attempts:
            finish(Status.PENDING, reason + "; retrying", error=error, worker_id=None)
            return f"failed ({error['type']}), retrying"
        finish(Status.FAILED, reason, error=error)
        return f"failed ({error['type']})"

    # -- foreground ---------------------------------------------------------------------------
    def run_one(self, job_id: str) -> str:
        """``job run-one``: claim this one job (it must be pending) and run it here."""
        self._setup_logging()
        self._install_signals()
        claimed = self.exp.claim_job(job_id, self.worker_id, self.opts.lease_seconds)
        return self.execute(claimed)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except (FileNotFoundError, ValueError):
        return None


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "child process did not exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"child process killed by {name}{hint}"
    return f"child process exited with status {code} without reporting a result"


def _tail(path: Path, lines: int = 20) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            return "\n".join(fh.read().decode(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def _write_error(run_dir: Path, type_: str, message: str) -> None:
    tail = _tail(run_dir / "logs" / "train.log")
    atomic_write(run_dir / "error.txt", f"type: {type_}\nmessage: {message}\n\nlog tail:\n{tail}\n")
