"""``ImageDataModule``: decon_cnn's LightningDataModule for every built-in data set.

``dataset`` picks the source (``cifar10``, ``cifar100``, ``imagefolder``, ``synthetic``); the
loader options (``batch_size``, ``num_workers``, ``pin_memory``, ``persistent_workers``) apply
to all. ``max_per_class`` keeps the first N images of each class in every split (quick runs);
``val_size`` holds out N training images as the validation split. ``num_classes`` and
``in_channels`` are known before ``setup`` so the model can be built first.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset, Subset
from torchdata.stateful_dataloader import StatefulDataLoader

from decon_cnn.config_checks import DATASETS
from decon_cnn.data.sampler import ResumableShuffle
from decon_cnn.data.sources import CIFARSource, ImageFolderSource, SyntheticSource
from decon_cnn.data.transforms import build_transforms
from decon_cnn.errors import BadDataset, DeconError


def targets_of(ds: Dataset) -> list[int]:
    if isinstance(ds, Subset):
        parent = targets_of(ds.dataset)
        return [parent[i] for i in ds.indices]
    return [int(t) for t in ds.targets]  # type: ignore[attr-defined]


def cap_per_class(ds: Dataset, limit: int) -> Dataset:
    """The first ``limit`` items of each class, in data set order."""
    kept, seen = [], {}
    for i, label in enumerate(targets_of(ds)):
        if seen.get(label, 0) < limit:
            seen[label] = seen.get(label, 0) + 1
            kept.append(i)
    return Subset(ds, kept)


class ImageDataModule(ResumableShuffle, pl.LightningDataModule):
    def __init__(self, dataset: str = "synthetic", data_dir: str = "./data", batch_size: int = 128,
                 num_workers: int = 0, pin_memory: bool = False, persistent_workers: bool = False,
                 download: bool = False, max_per_class: int | None = None, val_size: int = 0,
                 synthetic: Mapping[str, Any] | None = None, transforms: Mapping[str, Any] | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise DeconError(f"unknown data.dataset {dataset!r}; use one of {', '.join(DATASETS)}")
        if batch_size < 1 or num_workers < 0 or (max_per_class is not None and max_per_class < 1) or val_size < 0:
            raise DeconError(f"data: batch_size must be >= 1, num_workers >= 0, max_per_class null or >= 1 and "
                             f"val_size >= 0; got {batch_size}, {num_workers}, {max_per_class}, {val_size}")
        self.dataset, self.data_dir = dataset, Path(data_dir).expanduser()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers
        self.max_per_class, self.val_size, self.seed = max_per_class, val_size, seed
        self.transforms = dict(transforms or {})
        if dataset in ("cifar10", "cifar100"):
            self.source: Any = CIFARSource(dataset, self.data_dir, download)
        elif dataset == "imagefolder":
            self.source = ImageFolderSource(self.data_dir, val_size)
        else:
            self.source = SyntheticSource(**dict(synthetic or {}), seed=seed)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def in_channels(self) -> int:
        return self.source.in_channels

    def prepare_data(self) -> None:
        self.source.prepare()

    def _holdout(self) -> bool:
        if self.val_size <= 0 or isinstance(self.source, SyntheticSource):
            return False
        return not (isinstance(self.source, ImageFolderSource) and (self.data_dir / "val").is_dir())

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.source.check()
        size, pil = self.source.image_size, self.source.from_pil
        train_tf = build_transforms(self.transforms, True, size, pil)
        eval_tf = build_transforms(self.transforms, False, size, pil)
        holdout = self._holdout()
        train = self.source.split("train", train_tf, holdout)
        val = self.source.split("val", eval_tf, holdout)
        test = self.source.split("test", eval_tf, holdout)
        if holdout:
            n = len(train)
            if self.val_size >= n:
                raise BadDataset(f"data.val_size={self.val_size} leaves no training images ({n} in all); lower it")
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
            val = Subset(self.source.split("train", eval_tf, False), sorted(order[:self.val_size]))
            train = Subset(train, sorted(order[self.val_size:]))
        if self.max_per_class:
            train, val, test = (cap_per_class(ds, self.max_per_class) if ds is not None else None
                                for ds in (train, val, test))
        self.train_set, self.val_set, self.test_set = train, val, test

    def _loader(self, ds: Dataset, shuffle: bool) -> StatefulDataLoader:
        sampler = self.train_sampler(len(ds), self.seed) if shuffle else None
        workers = self.num_workers
        return StatefulDataLoader(ds, batch_size=self.batch_size, sampler=sampler, num_workers=workers,
                                  persistent_workers=self.persistent_workers and workers > 0,
                                  # pinning only helps (and only works quietly) with a GPU to copy to
                                  pin_memory=self.pin_memory and torch.cuda.is_available())

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> Any:
        return self._loader(self.val_set, False) if self.val_set is not None else []

    def test_dataloader(self) -> Any:
        return self._loader(self.test_set, False) if self.test_set is not None else []

    @property
    def has_test(self) -> bool:
        """Whether there is a test split (known after ``setup``)."""
        return self.test_set is not None
