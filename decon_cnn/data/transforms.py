"""Transform pipelines from the ``transforms`` config group (a plain description, not targets:
the data module knows whether its images arrive as PIL images or as tensors)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torchvision import transforms as T

from decon_cnn.errors import DeconError

_AUGMENTATIONS = {
    "random_crop": lambda size: T.RandomCrop(size, padding=4),
    "horizontal_flip": lambda size: T.RandomHorizontalFlip(),
}


def build_transforms(cfg: Mapping[str, Any] | None, train: bool, image_size: int | None,
                     from_pil: bool) -> T.Compose | None:
    """Resize (if ``resize`` is set), augmentations (train only), ToTensor (PIL input), then
    Normalize if ``mean``/``std`` are set.

    Returns None when there is nothing to do for tensor input, so datasets can skip the
    per-sample call altogether.
    """
    cfg = cfg or {}
    steps: list[Any] = []
    resize = cfg.get("resize")
    if resize:
        steps += [T.Resize(int(resize)), T.CenterCrop(int(resize))]
        image_size = int(resize)
    if train:
        for name in cfg.get("train") or []:
            if name not in _AUGMENTATIONS:
                raise DeconError(f"unknown augmentation {name!r} in transforms.train; choose from {', '.join(_AUGMENTATIONS)}")
            if image_size is None:
                raise DeconError(f"augmentation {name!r} needs an image size; set transforms.resize=N")
            steps.append(_AUGMENTATIONS[name](image_size))
    if from_pil:
        steps.append(T.ToTensor())
    if cfg.get("mean") is not None:
        steps.append(T.Normalize(list(cfg["mean"]), list(cfg["std"])))
    return T.Compose(steps) if steps else None
