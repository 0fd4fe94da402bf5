"""Build the pieces of a run from a whole composed config, by ``_target_``.

- :func:`create_data_module` — ``data`` (``transforms`` and ``seed`` offered);
- :func:`create_model` — ``model``: a LightningModule is used as it is; a plain ``nn.Module`` is
  wrapped in :class:`~decon_cnn.module.ClassificationModule` with ``optimizer`` and
  ``lr_scheduler``. ``num_classes`` and ``in_channels`` come from the data module;
- :func:`create_callbacks`, :func:`create_loggers` — the ``callbacks`` and ``loggers`` sections
  (a dict of named ``_target_`` configs, or a list);
- :func:`create_optimizer`, :func:`create_lr_scheduler` — from :mod:`decon_cnn.optim`.

"Offered" arguments are passed to a target only when it declares them by name and the config
leaves them out (see :mod:`decon_cnn.instantiate`).
"""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
from omegaconf import OmegaConf
from torch import nn

from decon_cnn.data import create_data_module
from decon_cnn.errors import BadTarget, DeconError
from decon_cnn.instantiate import build, build_all, resolved
from decon_cnn.module import ClassificationModule
from decon_cnn.optim import create_lr_scheduler, create_optimizer, partial_from
from decon_cnn.protocols import StructuredLoggerProtocol


def data_shape(datamodule: Any, cfg: Any) -> tuple[int, int]:
    """``(num_classes, in_channels)``: the data module's attributes, else ``model.*``."""
    model_cfg = cfg.get("model") or {}
    num_classes = getattr(datamodule, "num_classes", None) or model_cfg.get("num_classes")
    if not num_classes:
        raise DeconError(f"cannot tell the number of classes: {type(datamodule).__name__} has no num_classes "
                         "attribute; give it one, or set model.num_classes")
    in_channels = getattr(datamodule, "in_channels", None) or model_cfg.get("in_channels") or 3
    return int(num_classes), int(in_channels)


def create_model(config: Any, datamodule: Any = None) -> pl.LightningModule:
    """The LightningModule for ``config`` (the whole composed config). Without ``datamodule``
    one is created from ``config.data`` to learn the number of classes (nothing is loaded)."""
    cfg = resolved(config)
    if datamodule is None:
        datamodule = create_data_module(cfg)
    num_classes, in_channels = data_shape(datamodule, cfg)
    # Callables, as lightning-hydra-template modules expect them: optimizer(params=...),
    # lr_scheduler(optimizer=...). A LightningModule that declares them gets them.
    optimizer = partial_from(cfg.get("optimizer") or None, "optimizer")
    lr_scheduler = partial_from(cfg.get("lr_scheduler") or None, "lr_scheduler")
    offered = {"num_classes": num_classes, "in_channels": in_channels, "optimizer": optimizer,
               "lr_scheduler": lr_scheduler}
    if cfg.get("model") is None:
        raise DeconError("config has no model section; choose one, e.g. model=resnet18_cifar")
    model = build(cfg.model, "model", offered)
    if isinstance(model, pl.LightningModule):
        return model
    if not isinstance(model, nn.Module):
        raise BadTarget(f"model: _target_ {cfg.model._target_} gave a {type(model).__name__}, not an nn.Module "
                        "or LightningModule")
    metrics = cfg.get("metrics") or {}
    return ClassificationModule(model, num_classes, optimizer=optimizer, lr_scheduler=lr_scheduler,
                                channels_last=bool(cfg.get("channels_last", False)),
                                top_k=int(metrics.get("top_k", 5)), compile=bool(cfg.get("compile", False)))


def create_callbacks(config: Any, logger: StructuredLoggerProtocol | None = None) -> list[pl.Callback]:
    """``config.callbacks``; ``logger`` (the run's StructuredLoggerProtocol) is offered."""
    cfg = resolved(config)
    callbacks = build_all(cfg.get("callbacks"), "callbacks", {"logger": logger})
    for name, cb in zip(_names(cfg.get("callbacks"), "callbacks"), callbacks, strict=True):
        if not isinstance(cb, pl.Callback):
            raise BadTarget(f"{name}: _target_ gave a {type(cb).__name__}, not a Lightning Callback")
    return callbacks


def create_loggers(config: Any, save_dir: str | os.PathLike[str]) -> list[Any]:
    """``config.loggers`` (Lightning loggers), writing under ``save_dir`` (offered)."""
    from pytorch_lightning.loggers import Logger

    cfg = resolved(config)
    loggers = build_all(cfg.get("loggers"), "loggers", {"save_dir": str(save_dir)})
    for name, lg in zip(_names(cfg.get("loggers"), "loggers"), loggers, strict=True):
        if not isinstance(lg, Logger):
            raise BadTarget(f"{name}: _target_ gave a {type(lg).__name__}, not a Lightning logger")
    return loggers


def _names(section: Any, where: str) -> list[str]:
    if section is None:
        return []
    if OmegaConf.is_list(section):
        return [f"{where}[{i}]" for i, node in enumerate(section) if node is not None]
    return [f"{where}.{k}" for k, node in section.items() if node is not None]


__all__ = ["create_callbacks", "create_data_module", "create_loggers", "create_lr_scheduler", "create_model",
           "create_optimizer", "data_shape"]
