"""What runs inside a job's child process: redirect output, call the trainer, write the outcome.

The child reports back through files only (``result.json``, ``error.txt`` and an outcome file
the worker reads), so the worker can tell a clean finish from a crash by whether the outcome
file exists, whatever happened to the child.
"""

from __future__ import annotations

import ctypes
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
# child starts with Hydra already imported.
import hydra.utils
from hydra.errors import InstantiationException

from dr_exp import preemption
from dr_exp.logging.structured_logger import StructuredLogger
from dr_exp.store import atomic_write

EXIT_OK = 0
EXIT_FAILED = 1


class TrainerExit(Exception):
    """The trainer called ``sys.exit``."""


def outcome_path(run_dir: str | os.PathLike[str], attempt: int) -> Path:
    return Path(run_dir) / f".outcome-{attempt}.json"


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
                os._exit(137)
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


def run_job(spec: dict[str, Any]) -> int:
    """Run one attempt of one job. ``spec`` carries the config and the runtime ids.

    Returns the process exit status; in the foreground (``job run-one``) it is returned, in
    a child it becomes the exit code.
    """
    run_dir = Path(spec["storage_path"])
    attempt = int(spec["attempt"])
    run_dir.mkdir(parents=True, exist_ok=True)
    os.environ["DR_EXP_JOB_ID"] = spec["job_id"]
    os.environ["DR_EXP_WORKER_ID"] = spec["worker_id"]
    os.environ["DR_EXP_ATTEMPT"] = str(attempt)
    os.environ["DR_EXP_RUN_DIR"] = str(run_dir)
    config = dict(spec["config"])
    if spec.get("resume_from"):
        config["resume_from"] = spec["resume_from"]
    logger = StructuredLogger(run_dir, spec["job_id"], spec["worker_id"])
    logger.log_config(config)
    logger.log_event("resumed" if spec.get("resume_from") else "started",
                     {"attempt": attempt, "pid": os.getpid(), "resume_from": spec.get("resume_from"),
                      "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")})
    out = outcome_path(run_dir, attempt)
    t0 = time.time() - 1.0  # mtime granularity
    try:
        try:
            result = hydra.utils.call(config, job_id=spec["job_id"], worker_id=spec["worker_id"],
                                      storage_path=str(run_dir), _recursive_=False)
        except InstantiationException as exc:
            # Hydra wraps what the trainer raised; report the trainer's own exception.
            raise (exc.__cause__ or exc) from None
    except preemption.Preempted as exc:
        logger.log_event("checkpoint", {"path": exc.resume_from, "reason": "preempted"})
        atomic_write(out, json.dumps({"status": "preempted", "resume_from": exc.resume_from}))
        return EXIT_OK
    except BaseException as exc:  # noqa: BLE001 - everything a trainer raises is a job failure
        if isinstance(exc, SystemExit):
            exc = TrainerExit(f"trainer called sys.exit({exc.code!r}) instead of returning a result")
        error_txt = run_dir / "error.txt"
        if not error_txt.exists() or error_txt.stat().st_mtime < t0:  # the trainer did not log it itself
            logger.log_error(exc, {"attempt": attempt})
        atomic_write(out, json.dumps({
            "status": "failed", "type": type(exc).__name__, "message": str(exc)[:2000] or repr(exc),
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-8000:],
        }))
        return EXIT_FAILED
    if not isinstance(result, dict):
        result = {"metrics": {}, "artifacts": {}, "value": result}
    result = json.loads(json.dumps(result, default=str))  # plain JSON, whatever came back
    atomic_write(run_dir / "result.json", json.dumps(result, indent=2) + "\n")
    atomic_write(out, json.dumps({"status": "completed"}))
    return EXIT_OK


def child_main(spec: dict[str, Any]) -> None:
    """Entry point of the job's child process (run through the worker's fork server)."""
    os.setpgrp()  # a SIGINT at the worker's terminal is the worker's to handle, not the job's
    _die_with(int(spec["worker_pid"]))
    preemption.reset()
    preemption.install_handler(signal.SIGUSR1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _redirect_output(Path(spec["storage_path"]) / "logs" / "train.log")
    print(f"[dr_exp] job {spec['job_id']} attempt {spec['attempt']} on worker {spec['worker_id']}", flush=True)
    code = run_job(spec)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
