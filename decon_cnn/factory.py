"""Build models, optimizers, schedulers and data modules from a composed config."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from decon_cnn.errors import DeconError


def _plain(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg or {})


def create_model(model_cfg: Any, num_classes: int, in_channels: int = 3) -> nn.Module:
    from decon_cnn.models import build_model

    kwargs = _plain(model_cfg)
    name = kwargs.pop("name", None)
    if not name:
        raise DeconError("model config has no `name`; use model=small_cnn, resnet18_cifar or resnet50_cifar")
    return build_model(name, num_classes=num_classes, in_channels=in_channels, **kwargs)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weights only: biases and normalisation parameters (1-d) are exempt."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def create_optimizer(model: nn.Module, opt_cfg: Any) -> torch.optim.Optimizer:
    cfg = _plain(opt_cfg)
    name = cfg.pop("name", "sgd")
    lr = float(cfg.pop("lr"))
    wd = float(cfg.pop("weight_decay", 0.0))
    groups = param_groups(model, wd)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(cfg.get("momentum", 0.9)),
                               nesterov=bool(cfg.get("nesterov", False)))
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(groups, lr=lr, betas=tuple(cfg.get("betas", (0.9, 0.999))))
    raise DeconError(f"unknown optimizer {name!r}; use optimizer=sgd, adam or adamw")


def create_lr_scheduler(optimizer: torch.optim.Optimizer, sched_cfg: Any, max_epochs: int) -> Any:
    """Epoch-based schedulers: ``step``, ``cosine`` (with linear warmup), ``none``."""
    cfg = _plain(sched_cfg)
    name = cfg.get("name", "none")
    if name == "none":
        return None
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(cfg.get("step_size", 30)),
                                               gamma=float(cfg.get("gamma", 0.1)))
    if name == "cosine":
        warmup = int(cfg.get("warmup_epochs", 0))
        if warmup >= max_epochs:
            raise DeconError(f"lr_scheduler.warmup_epochs={warmup} must be below trainer.max_epochs={max_epochs}")
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, max_epochs - warmup),
                                                            eta_min=float(cfg.get("min_lr", 0.0)))
        if warmup == 0:
            return cosine
        linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=float(cfg.get("warmup_start_factor", 0.1)),
                                                   total_iters=warmup)
        return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])
    raise DeconError(f"unknown lr_scheduler {name!r}; use lr_scheduler=cosine, step or none")


def create_data_module(cfg: DictConfig) -> Any:
    from decon_cnn.data import CIFARDataModule, SyntheticDataModule, build_transforms

    data = cfg.data
    dataset = data.dataset
    tf = cfg.get("transforms") or {}
    if dataset == "synthetic":
        s = data.synthetic
        return SyntheticDataModule(num_train=s.num_train, num_val=s.num_val, num_classes=s.num_classes,
                                   image_size=s.image_size, channels=s.channels, noise=s.noise, seed=cfg.seed,
                                   batch_size=data.batch_size, num_workers=data.num_workers,
                                   train_transform=build_transforms(tf, True, s.image_size, from_pil=False),
                                   val_transform=build_transforms(tf, False, s.image_size, from_pil=False))
    if dataset in ("cifar10", "cifar100"):
        return CIFARDataModule(dataset, cfg.paths.data_dir, batch_size=data.batch_size,
                               num_workers=data.num_workers, download=bool(data.get("download", False)), seed=cfg.seed,
                               train_transform=build_transforms(tf, True, 32, from_pil=True),
                               val_transform=build_transforms(tf, False, 32, from_pil=True))
    raise DeconError(f"unknown data.dataset {dataset!r}; use cifar10, cifar100 or synthetic")


def create_training_components(cfg: DictConfig) -> tuple[Any, Any]:
    """The LightningModule and the data module for ``cfg``."""
    from decon_cnn.module import ClassificationModule

    datamodule = create_data_module(cfg)
    model = create_model(cfg.model, datamodule.num_classes, datamodule.in_channels)
    module = ClassificationModule(model, datamodule.num_classes, _plain(cfg.optimizer), _plain(cfg.lr_scheduler),
                                  int(cfg.trainer.max_epochs), channels_last=bool(cfg.get("channels_last", False)))
    return module, datamodule
