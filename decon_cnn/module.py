"""The LightningModule: cross-entropy classification with torchmetrics accuracy."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy


class ClassificationModule(pl.LightningModule):
    def __init__(self, model: nn.Module, num_classes: int, optimizer: dict[str, Any],
                 lr_scheduler: dict[str, Any], max_epochs: int, channels_last: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        # channels_last (NHWC) lets cuDNN use tensor-core convolution kernels with bf16/fp16.
        self.channels_last = channels_last
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.train_acc = MulticlassAccuracy(num_classes, top_k=1)
        self.val_acc = MulticlassAccuracy(num_classes, top_k=1)
        self.val_acc_top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.val_acc_top5(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), on_epoch=True)
        self.log("val/acc", self.val_acc, on_epoch=True)
        self.log("val/acc_top5", self.val_acc_top5, on_epoch=True)

    def configure_optimizers(self) -> Any:
        from decon_cnn.factory import create_lr_scheduler, create_optimizer

        optimizer = create_optimizer(self.model, self.hparams.optimizer)
        scheduler = create_lr_scheduler(optimizer, self.hparams.lr_scheduler, self.hparams.max_epochs)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
