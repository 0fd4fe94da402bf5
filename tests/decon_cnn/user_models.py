"""A user's own classes, plugged into decon_cnn by ``_target_`` only (no edit to decon_cnn)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from decon_cnn.protocols import StructuredLoggerProtocol


class TinyNet(nn.Module):
    """A plain nn.Module: decon_cnn wraps it in its classification module."""

    def __init__(self, num_classes: int, in_channels: int = 3, hidden: int = 16, logit_scale: float = 1.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                 nn.Flatten(), nn.Linear(4 * hidden, num_classes))
        self.logit_scale = logit_scale  # > 1: a badly initialised output layer, for the sanity checks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.logit_scale


class TinyLitModule(pl.LightningModule):
    """A LightningModule in lightning-hydra-template style: it receives the optimizer as a
    callable and logs its own metrics; decon_cnn uses it as it is."""

    def __init__(self, num_classes: int, optimizer, in_channels: int = 3, hidden: int = 16) -> None:
        super().__init__()
        self.net = TinyNet(num_classes, in_channels, hidden)
        self.optimizer = optimizer
        self.built_with = {"num_classes": num_classes, "in_channels": in_channels}

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val/loss", F.cross_entropy(logits, y))
        self.log("val/acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return self.optimizer(params=self.parameters())


class TinyDataModule(pl.LightningDataModule):
    """Separable Gaussian blobs as 1x8x8 images; tells decon_cnn its classes and channels."""

    def __init__(self, num_samples: int = 384, num_classes: int = 3, batch_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.num_samples, self.num_classes, self.in_channels = num_samples, num_classes, 1
        self.batch_size, self.seed = batch_size, seed

    def setup(self, stage: str | None = None) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        centers = 2 * torch.randn(self.num_classes, 1, 8, 8, generator=gen)
        y = torch.randint(0, self.num_classes, (self.num_samples,), generator=gen)
        x = centers[y] + 0.5 * torch.randn(self.num_samples, 1, 8, 8, generator=gen)
        cut = self.num_samples * 3 // 4
        self.train_set, self.val_set = TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


class CustomDrExpCallback(Callback):
    """The integration guide's custom callback (every 100 batches there, every 4 here)."""

    def __init__(self, logger: StructuredLoggerProtocol, every: int = 100) -> None:
        self.logger = logger
        self.every = every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx % self.every == 0:
            self.logger.log_event("batch_milestone", {
                "batch": batch_idx,
                "loss": outputs["loss"].item(),
            })


class NotACallback:
    pass
