"""The worker: claim a job, run it in a child process, record how it ended, repeat.

Each job runs in its own process, forked from a fork server that has already imported the
heavy modules (torch, Lightning) once, so a crash, OOM kill or segfault in training never takes
the worker down, and a job does not pay the imports again. The worker heartbeats the attempt's
lease from a thread and stops the job the moment the attempt is no longer its own.

How the child ended maps to exactly one lifecycle call (:meth:`Worker._record`): ``complete``,
``fail`` (the policy in :mod:`dr_exp.state` retries or fails), ``hand_back``, or nothing when the
attempt was taken away. Signals: the first SIGTERM/SIGUSR1/SIGINT asks the running job to
checkpoint and hands it back; a second one stops the child at once. Handlers set flags.
"""

from __future__ import annotations

import importlib
import json
import logging
import multiprocessing
import os
import random
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from dr_exp.api import DEFAULT_HEARTBEAT_SECONDS, DEFAULT_LEASE_SECONDS, Experiment, env_float
from dr_exp.errors import DrExpError, StorageError
from dr_exp.fileio import atomic_write
from dr_exp.gpus import visible_gpus
from dr_exp.job import Attempt
from dr_exp.logging.files import attach_log_file
from dr_exp.logging.structured_logger import StructuredLogger
from dr_exp.ranks import killed_by
from dr_exp.rundir import RunDir
from dr_exp.runner import child_main
from dr_exp.state import Ending
from dr_exp.store import NO_SPACE
from dr_exp.study import trial_env
from dr_exp.telemetry import gpu_inventory

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
MAX_IO_BACKOFF = 60.0
FOLD_SECONDS = 300.0  # how often a worker checks whether the job summary should be folded


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class WorkerOptions:
    worker_id: str = field(default_factory=default_worker_id)
    idle_timeout: float = 60.0
    max_jobs: int | None = None
    max_hours: float | None = None
    gpu: str | None = None
    gpus: int | None = None  # GPUs this worker holds (claims only jobs that fit); default: those visible
    lease_seconds: float = field(default_factory=lambda: env_float("DR_EXP_LEASE_SECONDS", DEFAULT_LEASE_SECONDS))
    heartbeat_seconds: float = field(default_factory=lambda: env_float("DR_EXP_HEARTBEAT_SECONDS", DEFAULT_HEARTBEAT_SECONDS))
    poll_seconds: float = 0.5
    preempt_grace: float = field(default_factory=lambda: env_float("DR_EXP_PREEMPT_GRACE", 120.0))
    kill_grace: float = 5.0
    preload: tuple[str, ...] = ()
    sync_interval: float = field(default_factory=lambda: env_float("DR_EXP_SYNC_INTERVAL", 30.0))
    sync_wait: float = field(default_factory=lambda: env_float("DR_EXP_SYNC_WAIT", 60.0))

    def validate(self) -> None:
        for name in ("lease_seconds", "heartbeat_seconds"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise DrExpError(f"--{name.replace('_', '-')} {value!r} must be a positive number of seconds")
        if self.heartbeat_seconds >= self.lease_seconds:
            raise DrExpError(f"heartbeat ({self.heartbeat_seconds:g}s) must be shorter than the lease "
                             f"({self.lease_seconds:g}s); e.g. heartbeat = lease / 6")
        if self.idle_timeout < 0:
            raise DrExpError("--idle-timeout must be >= 0")
        if self.max_jobs is not None and self.max_jobs < 1:
            raise DrExpError("--max-jobs must be >= 1")
        if self.max_hours is not None and self.max_hours <= 0:
            raise DrExpError("--max-hours must be > 0")
        if self.gpus is not None and self.gpus < 0:
            raise DrExpError(f"--gpus {self.gpus} must be >= 0")


class _Heartbeat(threading.Thread):
    """Refreshes one attempt's lease every ``interval`` s; ``lost`` is set once the attempt no
    longer owns its job. After a gap (the process was paused, or starved), the refresh is made
    under the record's lock and only if the attempt still owns the job."""

    def __init__(self, exp: Experiment, attempt: Attempt, interval: float) -> None:
        super().__init__(name=f"dr_exp-heartbeat-{attempt.job_id[:8]}", daemon=True)
        self.exp, self.attempt, self.interval = exp, attempt, interval
        self.lost = threading.Event()
        self._stop_event = threading.Event()

    def run(self) -> None:
        careful_after = self.attempt.lease_seconds / 2
        last_ok = time.monotonic()
        while not self._stop_event.wait(self.interval):
            try:
                ok = self.exp.refresh(self.attempt, careful=time.monotonic() - last_ok > careful_after)
                if ok and time.monotonic() - last_ok > careful_after:
                    ok = self.exp.refresh(self.attempt, careful=True)  # paused right before the refresh?
            except OSError:
                ok = True  # a refresh that failed is not a lost lease; the next one may succeed
            if not ok:
                self.lost.set()
                return
            last_ok = time.monotonic()

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

    def drain(self, respect_backoff: bool = True) -> bool:
        """One pass over the queue; False when retrying now cannot help (a configuration error
        such as a missing bucket or refused credentials)."""
        try:
            report = self.queue.drain(self.handler, respect_backoff=respect_backoff)
        except Exception:  # sync trouble must never stop the worker
            self.log.exception("sync drain failed")
            return True
        for job_id, uploaded in report.done:
            self.log.info("synced %s (%d files uploaded)", job_id, uploaded)
        for job_id, message in report.errors:
            self.log.warning("sync of %s failed (stays queued): %s", job_id, message)
        return report.fatal is None

    def finish(self, own_jobs: set[str], wait: float) -> None:
        """Wait up to ``wait`` s for this worker's own entries; leave the rest queued."""
        self.stopping.set()
        self.wake.set()
        self.join(timeout=wait)
        deadline = time.monotonic() + wait
        while self.queue.pending_for(own_jobs) and time.monotonic() < deadline:
            if not self.drain(respect_backoff=False):
                break  # waiting for a bucket that does not exist helps no one
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
        self._io_backoff = 0.0
        self.gpu_ids: list[str] = []
        self.gpus = 0

    # -- setup ------------------------------------------------------------------------------
    def _setup(self) -> None:
        self.exp.store.ensure()
        attach_log_file(self.log, self.exp.layout.worker_log(self.worker_id))
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals += 1

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

    def _context(self, attempt: Attempt) -> Any:
        """The fork server context, started lazily so its preload can follow the first job."""
        if self._ctx is None:
            preload = ["dr_exp.runner", *self.opts.preload]
            target = str(attempt.record.config.get("_target_", ""))
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
        self._setup()
        if self.opts.gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(self.opts.gpu)
        self.gpu_ids = visible_gpus()
        self.gpus = self.opts.gpus if self.opts.gpus is not None else len(self.gpu_ids)
        try:
            self._record_environment()
            self._start_sync()
            return self._loop()
        finally:
            self._teardown()

    def _loop(self) -> int:
        deadline = time.monotonic() + self.opts.max_hours * 3600 if self.opts.max_hours else None
        idle_since = time.monotonic()
        next_recover = 0.0
        self.fold_seconds = env_float("DR_EXP_FOLD_SECONDS", FOLD_SECONDS)
        next_fold = time.monotonic() + self.fold_seconds * random.uniform(0, 1)
        self.log.info("worker %s started (pid %d, experiment %s)", self.worker_id, os.getpid(), self.exp.store.root)
        while not self.signals:
            if self.opts.max_jobs is not None and self.jobs_done >= self.opts.max_jobs:
                self.log.info("max jobs (%d) done; exiting", self.opts.max_jobs)
                return 0
            if deadline is not None and not self._time_for_another(deadline):
                self.log.info("max hours reached (or too little left for another job); exiting")
                return 0
            now = time.monotonic()
            try:
                if now >= next_recover:
                    for job_id, what in self.exp.recover(lease_seconds=self.opts.lease_seconds):
                        self.log.info("recovered %s: %s", job_id, what)
                    next_recover = now + max(1.0, self.opts.lease_seconds / 2)
                    self._alive()
                if now >= next_fold:  # jittered, so a thousand workers do not look at once
                    what = self.exp.fold_summary()
                    if what:
                        self.log.info("%s", what)
                    next_fold = now + self.fold_seconds * random.uniform(0.5, 1.5)
                attempt = self.exp.claim(self.worker_id, self.opts.lease_seconds, gpus=self.gpus)
            except (StorageError, OSError) as exc:
                self._io_trouble(exc, deadline)
                continue
            self._io_backoff = 0.0
            if attempt is None:
                if time.monotonic() - idle_since >= self.opts.idle_timeout:
                    self.log.info("queue empty for %.0fs; exiting", self.opts.idle_timeout)
                    return 0
                time.sleep(self.opts.poll_seconds)
                continue
            self.execute(attempt)
            self.jobs_done += 1
            idle_since = time.monotonic()
        self.log.info("stopping on signal")
        return 0

    def _io_trouble(self, exc: BaseException, deadline: float | None) -> None:
        """The experiment directory cannot be written (full disk, quota...): log once, back off."""
        if not self._io_backoff:
            self.log.error("cannot write the experiment directory, backing off: %s", exc)
            print(f"worker {self.worker_id}: {exc}; backing off and retrying", file=sys.stderr, flush=True)
        self._io_backoff = min(MAX_IO_BACKOFF, max(1.0, self._io_backoff * 2))
        end = time.monotonic() + self._io_backoff
        while time.monotonic() < end and not self.signals and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.2)

    def _teardown(self) -> None:
        if self._sync is not None:
            self._sync.finish(self._own_jobs, 5.0 if self.signals >= 2 else self.opts.sync_wait)
        self.log.info("worker %s exits after %d jobs", self.worker_id, self.jobs_done)

    def _alive(self) -> None:
        """Refresh the env file's mtime: `dr_exp status` counts workers seen lately (and their GPUs)."""
        try:
            os.utime(self.exp.layout.worker_env(self.worker_id))
        except OSError:
            pass

    def _time_for_another(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        typical = sum(self._durations) / len(self._durations) if self._durations else 0.0
        return left > typical

    def _record_environment(self) -> None:
        env = {k: v for k, v in os.environ.items()
               if k.startswith(("SLURM_", "CUDA_", "DR_EXP_")) or k in ("GPU_DEVICE_ORDINAL", "HOSTNAME")}
        info = {"worker_id": self.worker_id, "host": socket.gethostname(), "pid": os.getpid(),
                "started_at": time.time(), "env": env, "gpu_count": self.gpus, **gpu_inventory()}
        try:
            atomic_write(self.exp.layout.worker_env(self.worker_id), json.dumps(info, indent=2), durable=False)
        except OSError as exc:
            self.log.warning("could not write %s: %s", self.exp.layout.worker_env(self.worker_id), exc)

    # -- one job ----------------------------------------------------------------------------
    def execute(self, attempt: Attempt) -> str:
        """Run one claimed attempt to its end; return what was recorded."""
        rec = attempt.record
        run = self.exp.run_dir(rec)
        t0 = time.monotonic()
        heartbeat = _Heartbeat(self.exp, attempt, self.opts.heartbeat_seconds)
        heartbeat.start()
        try:
            run.logs.mkdir(parents=True, exist_ok=True)
            run.outcome(attempt.number).unlink(missing_ok=True)
        except OSError as exc:
            heartbeat.stop()
            return self._hand_back_io(attempt, exc)
        self._event(run, attempt, "claimed", {"host": socket.gethostname()})
        self.log.info("job %s attempt %d started%s", rec.id, attempt.number,
                      f" (resume from {rec.resume_from})" if rec.resume_from else "")
        spec = {"job_id": rec.id, "worker_id": self.worker_id, "attempt": attempt.number, "run_dir": str(run.root),
                "config": rec.config, "resume_from": rec.resume_from, "worker_pid": os.getpid(),
                "lease_path": attempt.lease_path, "lease_seconds": attempt.lease_seconds,
                # A job sees the GPUs it asked for (the first of the worker's), not all of them.
                "cuda_visible_devices": ",".join(self.gpu_ids[:rec.gpus]) if rec.gpus else None,
                "env": trial_env(self.exp, rec)}
        proc = self._context(attempt).Process(target=child_main, args=(spec,), name=f"dr_exp-job-{rec.id[:8]}")
        proc.start()
        if self._sync is not None:
            self._sync.current_job = rec.id
        try:
            ending = self._supervise(proc, attempt, heartbeat)
        finally:
            heartbeat.stop()
            if proc.exitcode is None:
                self._stop_child(proc, grace=0.0)
            _kill_group(proc.pid)  # what the job started (its other ranks, loader workers) never outlives it
            if self._sync is not None:
                self._sync.current_job = None
        elapsed = time.monotonic() - t0
        self._durations.append(elapsed)
        what = self._record(attempt, ending, proc.exitcode, run)
        self.log.info("job %s attempt %d: %s after %.2fs", rec.id, attempt.number, what, elapsed)
        if self._sync is not None:
            self._sync.wake.set()
        return what

    def _supervise(self, proc: Any, attempt: Attempt, heartbeat: _Heartbeat) -> str:
        """Wait for the child; return why it ended: exited, lost, timeout, preempted."""
        started = time.monotonic()
        preempt_at: float | None = None
        next_lease_check = 0.0
        timeout = attempt.record.timeout
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
                if heartbeat.lost.is_set() or not self.exp.owns(attempt):
                    self._stop_child(proc, grace=0.0)
                    return "lost"
            if timeout and now - started > timeout:
                self._stop_child(proc)
                return "timeout"
            if self.signals and preempt_at is None:
                preempt_at = now
                self.log.info("signal received: asking job %s to checkpoint", attempt.job_id)
                self._signal_child(proc, signal.SIGUSR1)
            if preempt_at is not None and (self.signals >= 2 or now - preempt_at > self.opts.preempt_grace):
                self.log.info("stopping job %s now (%s)", attempt.job_id,
                              "second signal" if self.signals >= 2 else "checkpoint grace expired")
                self._stop_child(proc, grace=0.0 if self.signals >= 2 else self.opts.kill_grace)
                return "preempted"

    @staticmethod
    def _signal_child(proc: Any, sig: int) -> None:
        """Signal the job's whole process group (the child leads it), so helpers it started go too."""
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError, TypeError):
            try:
                os.kill(proc.pid, sig)
            except (ProcessLookupError, TypeError):
                pass

    def _stop_child(self, proc: Any, grace: float | None = None) -> None:
        grace = self.opts.kill_grace if grace is None else grace
        if grace > 0:
            self._signal_child(proc, signal.SIGTERM)
            proc.join(grace)
        if proc.exitcode is None:
            self._signal_child(proc, signal.SIGKILL)
            proc.join(10)

    def _record(self, attempt: Attempt, ending: str, exitcode: int | None, run: RunDir) -> str:
        """Turn how the child ended into exactly one lifecycle call."""
        outcome = _read_json(run.outcome(attempt.number)) or {}
        status = outcome.get("status")
        if ending == "lost" or (status == "fenced" and not self.exp.owns(attempt)):
            # Nothing goes into the run directory: it belongs to whoever owns the job now.
            return "stopped: the job was cancelled or taken over"
        if status == "completed":
            result = _read_json(run.result) or {}
            return self._apply(run, attempt, "completed", self.exp.complete, attempt, result)
        if status == "pruned":
            result = {"metrics": outcome.get("metrics") or {}, "pruned_at_epoch": outcome.get("epoch")}
            return self._apply(run, attempt, "pruned", self.exp.prune, attempt, result, str(outcome.get("reason")))
        if ending == "preempted" or status == "preempted":
            checkpoint = outcome.get("resume_from") or run.relative(run.last_checkpoint())
            what = self._apply(run, attempt, "preempted", self.exp.hand_back, attempt, checkpoint, "pre-empted")
            return f"{what} (resume from {checkpoint})" if what == "preempted" else what
        if status == "fenced":
            return self._apply(run, attempt, "handed_back", self.exp.hand_back, attempt,
                               run.relative(run.last_checkpoint()), f"stopped by its fence: {outcome.get('reason')}")
        if ending == "timeout":
            error = {"type": "Timeout", "reason": "timeout", "message": f"timed out after {attempt.record.timeout:g}s"}
            kind = Ending.TIMEOUT
        elif status == "failed":
            if outcome.get("errno") is not None:
                return self._hand_back_io(attempt, OSError(outcome["errno"], outcome.get("message", "")))
            error = {"type": outcome.get("type"), "message": outcome.get("message")}
            kind = Ending.FATAL if outcome.get("fatal") else Ending.ERROR
        else:
            if _disk_full(run.root):
                return self._hand_back_io(attempt, OSError(28, "no space left on device"))
            error = {"type": "ChildCrashed", "message": _describe_exit(exitcode)}
            kind = Ending.ERROR
        tail = run.tail()
        error.update(exitcode=exitcode, attempt=attempt.number, log_tail=tail,
                     traceback_path=self.exp.layout.run_dir_relative(attempt.job_id) + "/" + run.relative(run.error),
                     log_path=self.exp.layout.run_dir_relative(attempt.job_id) + "/" + run.relative(run.train_log))
        try:
            atomic_write(run.error, f"type: {error['type']}\nmessage: {error['message']}\n\n"
                         + (outcome.get("traceback") or f"log tail:\n{tail}\n"))
        except OSError as exc:
            self.log.warning("could not write %s: %s", run.error, exc)
        return self._apply(run, attempt, "failed", self.exp.fail, attempt, error, kind)

    def _apply(self, run: RunDir, attempt: Attempt, event: str, op: Any, *args: Any) -> str:
        """Make the lifecycle call (retrying while the disk is full) and log it as an event."""
        if self._sync is not None:  # durably noted before the outcome is recorded
            self._sync.queue.enqueue(attempt.job_id, event)
        while True:
            try:
                rec = op(*args)
                break
            except StorageError as exc:
                self._io_trouble(exc, None)
                if self.signals >= 2:
                    return "not recorded (stopped while the disk was full)"
        self._io_backoff = 0.0
        if rec is None:
            return "dropped: the job was cancelled or taken over meanwhile"
        self._own_jobs.add(rec.id)
        data = {"status": rec.status}
        if rec.status in ("completed", "pruned"):
            data["metrics"] = (rec.result or {}).get("metrics", {})
        elif rec.error and event == "failed":
            data.update(error_type=rec.error.get("type"), message=rec.error.get("message"))
        self._event(run, attempt, event, data)
        if event == "failed":
            return f"failed ({rec.error.get('type') if rec.error else '?'}), " + (
                "retrying" if rec.status == "pending" else "no attempts left")
        return event if event != "handed_back" else "handed back"

    def _hand_back_io(self, attempt: Attempt, exc: BaseException) -> str:
        self.log.error("job %s: cannot write its run directory (%s); handing it back", attempt.job_id, exc)
        what = self._apply(self.exp.run_dir(attempt.job_id), attempt, "handed_back", self.exp.hand_back, attempt, None,
                           f"worker could not write: {exc}")
        self._io_trouble(exc, None)
        return what

    def _event(self, run: RunDir, attempt: Attempt, event: str, data: dict[str, Any]) -> None:
        try:
            StructuredLogger(run.root, attempt.job_id, self.worker_id, attempt.number).log_event(event, data)
        except OSError as exc:
            self.log.warning("could not log event %s of %s: %s", event, attempt.job_id, exc)

    # -- foreground ---------------------------------------------------------------------------
    def run_one(self, job_id: str) -> str:
        """``job run-one``: claim this one job (it must be pending) and run it here, whatever
        GPUs it asks for (the user chose this machine)."""
        self._setup()
        self.gpu_ids = visible_gpus()
        self.gpus = len(self.gpu_ids)
        try:
            return self.execute(self.exp.claim_job(job_id, self.worker_id, self.opts.lease_seconds))
        finally:
            self._teardown()


def _read_json(path: Any) -> dict[str, Any] | None:
    try:
        with open(path) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _kill_group(pgid: int | None) -> None:
    """SIGKILL what is left of a job's process group (the job's process led it)."""
    try:
        os.killpg(pgid, signal.SIGKILL)  # type: ignore[arg-type]
    except (ProcessLookupError, PermissionError, TypeError):
        pass


def _disk_full(path: Any) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "child process did not exit"
    if code < 0:
        return f"child process {killed_by(code)}"
    return f"child process exited with status {code} without reporting a result"


__all__ = ["NO_SPACE", "Worker", "WorkerOptions", "default_worker_id"]
