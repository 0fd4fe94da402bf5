"""Optimizers and learning-rate schedules from ``_partial_`` configs.

``optimizer`` configs name an optimizer class with ``_partial_: true`` (``torch.optim.SGD``,
``lr``, ``weight_decay``, ...); :func:`create_optimizer` calls it on parameter groups that keep
weight decay off biases and normalisation layers. ``lr_scheduler`` configs name a scheduler the
same way; :func:`create_lr_scheduler` calls it on the optimizer, filling ``max_epochs`` when the
scheduler declares it and the config leaves it null (each stage of a multi-stage run has its
own). :func:`cosine_with_warmup` is the composite schedule the ``cosine`` config names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from decon_cnn.errors import DeconError
from decon_cnn.instantiate import build, has_target, offered_kwargs, target_of

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Weights in one group (the optimizer's weight decay applies), biases and normalisation
    parameters (1-d) in another with no weight decay."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def partial_from(spec: Any, where: str) -> Callable[..., Any] | None:
    """A callable from a ``_partial_`` config, or ``spec`` itself if it is already callable."""
    if spec is None or callable(spec):
        return spec
    if not has_target(spec):
        if spec:  # an empty node means "none"; keys without a target are a mistake
            raise DeconError(f"{where} has keys but no _target_ ({', '.join(map(str, spec))}); "
                             f"name a class or function, e.g. `{where}=sgd`")
        return None
    return build({**spec, "_partial_": True}, where)


def create_optimizer(model: nn.Module, optimizer: Any) -> torch.optim.Optimizer:
    """``optimizer`` (a ``_partial_`` config or a callable taking params) on ``model``'s
    parameter groups."""
    factory = partial_from(optimizer, "optimizer")
    if factory is None:
        raise DeconError("no optimizer configured; choose one, e.g. optimizer=sgd")
    try:
        return factory(param_groups(model))
    except (TypeError, ValueError) as exc:
        raise DeconError(f"optimizer: {' '.join(str(exc).split())}; check the keys under optimizer") from exc


def create_lr_scheduler(optimizer: torch.optim.Optimizer, lr_scheduler: Any, max_epochs: int) -> Any:
    """The epoch-based scheduler ``lr_scheduler`` describes, or None for an empty config."""
    if lr_scheduler is None or (not callable(lr_scheduler) and not lr_scheduler):
        return None
    if callable(lr_scheduler):
        factory, node = lr_scheduler, {}
        target = getattr(lr_scheduler, "func", lr_scheduler)
        keywords = getattr(lr_scheduler, "keywords", {})
    else:
        factory, node = partial_from(lr_scheduler, "lr_scheduler"), lr_scheduler
        target = target_of(node, "lr_scheduler")
        keywords = {k: v for k, v in node.items() if not k.startswith("_")}
    extra = offered_kwargs(keywords, target, {"max_epochs": max_epochs})
    try:
        return factory(optimizer, **extra)
    except (TypeError, ValueError) as exc:
        raise DeconError(f"lr_scheduler: {' '.join(str(exc).split())}; check the keys under lr_scheduler") from exc


def cosine_with_warmup(optimizer: torch.optim.Optimizer, max_epochs: int, warmup_epochs: int = 0,
                       warmup_start_factor: float = 0.1, min_lr: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from ``warmup_start_factor`` x lr over ``warmup_epochs``, then cosine decay
    to ``min_lr`` at ``max_epochs``. Stepped once per epoch."""
    if max_epochs < 1:
        raise DeconError(f"lr_scheduler: max_epochs must be >= 1, got {max_epochs}")
    if not 0 <= warmup_epochs < max_epochs:
        raise DeconError(f"lr_scheduler.warmup_epochs={warmup_epochs} must be below trainer.max_epochs={max_epochs}")
    base_lrs = [group["lr"] for group in optimizer.param_groups]

    def factor(epoch: int, base: float) -> float:
        if epoch < warmup_epochs:
            return warmup_start_factor + (1 - warmup_start_factor) * epoch / warmup_epochs
        progress = (epoch - warmup_epochs) / max(1, max_epochs - warmup_epochs)
        floor = min(min_lr / base, 1.0) if base > 0 else 0.0
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [lambda e, b=b: factor(e, b) for b in base_lrs])


__all__ = ["OptimizerFactory", "cosine_with_warmup", "create_lr_scheduler", "create_optimizer", "param_groups",
           "partial_from"]
