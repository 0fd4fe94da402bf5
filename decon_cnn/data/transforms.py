"""Transform pipelines from the ``transforms`` config group."""

from __future__ import annotations

from typing import Any

from torchvision import transforms as T

from decon_cnn.errors import DeconError

_AUGMENTATIONS = {
    "random_crop": lambda size: T.RandomCrop(size, padding=4),
    "horizontal_flip": lambda size: T.RandomHorizontalFlip(),
}


def build_transforms(cfg: Any, train: bool, image_size: int, from_pil: bool) -> T.Compose | None:
    """Augmentations (train only), then ToTensor (PIL input), then Normalize if configured.

    Returns None when there is nothing to do for tensor input, so datasets can skip the
    per-sample call altogether.
    """
    steps: list[Any] = []
    if train:
        for name in cfg.get("train") or []:
            if name not in _AUGMENTATIONS:
                raise DeconError(f"unknown augmentation {name!r}; choose from {', '.join(_AUGMENTATIONS)}")
            steps.append(_AUGMENTATIONS[name](image_size))
    if from_pil:
        steps.append(T.ToTensor())
    if cfg.get("mean") is not None:
        steps.append(T.Normalize(list(cfg["mean"]), list(cfg["std"])))
    return T.Compose(steps) if steps else None
