"""Classifiers (plain ``nn.Module``s taking ``num_classes`` and ``in_channels``), named by
``_target_`` in ``configs/model/``. Any other ``nn.Module`` or LightningModule plugs in the
same way."""

from decon_cnn.models.resnet_cifar import resnet18_cifar, resnet50_cifar
from decon_cnn.models.small_cnn import SmallCNN

__all__ = ["SmallCNN", "resnet18_cifar", "resnet50_cifar"]
