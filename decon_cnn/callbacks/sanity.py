"""Warnings for runs that are going wrong, configured by the ``sanity:`` block.

Each check adds a flag (``bad_initial_loss``, ``nan_loss``, ``stuck_at_chance``, ``diverging``)
once, a ``sanity_warning`` event through the :class:`StructuredLoggerProtocol`, and a line on
stdout. A NaN or infinite loss also stops the run with :class:`TrainingDiverged` unless
``stop_on_nan`` is off: weights that saw one are NaN from then on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch

from decon_cnn.callbacks.metrics import current_lr
from decon_cnn.errors import TrainingDiverged
from decon_cnn.protocols import StructuredLoggerProtocol


class SanityChecks(pl.Callback):
    """
    Args:
        num_classes: for the expected initial loss ln(num_classes) and chance accuracy; the
            checks that need it are skipped when it is unknown.
        every_n_steps: how often the training loss is read (each read waits for the GPU).
        stop_on_nan: raise :class:`TrainingDiverged` on a NaN/inf loss.
        initial_loss: check the first step's loss is within ``initial_loss_tolerance`` (relative)
            of ln(num_classes); off for runs that start from trained weights.
        chance_after_epochs: from this many epochs on, validation accuracy at most
            ``chance_margin`` above 1/num_classes is flagged.
        diverge_factor: an epoch's training loss above this multiple of the best epoch so far
            (and above half of ln(num_classes)) is flagged.
    """

    def __init__(self, logger: StructuredLoggerProtocol | None = None, num_classes: int | None = None,
                 every_n_steps: int = 5, stop_on_nan: bool = True, initial_loss: bool = True,
                 initial_loss_tolerance: float = 0.5, chance_after_epochs: int = 3, chance_margin: float = 0.05,
                 accuracy_metric: str = "val/acc", diverge_factor: float = 2.0,
                 extra: Mapping[str, Any] | None = None) -> None:
        if every_n_steps < 1 or initial_loss_tolerance <= 0 or chance_after_epochs < 1 or diverge_factor <= 1:
            raise ValueError("sanity: every_n_steps >= 1, initial_loss_tolerance > 0, chance_after_epochs >= 1 and "
                             f"diverge_factor > 1 are required; got {every_n_steps}, {initial_loss_tolerance}, "
                             f"{chance_after_epochs}, {diverge_factor}")
        self.logger, self.num_classes = logger, num_classes
        self.every_n_steps, self.stop_on_nan = every_n_steps, stop_on_nan
        self.initial_loss, self.initial_loss_tolerance = initial_loss, initial_loss_tolerance
        self.chance_after_epochs, self.chance_margin = chance_after_epochs, chance_margin
        self.accuracy_metric, self.diverge_factor = accuracy_metric, diverge_factor
        self.extra = dict(extra or {})
        self.flags: list[str] = []
        self._best_loss = math.inf
        self._chance_checked = False
        self._first_step: int | None = None

    @property
    def _ln_classes(self) -> float | None:
        return math.log(self.num_classes) if self.num_classes and self.num_classes > 1 else None

    def flag(self, trainer: pl.Trainer, name: str, message: str, **data: Any) -> None:
        if name in self.flags:
            return
        self.flags.append(name)
        if trainer.is_global_zero:
            event = {"check": name, "message": message, "epoch": trainer.current_epoch, "step": trainer.global_step,
                     **data, **self.extra}
            if self.logger is not None:
                self.logger.log_event("sanity_warning", event)
            print(f"sanity warning ({name}): {message}", flush=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._first_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        first = self._first_step == 0 and trainer.current_epoch == 0 and batch_idx == 0  # a fresh run's first batch
        if not first and trainer.global_step % self.every_n_steps:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        value = float(loss.detach().float()) * trainer.accumulate_grad_batches
        if not math.isfinite(value):
            self._non_finite(trainer, value)
            return
        ln_c = self._ln_classes
        if first and self.initial_loss and ln_c and abs(value / ln_c - 1) > self.initial_loss_tolerance:
            self.flag(trainer, "bad_initial_loss",
                      f"first-step loss {value:.3g} is far from ln({self.num_classes}) = {ln_c:.3g} expected of an "
                      "untrained classifier; check the model's initialisation, its output layer and the labels",
                      loss=value, expected=ln_c)

    def _non_finite(self, trainer: pl.Trainer, value: float) -> None:
        message = (f"loss became {value} at epoch {trainer.current_epoch}, step {trainer.global_step} "
                   f"(lr {current_lr(trainer)}); lower optimizer.lr, clip gradients (trainer.gradient_clip_val) "
                   "or check the data")
        self.flag(trainer, "nan_loss", message, loss=str(value))
        if self.stop_on_nan:
            raise TrainingDiverged(f"{message} (sanity.stop_on_nan=false lets the run go on)")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._chance_checked or not self.num_classes:
            return
        if trainer.current_epoch + 1 < self.chance_after_epochs:
            return
        acc = trainer.callback_metrics.get(self.accuracy_metric)
        if acc is None:
            return
        self._chance_checked = True
        chance = 1.0 / self.num_classes
        if float(acc) <= chance + self.chance_margin:
            self.flag(trainer, "stuck_at_chance",
                      f"{self.accuracy_metric} is {float(acc):.3f} after {trainer.current_epoch + 1} epochs, about "
                      f"chance ({chance:.3f}); check the learning rate, the labels and the data pipeline",
                      accuracy=float(acc), chance=chance)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        if loss is None:
            return
        value = float(loss)
        if not math.isfinite(value):  # also catches epochs shorter than every_n_steps
            self._non_finite(trainer, value)
            return
        floor = 0.5 * self._ln_classes if self._ln_classes else 0.0
        if value > self.diverge_factor * self._best_loss and value > floor:
            self.flag(trainer, "diverging",
                      f"train/loss {value:.3g} at epoch {trainer.current_epoch} is over {self.diverge_factor:g}x the "
                      f"best epoch so far ({self._best_loss:.3g}); lower optimizer.lr or add warmup",
                      loss=value, best=self._best_loss)
        self._best_loss = min(self._best_loss, value)

    def state_dict(self) -> dict[str, Any]:
        return {"flags": list(self.flags), "best_loss": self._best_loss, "chance_checked": self._chance_checked}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.flags = list(state_dict.get("flags", []))
        self._best_loss = float(state_dict.get("best_loss", math.inf))
        self._chance_checked = bool(state_dict.get("chance_checked", False))
