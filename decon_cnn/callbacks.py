"""Lightning callbacks: metrics to a StructuredLoggerProtocol, and the pre-emption hook."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch

from decon_cnn.protocols import StructuredLoggerProtocol


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            out[key] = float(value.item())
        elif isinstance(value, (int, float)):
            out[key] = float(value)
    return out


class DrExpMetricsCallback(pl.Callback):
    """One metrics row per epoch (``train/*`` and ``val/*``), optionally a row every N batches.

    Rows carry ``epoch``, ``step`` and ``phase`` plus any ``extra`` fields (e.g. ``stage``).
    Only rank zero logs.
    """

    def __init__(self, logger: StructuredLoggerProtocol, every_n_batches: int = 0,
                 extra: dict[str, Any] | None = None) -> None:
        if not isinstance(logger, StructuredLoggerProtocol):
            raise TypeError(f"logger {logger!r} does not implement StructuredLoggerProtocol "
                            "(log_event, log_metrics, log_error)")
        if every_n_batches < 0:
            raise ValueError(f"every_n_batches must be >= 0, got {every_n_batches!r}")
        self.logger = logger
        self.every_n_batches = every_n_batches
        self.extra = dict(extra or {})

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.logger.log_event("train_start", {"epoch": trainer.current_epoch, "step": trainer.global_step,
                                                  "max_epochs": trainer.max_epochs, **self.extra})

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if not self.every_n_batches or not trainer.is_global_zero or (batch_idx + 1) % self.every_n_batches:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step, "phase": "train_batch", **self.extra}
        if isinstance(loss, torch.Tensor):
            row["train/loss_step"] = float(loss.detach().item())
        self.logger.log_metrics(row)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step, "phase": "epoch", **self.extra}
        lrs = [group["lr"] for opt in trainer.optimizers for group in opt.param_groups[:1]]
        if lrs:
            row["lr"] = lrs[0]
        row.update(_scalars(trainer.callback_metrics))
        self.logger.log_metrics(row)
        self.logger.log_event("epoch_end", {"epoch": trainer.current_epoch, **self.extra})

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.logger.log_event("train_end", {"epoch": trainer.current_epoch, "step": trainer.global_step, **self.extra})


class TrainingPreempted(Exception):
    """Raised out of ``trainer.fit`` by :class:`PreemptionCallback` after a mid-epoch save, so
    Lightning does not count the unfinished epoch as done."""


class PreemptionCallback(pl.Callback):
    """Polls ``should_stop`` after every batch and epoch; when it turns true, saves a checkpoint
    to ``checkpoint_path`` and stops training. At an epoch end it stops cleanly; mid-epoch it
    raises :class:`TrainingPreempted` after saving, and the resumed run finishes that epoch."""

    def __init__(self, should_stop: Callable[[], bool], checkpoint_path: str) -> None:
        self.should_stop = should_stop
        self.checkpoint_path = checkpoint_path
        self.preempted = False

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if not self.preempted and self.should_stop():
            trainer.save_checkpoint(self.checkpoint_path)
            self.preempted = True
            raise TrainingPreempted(self.checkpoint_path)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.preempted and self.should_stop():
            trainer.save_checkpoint(self.checkpoint_path)
            trainer.should_stop = True
            self.preempted = True
