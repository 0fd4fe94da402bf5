"""Stop training when asked (SLURM time limit, a worker handing its job back), checkpoint first."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl


class TrainingPreempted(Exception):
    """Raised out of ``trainer.fit`` by :class:`PreemptionCallback` after a mid-epoch save, so
    Lightning does not count the unfinished epoch as done."""


class PreemptionCallback(pl.Callback):
    """Polls ``should_stop`` after every batch and epoch; when it turns true, saves a checkpoint
    to ``checkpoint_path`` and stops training. At an epoch end it stops cleanly; mid-epoch it
    raises :class:`TrainingPreempted` after saving, and the resumed run finishes that epoch.

    With several processes (DDP) the ranks agree first: each batch, a request seen by any rank
    stops all of them at the same batch (one small all-reduce, the cost of a scalar on gloo or
    NCCL), every rank takes part in the save, and rank zero writes the file once.
    """

    def __init__(self, should_stop: Callable[[], bool], checkpoint_path: str) -> None:
        self.should_stop = should_stop
        self.checkpoint_path = checkpoint_path
        self.preempted = False

    def _asked(self, trainer: pl.Trainer) -> bool:
        asked = bool(self.should_stop())
        if trainer.world_size > 1:
            asked = trainer.strategy.reduce_boolean_decision(asked, all=False)
        return asked

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if not self.preempted and self._asked(trainer):
            trainer.save_checkpoint(self.checkpoint_path)
            self.preempted = True
            raise TrainingPreempted(self.checkpoint_path)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.preempted and self._asked(trainer):
            trainer.save_checkpoint(self.checkpoint_path)
            trainer.should_stop = True
            self.preempted = True
