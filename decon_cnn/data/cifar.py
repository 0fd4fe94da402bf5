"""CIFAR-10/100 from the standard on-disk python-pickle format, through torchvision."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torchdata.stateful_dataloader import StatefulDataLoader
from torchvision import datasets

from decon_cnn.data.sampler import ResumableShuffle
from decon_cnn.errors import DatasetNotFound


def _present_files_only(cls: type) -> type:
    """torchvision checks the md5 of each file against the official archive; data sets that
    were re-packed (or written by tests) in the same format are accepted if the files exist.
    Corrupt files still fail when they are unpickled."""

    class Local(cls):  # type: ignore[misc, valid-type]
        def _check_integrity(self) -> bool:
            root = Path(self.root) / self.base_folder
            return all((root / name).is_file() for name, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as fh:
                data = pickle.load(fh, encoding="latin1")
            self.classes = data[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    Local.__name__ = f"Local{cls.__name__}"
    return Local


_SPECS = {"cifar10": (_present_files_only(datasets.CIFAR10), "cifar-10-batches-py", 10),
          "cifar100": (_present_files_only(datasets.CIFAR100), "cifar-100-python", 100)}


class CIFARDataModule(ResumableShuffle, pl.LightningDataModule):
    def __init__(self, dataset: str, data_dir: str, batch_size: int = 128, num_workers: int = 0,
                 download: bool = False, train_transform: Any = None, val_transform: Any = None,
                 seed: int = 0) -> None:
        super().__init__()
        self.cls, self.folder, self.num_classes = _SPECS[dataset]
        self.dataset, self.data_dir = dataset, Path(data_dir).expanduser()
        self.batch_size, self.num_workers, self.download = batch_size, num_workers, download
        self.train_transform, self.val_transform = train_transform, val_transform
        self.in_channels, self.image_size = 3, 32
        self.seed = seed
        self.train_set = self.val_set = None

    def prepare_data(self) -> None:
        if self.download:
            official = self.cls.__mro__[1]
            official(str(self.data_dir), train=True, download=True)
            official(str(self.data_dir), train=False, download=True)

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
        except (RuntimeError, OSError, ValueError, EOFError, KeyError) as exc:
            raise DatasetNotFound(f"{self.dataset} in {expected.resolve()} is incomplete or corrupt ({exc}); "
                                  "re-extract it or set data.download=true") from None

    def _loader(self, ds: Any, shuffle: bool) -> StatefulDataLoader:
        sampler = self.train_sampler(len(ds), self.seed) if shuffle else None
        return StatefulDataLoader(ds, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=False)

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.val_set, False)
