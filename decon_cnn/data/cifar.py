"""CIFAR-10/100 from the standard on-disk python-pickle format, through torchvision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader
from torchvision import datasets

from decon_cnn.errors import DatasetNotFound

_SPECS = {"cifar10": (datasets.CIFAR10, "cifar-10-batches-py", 10),
          "cifar100": (datasets.CIFAR100, "cifar-100-python", 100)}


class CIFARDataModule(pl.LightningDataModule):
    def __init__(self, dataset: str, data_dir: str, batch_size: int = 128, num_workers: int = 0,
                 download: bool = False, train_transform: Any = None, val_transform: Any = None) -> None:
        super().__init__()
        self.cls, self.folder, self.num_classes = _SPECS[dataset]
        self.dataset, self.data_dir = dataset, Path(data_dir).expanduser()
        self.batch_size, self.num_workers, self.download = batch_size, num_workers, download
        self.train_transform, self.val_transform = train_transform, val_transform
        self.in_channels, self.image_size = 3, 32
        self.train_set = self.val_set = None

    def prepare_data(self) -> None:
        if self.download:
            self.cls(str(self.data_dir), train=True, download=True)
            self.cls(str(self.data_dir), train=False, download=True)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        expected = self.data_dir / self.folder
        if not expected.is_dir() and not self.download:
            raise DatasetNotFound(
                f"{self.dataset} not found: expected {expected.resolve()} (the python version of the data set); "
                f"set paths.data_dir to the directory that contains {self.folder}/, or data.download=true on a "
                "machine with internet access")
        try:
            self.train_set = self.cls(str(self.data_dir), train=True, transform=self.train_transform)
            self.val_set = self.cls(str(self.data_dir), train=False, transform=self.val_transform)
        except RuntimeError as exc:
            raise DatasetNotFound(f"{self.dataset} in {expected.resolve()} is incomplete or corrupt ({exc}); "
                                  "re-extract it or set data.download=true") from None

    def _loader(self, ds: Any, shuffle: bool) -> DataLoader:
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)
