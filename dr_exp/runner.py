"""What runs inside a job's child process: redirect output, call the trainer, report the outcome.

The child reports back through files only: the trainer's result in ``result.json`` and how the
attempt ended in its outcome file (:meth:`RunDir.outcome`), which the worker reads. The worker
can tell a clean end from a crash by whether the outcome file exists, whatever happened to the
child, and it alone turns the outcome into a record change (and ``error.txt``).

A job whose trainer config asks for several processes on this node (DDP: see
:func:`dr_exp.ranks.local_world_size`) runs them here: this process is rank 0 and starts the
other ranks as its children, in its process group (:class:`dr_exp.ranks.RankGroup`). Only rank 0
writes the run directory and reports; a rank that dies fails the job, naming the rank.

The trainer contract: a target with a ``config`` (or ``cfg``) parameter receives the composed
config as a ``DictConfig`` plus the runtime keywords it declares (``job_id``, ``worker_id``,
``storage_path``, ``resume_from``, ``attempt``); any other target receives the config's keys as
keywords plus the runtime keywords it accepts (see :mod:`dr_exp.targets`).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

# Imported here, not in run_job: the worker's fork server preloads this module, so every job
# child starts with Hydra and OmegaConf already imported.
import hydra.utils
from hydra.errors import InstantiationException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dr_exp import fence, preemption, provenance
from dr_exp.errors import DrExpError
from dr_exp.fileio import atomic_write
from dr_exp.logging.structured_logger import StructuredLogger
from dr_exp.ranks import RankGroup, local_world_size, merge_failure
from dr_exp.rundir import RunDir
from dr_exp.study import Pruned
from dr_exp.targets import locate, trainer_form

EXIT_OK = 0
EXIT_FAILED = 1
_IO_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)
RANKS_EXIT_SECONDS = 60.0  # how long the other ranks may take to exit after rank 0's trainer returned
_report_lock = threading.Lock()
_reported = False


class TrainerExit(Exception):
    """The trainer called ``sys.exit``."""


def _die_with(parent_pid: int) -> None:
    """Never outlive the worker: a job whose worker is gone will be run again elsewhere."""
    try:  # Linux: SIGKILL when our parent (the worker or its fork server) exits.
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while True:
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os.killpg(os.getpgrp(), signal.SIGKILL)
            except PermissionError:
                pass
            time.sleep(1.0)

    threading.Thread(target=watch, name="dr_exp-parent-watch", daemon=True).start()


def _redirect_output(log_path: Path) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115


def _report(run: RunDir, attempt: int, outcome: dict[str, Any]) -> bool:
    """Write the attempt's outcome, once: the first report wins (rank 0's own, or its watch over
    the other ranks). Returns whether this call wrote it."""
    global _reported
    with _report_lock:
        if _reported:
            return False
        fence.guard()
        atomic_write(run.outcome(attempt), json.dumps(outcome, default=str))
        _reported = True
        return True


def _start_ranks(spec: dict[str, Any], runtime: dict[str, Any], world_size: int, run: RunDir, attempt: int,
                 logger: StructuredLogger) -> RankGroup:
    """Become rank 0 of ``world_size`` and start the others; a rank that dies stops the job."""
    ranks = RankGroup.start({**spec, "run_dir": str(run.root), "resume_from": runtime["resume_from"]}, world_size)
    print(f"[dr_exp] {world_size} ranks: rank 0 is pid {os.getpid()}, ranks 1.. are pids {ranks.pids}", flush=True)
    logger.log_event("ranks_started", {"world_size": world_size, "pids": [os.getpid(), *ranks.pids],
                                       "pgid": os.getpgrp(), "master_port": int(os.environ["MASTER_PORT"])})

    def rank_failed(outcome: dict[str, Any]) -> None:
        if _report(run, attempt, outcome):
            print(f"[dr_exp] stopping the job: {outcome['message']}", flush=True)
            os.killpg(os.getpgrp(), signal.SIGKILL)

    ranks.watch(rank_failed)
    return ranks


def normalize_result(value: Any, run: RunDir) -> dict[str, Any]:
    """What a trainer returned, as the record's ``result``: ``metrics`` (or the guide's
    ``final_metrics``) as plain numbers, ``artifacts`` as a dict (a list is numbered) with paths
    inside the run directory made relative to it, and any other keys kept as JSON."""
    if not isinstance(value, dict):
        value = {"metrics": {}, "value": value}
    out = json.loads(json.dumps(value, default=_plain))
    metrics = out.pop("metrics", None)
    final = out.pop("final_metrics", None)
    out["metrics"] = {**(final if isinstance(final, dict) else {}), **(metrics if isinstance(metrics, dict) else {})}
    artifacts = out.get("artifacts") or {}
    if isinstance(artifacts, list):
        artifacts = {str(i): a for i, a in enumerate(artifacts)}
    if not isinstance(artifacts, dict):
        artifacts = {"value": artifacts}
    out["artifacts"] = {k: run.relative(v) if isinstance(v, str) and os.path.isabs(v) else v
                        for k, v in artifacts.items()}
    for key, v in list(out.items()):
        if key.endswith(("_path", "_model_path")) and isinstance(v, str) and os.path.isabs(v):
            out[key] = run.relative(v)
    return out


def _plain(value: Any) -> Any:
    """json default: numbers hiding in tensors/numpy scalars become numbers, the rest strings."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            pass
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def _call_trainer(config: dict[str, Any], runtime: dict[str, Any]) -> Any:
    target = config["_target_"]
    fn = locate(target, "the job config")
    keys = [k for k in config if not k.startswith("_")]
    form = trainer_form(fn, keys, "the job config")
    given = {k: runtime[k] for k in form.runtime}
    if form.var_keyword:
        # The classic contract: train(*, job_id, worker_id, storage_path, **config), with
        # resume_from among the keywords only when resuming.
        given.update((k, runtime[k]) for k in ("job_id", "worker_id", "storage_path") if k not in given)
        if runtime["resume_from"] is not None:
            given.setdefault("resume_from", runtime["resume_from"])
    if form.config_param is not None:
        cfg = OmegaConf.create({k: v for k, v in config.items() if k != "_target_"})
        return fn(**{form.config_param: cfg}, **given)
    try:
        return hydra.utils.call(OmegaConf.create(config), **given, _recursive_=False)
    except InstantiationException as exc:
        # Hydra wraps what the trainer raised; report the trainer's own exception.
        raise (exc.__cause__ or exc) from None


def _is_fatal(exc: BaseException) -> bool:
    """Errors that would repeat on every attempt: bad config, missing data, an env var unset."""
    if getattr(exc, "retryable", True) is False:
        return True
    return isinstance(exc, (DrExpError, OmegaConfBaseException))


def run_job(spec: dict[str, Any]) -> int:
    """Run one attempt of one job. ``spec`` carries the config and the runtime ids.

    Returns the process exit status; in the foreground (``job run-one``) it is returned, in
    a child it becomes the exit code.
    """
    global _reported
    _reported = False
    run = RunDir(Path(spec["run_dir"]))
    attempt = int(spec["attempt"])
    os.environ.update(DR_EXP_JOB_ID=spec["job_id"], DR_EXP_WORKER_ID=spec["worker_id"],
                      DR_EXP_ATTEMPT=str(attempt), DR_EXP_RUN_DIR=str(run.root), **spec.get("env", {}))
    if spec.get("cuda_visible_devices"):  # before anything initialises CUDA in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = spec["cuda_visible_devices"]
    if spec.get("lease_path"):
        fence.Fence(spec["lease_path"], float(spec["lease_seconds"]), str(run.outcome(attempt))).start()
    logger = StructuredLogger(run.root, spec["job_id"], spec["worker_id"], attempt)
    resume = run.resolve(spec.get("resume_from"))
    logger.log_event("resumed" if resume else "started",
                     {"pid": os.getpid(), "resume_from": spec.get("resume_from"),
                      "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")})
    try:
        provenance.record_attempt(run, spec["job_id"], spec["worker_id"], attempt, spec["config"])
    except Exception as exc:  # noqa: BLE001 - a run without its provenance file still runs
        logger.log_event("provenance_failed", {"error": f"{type(exc).__name__}: {exc}"[:500]})
    runtime = {"job_id": spec["job_id"], "worker_id": spec["worker_id"], "storage_path": str(run.root),
               "resume_from": str(resume) if resume else None, "attempt": attempt}
    ranks: RankGroup | None = None
    try:
        try:
            # Resolved here, on the node that runs the job: ${oc.env:...} lookups included.
            resolved = OmegaConf.to_container(OmegaConf.create(spec["config"]), resolve=True)
            logger.log_config(resolved)  # type: ignore[arg-type]
            world_size = local_world_size(resolved)  # type: ignore[arg-type]
            if world_size > 1:
                ranks = _start_ranks(spec, runtime, world_size, run, attempt, logger)
            result = _call_trainer(spec["config"], runtime)
        except InstantiationException as exc:
            raise (exc.__cause__ or exc) from None
    except preemption.Preempted as exc:
        if ranks is not None:
            ranks.finish(RANKS_EXIT_SECONDS)
        _report(run, attempt, {"status": "preempted", "resume_from": run.relative(exc.resume_from)})
        return EXIT_OK
    except Pruned as exc:  # a trial of an adaptive sweep stopped early by its pruner: a result
        if ranks is not None:
            ranks.finish(RANKS_EXIT_SECONDS)
        _report(run, attempt, {"status": "pruned", "epoch": exc.epoch, "reason": str(exc),
                               "metrics": normalize_result({"metrics": exc.metrics}, run)["metrics"]})
        return EXIT_OK
    except BaseException as exc:  # noqa: BLE001 - everything a trainer raises is a job failure
        if isinstance(exc, SystemExit):
            exc = TrainerExit(f"trainer called sys.exit({exc.code!r}) instead of returning a result")
        io_errno = exc.errno if isinstance(exc, OSError) and exc.errno in _IO_ERRNOS else None
        outcome = {
            "status": "failed", "type": type(exc).__name__, "message": str(exc)[:2000] or repr(exc),
            "fatal": _is_fatal(exc), "errno": io_errno,
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-8000:],
        }
        if ranks is not None:  # rank 0's error may only be the broken connection to a rank that died
            outcome = merge_failure(outcome, ranks.failure(wait=2.0))
        _report(run, attempt, outcome)
        return EXIT_FAILED
    if ranks is not None:
        failure = ranks.finish(RANKS_EXIT_SECONDS)
        if failure is not None:
            _report(run, attempt, failure)
            return EXIT_FAILED
    normalized = normalize_result(result, run)
    fence.guard()
    atomic_write(run.result, json.dumps(normalized, indent=2) + "\n")
    _report(run, attempt, {"status": "completed"})
    return EXIT_OK


def child_main(spec: dict[str, Any]) -> None:
    """Entry point of the job's child process (run through the worker's fork server)."""
    os.setpgrp()  # the job's own process group: it, and anything it starts, can be stopped as one
    _die_with(int(spec["worker_pid"]))
    preemption.reset()
    preemption.install_handler(signal.SIGUSR1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _redirect_output(RunDir(Path(spec["run_dir"])).train_log)
    print(f"[dr_exp] job {spec['job_id']} attempt {spec['attempt']} on worker {spec['worker_id']}", flush=True)
    code = run_job(spec)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

