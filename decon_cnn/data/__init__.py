"""Data modules: decon_cnn's own :class:`ImageDataModule` (CIFAR-10/100, ImageFolder trees,
synthetic data), and :func:`create_data_module` for whatever ``data._target_`` a config names."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from omegaconf import OmegaConf

from decon_cnn.config_checks import BUILTIN_DATA_TARGET
from decon_cnn.data.module import ImageDataModule
from decon_cnn.data.sources import make_synthetic
from decon_cnn.data.transforms import build_transforms
from decon_cnn.errors import DeconError
from decon_cnn.instantiate import build, declared_parameters, resolved

# The keys config.yaml puts under `data:` for ImageDataModule (dataset, batch_size, ...).
_BASE_KEYS = declared_parameters(ImageDataModule) - {"transforms", "seed"}


def create_data_module(config: Any) -> pl.LightningDataModule:
    """The data module of a whole composed config (``config.data``, a ``_target_`` config).

    ``transforms`` (the ``transforms`` group) and ``seed`` are offered to the target: passed if
    it declares them and ``data`` does not set them. For a data module of your own, the keys
    that config.yaml sets for decon_cnn's (``dataset``, ``batch_size``, ``num_workers``,
    ``pin_memory``, ...) are offered the same way, so it receives those it declares.
    """
    cfg = resolved(config)
    node = cfg.get("data")
    if node is None:
        raise DeconError("config has no data section; compose it on configs/config.yaml (defaults: [config, ...])")
    transforms = cfg.get("transforms")
    offered = {"transforms": OmegaConf.to_container(transforms) if transforms is not None else None,
               "seed": int(cfg.get("seed", 0))}
    if node.get("_target_") != BUILTIN_DATA_TARGET:
        offered.update({k: v for k, v in node.items() if k in _BASE_KEYS})
        node = OmegaConf.create({k: v for k, v in node.items() if k not in _BASE_KEYS})
    datamodule = build(node, "data", offered)
    if not isinstance(datamodule, pl.LightningDataModule):
        raise DeconError(f"data: _target_ {cfg.data._target_} gave a {type(datamodule).__name__}, "
                         "not a LightningDataModule")
    return datamodule


__all__ = ["ImageDataModule", "build_transforms", "create_data_module", "make_synthetic"]
