"""A synthetic trainer with a known objective and per-epoch learning curves (no torch), so that
adaptive sweeps, pruning and pre-emption can be tested, demonstrated and measured in seconds.

The final accuracy a configuration can reach is known in closed form, best at ``lr=3e-3``,
``weight_decay=4e-4``, ``dropout=0.1`` and ``arch=large``::

    best = 0.93 + 0.02 [arch == large] - 0.1 log10(lr / 3e-3)^2
           - 0.3 ((weight_decay - 4e-4) / 1e-3)^2 - 0.2 (dropout - 0.1)^2

and epoch ``e`` (0-based) reports ``val/acc = best (1 - exp(-(e + 1) / tau)) + noise`` with
Gaussian noise of standard deviation ``noise``, drawn from the seed, the configuration and the
epoch (a resumed run reports the same values again). ``val/loss`` is ``1 - val/acc``.

Config keys: ``lr``, ``weight_decay``, ``dropout``, ``arch`` (``small`` or ``large``), ``epochs``,
``epoch_seconds`` (sleep per epoch), ``tau``, ``noise``, ``seed``. Each epoch is logged to
``metrics.jsonl`` and reported to the trial (:func:`dr_exp.study.report`), then checkpointed;
pre-emption is honoured between epochs and during the sleep.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

from dr_exp import preemption
from dr_exp.fileio import atomic_write
from dr_exp.logging.structured_logger import StructuredLogger
from dr_exp.study import report

# The worker's fork server imports Optuna once, so a trial's process does not pay for it when it
# first reports.
__dr_exp_preload__ = ["optuna"]

def objective(lr: float, weight_decay: float = 4e-4, dropout: float = 0.1, arch: str = "large") -> float:
    """The accuracy this configuration converges to (without noise)."""
    if lr <= 0:
        raise ValueError(f"lr must be > 0, not {lr!r}")
    return (0.93 + (0.02 if str(arch) == "large" else 0.0) - 0.1 * math.log10(lr / 3e-3) ** 2
            - 0.3 * ((weight_decay - 4e-4) / 1e-3) ** 2 - 0.2 * (dropout - 0.1) ** 2)


def curve(best: float, epoch: int, tau: float) -> float:
    return best * (1.0 - math.exp(-(epoch + 1) / tau))


def _sleep(seconds: float) -> None:
    end = time.monotonic() + seconds
    while not preemption.requested() and (left := end - time.monotonic()) > 0:
        time.sleep(min(0.02, left))


def train(*, job_id: str, worker_id: str, storage_path: str, resume_from: str | None = None,
          lr: float = 1e-2, weight_decay: float = 0.0, dropout: float = 0.0, arch: str = "small",
          epochs: int = 20, epoch_seconds: float = 0.0, tau: float = 3.0, noise: float = 0.003, seed: int = 0,
          **config: Any) -> dict[str, Any]:
    lr, weight_decay, dropout = float(lr), float(weight_decay), float(dropout)
    best = objective(lr, weight_decay, dropout, arch)
    logger = StructuredLogger(storage_path, job_id, worker_id)
    ckpt = Path(storage_path) / "checkpoints" / "last.ckpt"
    start = int(json.loads(Path(resume_from).read_text())["epoch"]) if resume_from else 0
    metrics: dict[str, float] = {}
    for epoch in range(start, int(epochs)):
        if preemption.requested():
            raise preemption.Preempted(str(ckpt))
        _sleep(float(epoch_seconds))
        if preemption.requested():
            raise preemption.Preempted(str(ckpt))  # the checkpoint holds the last finished epoch
        rng = random.Random(f"{seed}|{lr!r}|{weight_decay!r}|{dropout!r}|{arch}|{epoch}")
        acc = curve(best, epoch, float(tau)) + rng.gauss(0.0, float(noise))
        metrics = {"val/acc": acc, "val/loss": 1.0 - acc}
        logger.log_metrics({"epoch": epoch, "step": epoch, "phase": "epoch", **metrics})
        report(metrics, epoch)  # before the checkpoint: an epoch is never checkpointed unreported
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        # Not fsync'd: a checkpoint lost in a power cut only means an epoch trained again.
        atomic_write(ckpt, json.dumps({"epoch": epoch + 1}), durable=False)
    return {"metrics": {**metrics, "epochs": int(epochs)}, "artifacts": {"last_checkpoint": str(ckpt)}}
