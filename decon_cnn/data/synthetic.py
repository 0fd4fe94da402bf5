"""A generated image classification set with learnable class structure.

Each class has a smooth random prototype image; a sample is its class prototype plus Gaussian
noise. Everything is drawn from a ``torch.Generator`` seeded by ``seed``, so the same config
gives the same data on every machine.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from decon_cnn.data.sampler import ResumableShuffle


class _TransformedTensors(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Any) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.x[i]), self.y[i]


def make_synthetic(num_samples: int, num_classes: int, image_size: int, channels: int, noise: float,
                   seed: int, split_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    proto_gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_classes, channels, 4, 4, generator=proto_gen)
    prototypes = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(seed * 1000 + split_offset)
    labels = torch.randint(0, num_classes, (num_samples,), generator=gen)
    images = prototypes[labels] + noise * torch.randn(num_samples, channels, image_size, image_size, generator=gen)
    return images.float(), labels


class SyntheticDataModule(ResumableShuffle, pl.LightningDataModule):
    def __init__(self, num_train: int = 4096, num_val: int = 1024, num_classes: int = 10, image_size: int = 32,
                 channels: int = 3, noise: float = 1.0, seed: int = 0, batch_size: int = 128,
                 num_workers: int = 0, train_transform: Any = None, val_transform: Any = None) -> None:
        super().__init__()
        self.num_train, self.num_val = num_train, num_val
        self.num_classes, self.image_size, self.in_channels = num_classes, image_size, channels
        self.noise, self.seed = noise, seed
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_transform, self.val_transform = train_transform, val_transform
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        args = (self.num_classes, self.image_size, self.in_channels, self.noise, self.seed)
        xt, yt = make_synthetic(self.num_train, *args, split_offset=1)
        xv, yv = make_synthetic(self.num_val, *args, split_offset=2)
        self.train_set = _TransformedTensors(xt, yt, self.train_transform) if self.train_transform else TensorDataset(xt, yt)
        self.val_set = _TransformedTensors(xv, yv, self.val_transform) if self.val_transform else TensorDataset(xv, yv)

    def _loader(self, ds: Dataset, shuffle: bool) -> StatefulDataLoader:
        sampler = self.train_sampler(len(ds), self.seed) if shuffle else None
        return StatefulDataLoader(ds, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.val_set, False)
