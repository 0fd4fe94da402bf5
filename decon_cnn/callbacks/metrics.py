"""One summary per epoch, to a :class:`StructuredLoggerProtocol` (metrics rows) and to stdout
(one human line). Both see the same row:

- ``lr``: the learning rate the epoch trained with (read when the epoch starts: Lightning steps
  epoch schedulers before ``on_train_epoch_end``, so reading it there gives the next epoch's);
- ``train/*`` metrics, ``val/*`` only on epochs that validated (``callback_metrics`` keeps the
  last values, which would otherwise repeat on epochs without validation);
- ``images_per_s`` (training images over training time, all ranks together: each of N DDP
  ranks trains an equal share) and ``epoch_time_s`` (with validation);
- on a GPU, ``gpu/util_pct``, ``gpu/memory_mb`` and ``gpu/peak_memory_mb`` (:mod:`decon_cnn.gpu`;
  rank zero's device); none of them on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch

from decon_cnn.gpu import gpu_stats, software
from decon_cnn.protocols import StructuredLoggerProtocol


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            out[key] = float(value.item())
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def current_lr(trainer: pl.Trainer) -> float | None:
    for opt in trainer.optimizers:
        for group in opt.param_groups[:1]:
            return float(group["lr"])
    return None


def batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return len(batch)
    if isinstance(batch, list | tuple) and batch:
        return batch_size(batch[0])
    if isinstance(batch, Mapping) and batch:
        return batch_size(next(iter(batch.values())))
    return 0


class EpochSummary(pl.Callback):
    """Collects the epoch's row; subclasses decide where it goes (:meth:`emit`)."""

    def __init__(self, extra: Mapping[str, Any] | None = None) -> None:
        self.extra = dict(extra or {})
        self._t0 = self._t_train = 0.0
        self._images = 0
        self._lr: float | None = None
        self._val: dict[str, float] = {}
        self._val_epoch = -1
        self._epoch = -1

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = self._t_train = time.perf_counter()
        self._images = 0
        self._lr = current_lr(trainer)
        self._epoch = trainer.current_epoch

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._epoch != trainer.current_epoch:  # resumed mid-epoch: Lightning skips on_train_epoch_start
            self.on_train_epoch_start(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._images += batch_size(batch)
        self._t_train = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here (not in on_validation_epoch_end) callback_metrics hold this validation's values.
        if trainer.sanity_checking:
            return
        self._val = {k: v for k, v in scalars(trainer.callback_metrics).items() if k.startswith("val/")}
        self._val_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        now = time.perf_counter()
        row: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step, "phase": "epoch",
                               **self.extra}
        if self._lr is not None:
            row["lr"] = self._lr
        row.update({k: v for k, v in scalars(trainer.callback_metrics).items() if not k.startswith(("val/", "test/"))})
        if self._val_epoch == trainer.current_epoch:
            row.update(self._val)
        train_time = self._t_train - self._t0
        if self._images and train_time > 0:
            row["images_per_s"] = self._images * trainer.world_size / train_time
        row["epoch_time_s"] = now - self._t0
        row.update(gpu_stats(pl_module.device))
        self.emit_epoch(trainer, row)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step, "phase": "test", **self.extra}
        row.update({k: v for k, v in scalars(trainer.callback_metrics).items() if k.startswith("test/")})
        self.emit_test(trainer, row)

    def emit_epoch(self, trainer: pl.Trainer, row: dict[str, Any]) -> None:
        raise NotImplementedError

    def emit_test(self, trainer: pl.Trainer, row: dict[str, Any]) -> None:
        raise NotImplementedError


class DrExpMetricsCallback(EpochSummary):
    """Metrics rows (``phase: epoch``, ``phase: test``, optionally ``phase: train_batch`` every
    N batches) and lifecycle events to a :class:`StructuredLoggerProtocol`.

    Rows carry ``epoch``, ``step`` and ``phase`` plus any ``extra`` fields (e.g. ``stage``).
    Only rank zero logs.
    """

    def __init__(self, logger: StructuredLoggerProtocol, every_n_batches: int = 0,
                 extra: Mapping[str, Any] | None = None) -> None:
        if not isinstance(logger, StructuredLoggerProtocol):
            raise TypeError(f"logger {logger!r} does not implement StructuredLoggerProtocol "
                            "(log_event, log_metrics, log_error)")
        if every_n_batches < 0:
            raise ValueError(f"every_n_batches must be >= 0, got {every_n_batches!r}")
        super().__init__(extra)
        self.logger = logger
        self.every_n_batches = every_n_batches

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.logger.log_event("train_start", {"epoch": trainer.current_epoch, "step": trainer.global_step,
                                                  "max_epochs": trainer.max_epochs, "world_size": trainer.world_size,
                                                  "device": str(pl_module.device), **software(), **self.extra})

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.every_n_batches or not trainer.is_global_zero or (batch_idx + 1) % self.every_n_batches:
            return
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step, "phase": "train_batch", **self.extra}
        if isinstance(loss, torch.Tensor):
            row["train/loss_step"] = float(loss.detach().item())
        row.update(gpu_stats(pl_module.device))
        self.logger.log_metrics(row)

    def emit_epoch(self, trainer: pl.Trainer, row: dict[str, Any]) -> None:
        self.logger.log_metrics(row)
        self.logger.log_event("epoch_end", {"epoch": trainer.current_epoch, **self.extra})

    def emit_test(self, trainer: pl.Trainer, row: dict[str, Any]) -> None:
        self.logger.log_metrics(row)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.logger.log_event("train_end", {"epoch": trainer.current_epoch, "step": trainer.global_step,
                                                **self.extra})


def _pair(row: Mapping[str, Any], split: str) -> str:
    parts = [f"{name} {row[f'{split}/{name}']:.4f}" for name in ("loss", "acc") if f"{split}/{name}" in row]
    return f"{split} " + " ".join(parts) if parts else ""


class EpochPrinter(EpochSummary):
    """One line per epoch on stdout (dr_exp sends a job's stdout to ``logs/train.log``)::

        epoch 2/3  train loss 0.8123 acc 0.7012  val loss 0.4511 acc 0.9000  lr 0.05  8123 img/s  1.2s
    """

    def emit_epoch(self, trainer: pl.Trainer, row: dict[str, Any]) -> None:
        stage = f"[{self.extra['stage']}] " if "stage" in self.extra else ""
        parts = [f"{stage}epoch {row['epoch'] + 1}/{trainer.max_epochs}", _pair(row, "train"), _pair(row, "val")]
        if "lr" in row:
            parts.append(f"lr {row['lr']:.4g}")
        if "images_per_s" in row:
            parts.append(f"{row['images_per_s']:.0f} img/s")
        if "gpu/peak_memory_mb" in row:
            util = f"{row['gpu/util_pct']:.0f}% " if "gpu/util_pct" in row else ""
            parts.append(f"gpu {util}{row['gpu/peak_memory_mb']:.0f} MB peak")
        parts.append(f"{row['epoch_time_s']:.1f}s")
        print("  ".join(p for p in parts if p), flush=True)

    def emit_test(self, trainer: pl.Trainer, row: dict[str, Any]) -> None:
        extra = [f"{k.split('/', 1)[1]} {v:.4f}" for k, v in row.items()
                 if k.startswith("test/") and k not in ("test/loss", "test/acc")]
        print("  ".join([_pair(row, "test"), *extra]), flush=True)
