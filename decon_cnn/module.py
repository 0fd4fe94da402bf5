"""The LightningModule that wraps a plain ``nn.Module`` classifier: cross-entropy, torchmetrics
(accuracy, top-k accuracy, macro F1), and the optimizer and schedule from ``_partial_`` configs."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from decon_cnn.optim import create_lr_scheduler, create_optimizer


def eval_metrics(num_classes: int, top_k: int) -> MetricCollection:
    metrics: dict[str, Any] = {"acc": MulticlassAccuracy(num_classes, top_k=1),
                               "f1": MulticlassF1Score(num_classes, average="macro")}
    if 1 < top_k < num_classes:  # top-k of k >= num_classes is always 1
        metrics[f"acc_top{top_k}"] = MulticlassAccuracy(num_classes, top_k=top_k)
    return MetricCollection(metrics)


class ClassificationModule(pl.LightningModule):
    """Trains ``model`` (logits out) with cross-entropy.

    Logs ``train/loss``, ``train/acc`` and, for validation and test, ``loss``, ``acc``,
    ``acc_top{k}`` and ``f1`` (macro) under ``val/`` and ``test/``.
    ``optimizer`` and ``lr_scheduler`` are ``_partial_`` configs (or callables): the optimizer is
    called on parameter groups without weight decay on biases and norm layers, the scheduler on
    the optimizer (stepped per epoch).
    """

    def __init__(self, model: nn.Module, num_classes: int, optimizer: Any = None, lr_scheduler: Any = None,
                 channels_last: bool = False, top_k: int = 5, compile: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer", "lr_scheduler"])
        # channels_last (NHWC) lets cuDNN use tensor-core convolution kernels with bf16/fp16.
        self.channels_last = channels_last
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        if compile:
            self.model.compile()  # in place: parameter names (and checkpoints) stay as they are
        self.optimizer_spec, self.lr_scheduler_spec = optimizer, lr_scheduler
        self.num_classes = num_classes
        self.train_acc = MulticlassAccuracy(num_classes, top_k=1)
        self.val_metrics = eval_metrics(num_classes, top_k).clone(prefix="val/")
        self.test_metrics = eval_metrics(num_classes, top_k).clone(prefix="test/")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, sync_dist=True)  # mean over ranks, once an epoch
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], split: str, metrics: MetricCollection) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{split}/loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True)  # mean over ranks
        metrics(logits, y)
        self.log_dict(metrics, on_epoch=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics)

    def configure_optimizers(self) -> Any:
        optimizer = create_optimizer(self.model, self.optimizer_spec)
        scheduler = create_lr_scheduler(optimizer, self.lr_scheduler_spec, int(self.trainer.max_epochs or 1))
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
