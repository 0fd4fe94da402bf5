"""Model registry: ``build_model(name, num_classes, in_channels, **kwargs)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from decon_cnn.errors import DeconError
from decon_cnn.models.resnet_cifar import resnet18_cifar, resnet50_cifar
from decon_cnn.models.small_cnn import SmallCNN

MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "resnet18_cifar": resnet18_cifar,
    "resnet50_cifar": resnet50_cifar,
}


def build_model(name: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    try:
        factory = MODELS[name]
    except KeyError:
        raise DeconError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}") from None
    return factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
