"""A trainer for the decon_cnn pruning test: decon_cnn's own ``train(cfg, ...)`` with one extra
Lightning callback that reports each epoch's metrics to the trial (what the decon_cnn bridge is
meant to do; see the README's "Adaptive sweeps"). torch is imported only when training, as in
the bridge, so that submitting a sweep does not pay for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dr_exp import preemption, study
from dr_exp.logging.structured_logger import StructuredLogger

__dr_exp_preload__ = ["torch", "pytorch_lightning", "decon_cnn.train", "optuna"]


def report_callback() -> Any:
    """A Lightning callback: after every training epoch (validation has run by then, and the
    epoch's checkpoint is not saved yet), report the epoch's scalars; ``study.Pruned`` propagates
    out of ``fit`` and out of ``train``."""
    import pytorch_lightning as pl
    import torch

    class ReportToStudy(pl.Callback):
        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.sanity_checking or not trainer.is_global_zero:
                return
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                       if isinstance(v, torch.Tensor) and v.numel() == 1}
            study.report(metrics, trainer.current_epoch)

    return ReportToStudy()


def train(*, job_id: str, worker_id: str, storage_path: str, resume_from: str | None = None,
          **config: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from decon_cnn.train import train as decon_train

    cfg = OmegaConf.create({k: v for k, v in config.items() if k != "_target_"})
    out = decon_train(cfg, logger=StructuredLogger(storage_path, job_id, worker_id),
                      checkpoint_dir=Path(storage_path) / "checkpoints", resume_from=resume_from,
                      should_stop=preemption.requested, callbacks=[report_callback()])
    if out["preempted"]:
        raise preemption.Preempted(out["last_model_path"])
    return {"metrics": {**out["metrics"], "epochs": out["epochs"]}}
