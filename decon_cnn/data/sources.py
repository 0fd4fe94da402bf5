"""Where images come from: CIFAR-10/100 on disk, an ImageFolder tree, or generated data.

A source knows its number of classes, channels and image size, and returns each split
(``train``, ``val``, ``test``) as a dataset with a ``targets`` list, or None when it has no
such split. ``holdout=True`` means the data module carves ``val`` out of ``train`` itself.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision import datasets

from decon_cnn.config_checks import CIFAR_FOLDERS, IMAGE_EXTENSIONS, cifar_problem, imagefolder_problem
from decon_cnn.errors import BadDataset, DatasetNotFound


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


_CIFAR = {"cifar10": (datasets.CIFAR10, _present_files_only(datasets.CIFAR10), 10),
          "cifar100": (datasets.CIFAR100, _present_files_only(datasets.CIFAR100), 100)}


class CIFARSource:
    """The python-pickle CIFAR format. Without a hold-out, ``val`` is the official test set
    (as CIFAR papers report it); with one, the official test set becomes ``test``."""

    from_pil = True
    in_channels = 3
    image_size = 32

    def __init__(self, dataset: str, root: Path, download: bool = False) -> None:
        self.dataset, self.root, self.download = dataset, root, download
        self.official, self.cls, self.num_classes = _CIFAR[dataset]

    def prepare(self) -> None:
        if not self.download:
            return
        try:
            for train in (True, False):
                self.official(str(self.root), train=train, download=True)
        except (OSError, RuntimeError) as exc:
            raise DatasetNotFound(f"could not download {self.dataset} to {self.root} ({' '.join(str(exc).split())}); "
                                  f"fetch it where the network allows and set paths.data_dir") from None

    def check(self) -> None:
        problem = cifar_problem(self.dataset, self.root, self.download)
        if problem:
            raise DatasetNotFound(problem)

    def split(self, name: str, transform: Any, holdout: bool) -> Dataset | None:
        if name == "val" and holdout:
            return None
        if name == "test" and not holdout:
            return None
        try:
            return self.cls(str(self.root), train=name == "train", transform=transform)
        except (RuntimeError, OSError, ValueError, EOFError, KeyError, pickle.UnpicklingError) as exc:
            raise DatasetNotFound(f"{self.dataset} in {self.root / CIFAR_FOLDERS[self.dataset]} is incomplete or "
                                  f"corrupt ({' '.join(str(exc).split())}); re-extract it or set data.download=true"
                                  ) from None


class _FixedClasses(datasets.ImageFolder):
    """An ImageFolder split that uses the training split's class indices."""

    def __init__(self, root: str, class_to_idx: dict[str, int], transform: Any) -> None:
        self._fixed = class_to_idx
        super().__init__(root, transform=transform, allow_empty=True)

    def find_classes(self, directory: Any) -> tuple[list[str], dict[str, int]]:
        return list(self._fixed), dict(self._fixed)


class ImageFolderSource:
    """``root/{train,val,test}/CLASS/*.png|jpg``; ``test/`` is optional, ``val/`` is too when
    the data module holds out part of ``train``."""

    from_pil = True
    in_channels = 3  # torchvision's loader converts every image to RGB

    def __init__(self, root: Path, val_size: int = 0) -> None:
        self.root, self.val_size = root, val_size
        self._classes: list[str] | None = None

    def prepare(self) -> None:
        pass

    def check(self) -> None:
        problem = imagefolder_problem(self.root, self.val_size)
        if problem:
            raise (DatasetNotFound if not self.root.is_dir() else BadDataset)(problem)

    @property
    def classes(self) -> list[str]:
        if self._classes is None:
            self.check()
            self._classes, _ = datasets.folder.find_classes(str(self.root / "train"))
        return self._classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int | None:
        """The size of the first training image (for random crops), read from its header."""
        from PIL import Image

        for path in sorted((self.root / "train" / self.classes[0]).rglob("*")):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                with Image.open(path) as img:
                    return min(img.size)
        return None

    def split(self, name: str, transform: Any, holdout: bool) -> Dataset | None:
        folder = self.root / name
        if name == "val" and (holdout or not folder.is_dir()):
            return None
        if name == "train":
            return datasets.ImageFolder(str(folder), transform=transform)
        if not folder.is_dir():
            return None
        return _FixedClasses(str(folder), {c: i for i, c in enumerate(self.classes)}, transform)


class TensorImages(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Any = None) -> None:
        self.x, self.y, self.transform = x, y, transform
        self.targets = y.tolist()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[i]
        return (self.transform(x) if self.transform else x), self.y[i]


def make_synthetic(num_samples: int, num_classes: int, image_size: int, channels: int, noise: float,
                   seed: int, split_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class has a smooth random prototype image; a sample is its class prototype plus
    Gaussian noise. Everything is drawn from generators seeded by ``seed``."""
    proto_gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_classes, channels, 4, 4, generator=proto_gen)
    prototypes = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(seed * 1000 + split_offset)
    labels = torch.randint(0, num_classes, (num_samples,), generator=gen)
    images = prototypes[labels] + noise * torch.randn(num_samples, channels, image_size, image_size, generator=gen)
    return images.float(), labels


class SyntheticSource:
    """Generated images with learnable class structure, the same on every machine for a seed."""

    from_pil = False

    def __init__(self, num_train: int = 4096, num_val: int = 1024, num_test: int = 0, num_classes: int = 10,
                 image_size: int = 32, channels: int = 3, noise: float = 1.0, seed: int = 0) -> None:
        if num_classes < 2 or num_train < 1:
            raise BadDataset(f"data.synthetic needs num_classes >= 2 and num_train >= 1, got {num_classes} and "
                             f"{num_train}")
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.num_classes, self.image_size, self.in_channels = num_classes, image_size, channels
        self.noise, self.seed = noise, seed

    def prepare(self) -> None:
        pass

    def check(self) -> None:
        pass

    def split(self, name: str, transform: Any, holdout: bool) -> Dataset | None:
        n = self.sizes[name]
        if n <= 0 or (name == "val" and holdout):
            return None
        offset = {"train": 1, "val": 2, "test": 3}[name]
        x, y = make_synthetic(n, self.num_classes, self.image_size, self.in_channels, self.noise, self.seed, offset)
        return TensorImages(x, y, transform)
