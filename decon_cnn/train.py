"""``train(cfg)``: fit a classifier from a composed config; ``python -m decon_cnn.train`` runs it
with Hydra on ``configs/``.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from decon_cnn.callbacks import DrExpMetricsCallback, PreemptionCallback, TrainingPreempted
from decon_cnn.errors import DeconError
from decon_cnn.factory import create_training_components
from decon_cnn.protocols import StructuredLoggerProtocol

log = logging.getLogger(__name__)


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)
    log.warning(message)


def resolve_trainer_kwargs(trainer_cfg: Any) -> dict[str, Any]:
    """``trainer.*`` as pl.Trainer kwargs, with the fallbacks a user expects on this machine."""
    kw = OmegaConf.to_container(trainer_cfg, resolve=True) if isinstance(trainer_cfg, DictConfig) else dict(trainer_cfg)
    cuda = torch.cuda.is_available()
    accelerator = str(kw.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not cuda:
        _warn(f"trainer.accelerator={accelerator} but no GPU is visible; falling back to cpu")
        kw["accelerator"] = accelerator = "cpu"
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda)
    precision = str(kw.get("precision", "32-true"))
    if not on_gpu and precision in ("16", "16-mixed", "16-true", "bf16", "bf16-mixed", "bf16-true"):
        _warn(f"trainer.precision={precision} needs a GPU; falling back to 32-true on this machine")
        kw["precision"] = "32-true"
    elif on_gpu and precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
        _warn(f"trainer.precision={precision} is not supported by this GPU; falling back to 16-mixed")
        kw["precision"] = "16-mixed"
    strategy = str(kw.get("strategy", "auto"))
    devices = kw.get("devices", 1)
    n_devices = len(devices) if isinstance(devices, (list, tuple)) else (devices if isinstance(devices, int) else None)
    if strategy.startswith("ddp") and (n_devices == 1 or (not on_gpu and n_devices in (None, 1))):
        _warn(f"trainer.strategy={strategy} with one device; falling back to strategy=auto")
        kw["strategy"] = "auto"
    return kw


def train(cfg: DictConfig | dict[str, Any], logger: StructuredLoggerProtocol | None = None,
          checkpoint_dir: str | os.PathLike[str] | None = None, resume_from: str | None = None,
          should_stop: Callable[[], bool] | None = None, callbacks: Sequence[pl.Callback] = (),
          extra_fields: dict[str, Any] | None = None, init_weights_from: str | None = None) -> dict[str, Any]:
    """Fit the model described by ``cfg``. Returns final metrics and checkpoint paths.

    ``should_stop`` is polled after every batch and epoch (the pre-emption hook): when it returns
    True a checkpoint is saved to ``checkpoint_dir/last.ckpt`` and training stops with
    ``preempted: True`` in the result. ``resume_from`` continues a run from a full checkpoint;
    ``init_weights_from`` only loads model weights (e.g. from a previous stage).
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    pl.seed_everything(int(cfg.get("seed", 0)), workers=True, verbose=False)
    module, datamodule = create_training_components(cfg)
    if init_weights_from:
        state = torch.load(init_weights_from, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
    trainer_kwargs = resolve_trainer_kwargs(cfg.trainer)

    cbs: list[pl.Callback] = []
    if logger is not None:
        cbs.append(DrExpMetricsCallback(logger, int(cfg.get("callback", {}).get("every_n_batches", 0)), extra_fields))
    cbs.extend(callbacks)
    checkpoint_cb = preempt_cb = None
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        checkpoint_cb = pl.callbacks.ModelCheckpoint(dirpath=str(checkpoint_dir), filename="best", monitor="val/acc",
                                                     mode="max", save_top_k=1, save_last=True,
                                                     enable_version_counter=False, auto_insert_metric_name=False)
        cbs.append(checkpoint_cb)
        if should_stop is not None:
            preempt_cb = PreemptionCallback(should_stop, str(checkpoint_dir / "last.ckpt"))
            cbs.append(preempt_cb)
    trainer = pl.Trainer(callbacks=cbs, logger=False, enable_checkpointing=checkpoint_cb is not None,
                         default_root_dir=str(checkpoint_dir or Path.cwd()), **trainer_kwargs)
    if resume_from and not Path(resume_from).is_file():
        raise DeconError(f"resume_from={resume_from} does not exist; drop it to start from scratch")
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from or None)
    except TrainingPreempted:
        pass  # the checkpoint is saved; the caller hands the run back
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if isinstance(v, torch.Tensor) and v.numel() == 1}
    return {
        "metrics": metrics,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "preempted": bool(preempt_cb and preempt_cb.preempted),
        "best_model_path": checkpoint_cb.best_model_path if checkpoint_cb else None,
        "last_model_path": str(checkpoint_dir / "last.ckpt") if checkpoint_dir else None,
        "module": module,
    }


def _main() -> None:
    import hydra

    config_dir = str(Path(__file__).resolve().parent.parent / "configs")

    @hydra.main(version_base="1.3", config_path=config_dir, config_name="config")
    def run(cfg: DictConfig) -> None:
        try:
            result = train(cfg, checkpoint_dir=Path.cwd() / "checkpoints")
        except DeconError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        for key, value in sorted(result["metrics"].items()):
            print(f"{key}: {value:.4f}")

    run()


if __name__ == "__main__":
    _main()
