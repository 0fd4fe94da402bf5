"""Bridge from the dr_exp trainer contract to decon_cnn (imported lazily: dr_exp stays torch-free).

``train_classification(config, *, job_id, worker_id, storage_path, resume_from=None)`` receives
the composed job config (a DictConfig, without ``_target_``) and returns
``{"metrics", "artifacts"}`` plus ``stop_reason`` (training ended before ``max_epochs``, and why)
and ``flags`` (sanity warnings) when there are any.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from dr_exp import preemption
from dr_exp.errors import ConfigError
from dr_exp.logging.structured_logger import StructuredLogger
from dr_exp.ranks import current_rank, local_world_size
from dr_exp.rundir import RunDir

# The worker's fork server imports these once, so each job skips the torch/Lightning imports.
__dr_exp_preload__ = ["torch", "torchvision", "pytorch_lightning", "decon_cnn.train", "optuna"]

# Lightning callbacks added to every decon_cnn run of this process (e.g. by the worker).
EXTRA_CALLBACKS: list[Any] = []


__dr_exp_check_keys__ = ("data", "paths", "trainer")


def __dr_exp_check__(config: Mapping[str, Any]) -> list[str]:
    """Checked at submit, on the submitting host: the data the config names, where visible, and
    ranks that could run on no machine (``ddp_spawn``, ``num_nodes`` > 1, ``fsdp`` on the CPU;
    how many GPUs are visible is judged where the job runs)."""
    from decon_cnn.config_checks import check_data

    try:
        local_world_size(config, gpus=lambda: 1 << 16)
    except ConfigError as exc:
        return [str(exc)]
    return check_data(config)


def _fence_callback() -> Any:
    """Stops the job before it writes a checkpoint, if its attempt no longer owns the job."""
    import pytorch_lightning as pl

    from dr_exp import fence

    class Fence(pl.Callback):
        def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
            fence.guard()

    return Fence()


def _study_callback() -> Any | None:
    """For a trial of an adaptive sweep (None otherwise): after every training epoch (validation
    has run by then) rank 0 reports the epoch's scalars to the trial, and when the study's pruner
    stops it, every rank raises :class:`dr_exp.study.Pruned` together. Epochs without the
    study's metric (no validation that epoch) are not reported."""
    from dr_exp import study

    if not study.in_trial():
        return None
    metric = study.trial_metric() if current_rank() == 0 else None
    import pytorch_lightning as pl
    import torch

    class ReportToStudy(pl.Callback):
        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.sanity_checking:
                return
            pruned: study.Pruned | None = None
            if trainer.is_global_zero:
                scalars = {k: float(v) for k, v in trainer.callback_metrics.items()
                           if isinstance(v, torch.Tensor) and v.numel() == 1}
                if metric in scalars:
                    try:
                        study.report(scalars, trainer.current_epoch)
                    except study.Pruned as exc:
                        pruned = exc
            pruned = trainer.strategy.broadcast(pruned, src=0)
            if pruned is not None:
                raise pruned

    return ReportToStudy()


def run_decon(config: DictConfig, *, job_id: str, worker_id: str, storage_path: str, resume_from: str | None = None,
              checkpoint_dir: str | Path | None = None, extra_fields: Mapping[str, Any] | None = None,
              init_weights_from: str | None = None, callbacks: Sequence[Any] = ()) -> Any:
    """Train ``config`` with the run directory's logger and checkpoints and the pre-emption hook.

    Returns decon_cnn's ``TrainResult``; raises :class:`dr_exp.preemption.Preempted` after a
    pre-emption checkpoint, and logs any error to the run directory before re-raising it.
    """
    from decon_cnn.train import RunOptions, train
    from dr_exp.study import Pruned

    study_cb = _study_callback()
    run = RunDir(Path(storage_path))
    logger = StructuredLogger(storage_path, job_id, worker_id)
    options = RunOptions(logger=logger, output_dir=run.root, checkpoint_dir=checkpoint_dir or run.checkpoints,
                         resume_from=resume_from, init_weights_from=init_weights_from,
                         should_stop=preemption.requested,
                         callbacks=[_fence_callback(), *EXTRA_CALLBACKS, *callbacks, *([study_cb] if study_cb else [])],
                         extra_fields=dict(extra_fields or {}))
    try:
        result, _ = train(config, options)
    except Pruned:  # a result, not an error (the worker records it)
        raise
    except Exception as exc:
        logger.log_error(exc, {"job_id": job_id, **(extra_fields or {})})
        raise
    if result.preempted:
        logger.log_event("checkpoint", {"path": result.last_model_path, "epoch": result.epochs, "reason": "preempted"})
        raise preemption.Preempted(result.last_model_path)
    return result


def result_dict(result: Any, artifacts: dict[str, Any], **metrics: Any) -> dict[str, Any]:
    """The dict dr_exp records: metrics, artifacts, and stop_reason/flags when present."""
    out: dict[str, Any] = {"metrics": {**result.metrics, "epochs": result.epochs, **metrics}, "artifacts": artifacts}
    if result.stop_reason:
        out["stop_reason"] = result.stop_reason
    if result.flags:
        out["flags"] = list(result.flags)
    return out


def train_classification(config: DictConfig, *, job_id: str, worker_id: str, storage_path: str,
                         resume_from: str | None = None) -> dict[str, Any]:
    result = run_decon(config, job_id=job_id, worker_id=worker_id, storage_path=storage_path, resume_from=resume_from)
    artifacts = {"best_checkpoint": result.best_model_path, "last_checkpoint": result.last_model_path}
    return result_dict(result, {k: v for k, v in artifacts.items() if v})
