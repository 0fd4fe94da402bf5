"""ResNets with the CIFAR stem (3x3 conv, stride 1, no max-pool), built from torchvision's blocks."""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet


def _cifar_resnet(block: type[nn.Module], layers: list[int], num_classes: int, in_channels: int,
                  **kwargs: Any) -> ResNet:
    model = ResNet(block, layers, num_classes=num_classes, **kwargs)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def resnet18_cifar(num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> ResNet:
    return _cifar_resnet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, **kwargs)


def resnet50_cifar(num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> ResNet:
    return _cifar_resnet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, **kwargs)
