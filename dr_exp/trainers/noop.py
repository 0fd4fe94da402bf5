"""A trainer that does (almost) nothing, to check a cluster setup and to exercise the queue.

Config keys (all optional; any other key is accepted and ignored, so ``+x=1,2`` sweeps work):

- ``duration``: seconds to run (default 0), spread over ``steps`` steps when ``steps`` > 0;
- ``steps``: a progress counter; on pre-emption the current step is saved to
  ``checkpoints/last.ckpt`` and a resumed run continues from it;
- ``fail_on_attempt``: an attempt number (or list) on which to fail;
- ``fail_mode``: ``raise`` (default), ``exit`` (``sys.exit(3)``) or ``segfault``;
- ``value``: the metric to return (default: derived from the config);
- ``checkpoint_seconds``: how long saving the pre-emption checkpoint takes;
- ``payload_mb``: write ``checkpoints/payload.ckpt`` of this many MiB (random bytes), to check
  that S3 sync moves large files.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from dr_exp import preemption
from dr_exp.fileio import atomic_write


def _fail(mode: str, attempt: int) -> None:
    if mode == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if mode == "exit":
        sys.exit(3)
    raise RuntimeError(f"noop trainer told to fail on attempt {attempt}")


def train(*, job_id: str, worker_id: str, storage_path: str, duration: float = 0.0, steps: int = 0,
          fail_on_attempt: int | list[int] | None = None, fail_mode: str = "raise",
          value: float | None = None, resume_from: str | None = None, payload_mb: float = 0,
          checkpoint_seconds: float = 0.0,
          **config: Any) -> dict[str, Any]:
    attempt = int(os.environ.get("DR_EXP_ATTEMPT", "1"))
    failing = fail_on_attempt if isinstance(fail_on_attempt, (list, tuple)) else [fail_on_attempt]
    if attempt in [int(a) for a in failing if a is not None]:
        _fail(fail_mode, attempt)

    ckpt = Path(storage_path) / "checkpoints" / "last.ckpt"
    start = 0
    if resume_from and Path(resume_from).is_file():
        start = int(json.loads(Path(resume_from).read_text())["step"])
    step = start
    if steps > 0:
        per_step = float(duration) / steps
        while step < steps:
            if preemption.requested():
                time.sleep(float(checkpoint_seconds))  # a checkpoint that takes its time
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(ckpt, json.dumps({"step": step}))
                raise preemption.Preempted(str(ckpt))
            time.sleep(per_step)
            step += 1
    elif duration:
        time.sleep(float(duration))

    if payload_mb:
        payload = Path(storage_path) / "checkpoints" / "payload.ckpt"
        payload.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(payload, os.urandom(int(float(payload_mb) * 1024 * 1024)))
    if value is None:
        # Deterministic in the config, so sweeps over +x give distinct, checkable numbers.
        value = zlib.crc32(json.dumps(config, sort_keys=True, default=str).encode()) % 1000 / 1000
    return {"metrics": {"score": float(value), "steps_done": step, "start_step": start, "attempt": attempt},
            "artifacts": {}}
