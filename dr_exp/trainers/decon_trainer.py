"""Bridge from the dr_exp trainer contract to decon_cnn (imported lazily: dr_exp stays torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dr_exp import preemption
from dr_exp.logging.structured_logger import StructuredLogger

# The worker's fork server imports these once, so each job skips the torch/Lightning imports.
__dr_exp_preload__ = ["torch", "torchvision", "pytorch_lightning", "decon_cnn.train"]

_RUNTIME = ("_target_", "resume_from", "timeout", "max_attempts")


def run_decon(*, job_id: str, worker_id: str, storage_path: str, config: dict[str, Any],
              resume_from: str | None = None, extra_fields: dict[str, Any] | None = None,
              init_weights_from: str | None = None, checkpoint_dir: str | None = None) -> dict[str, Any]:
    """Train with the run directory's logger, checkpoints and the pre-emption hook."""
    from omegaconf import OmegaConf

    from decon_cnn.train import train

    logger = StructuredLogger(storage_path, job_id, worker_id)
    cfg = OmegaConf.create({k: v for k, v in config.items() if k not in _RUNTIME})
    ckpt_dir = Path(checkpoint_dir or Path(storage_path) / "checkpoints")
    try:
        out = train(cfg, logger=logger, checkpoint_dir=ckpt_dir, resume_from=resume_from,
                    should_stop=preemption.requested, extra_fields=extra_fields,
                    init_weights_from=init_weights_from)
    except Exception as exc:
        logger.log_error(exc, {"job_id": job_id, **(extra_fields or {})})
        raise
    if out["preempted"]:
        logger.log_event("checkpoint", {"path": out["last_model_path"], "epoch": out["epochs"], "reason": "preempted"})
        raise preemption.Preempted(out["last_model_path"])
    return out


def train_classification(*, job_id: str, worker_id: str, storage_path: str, resume_from: str | None = None,
                         **config: Any) -> dict[str, Any]:
    out = run_decon(job_id=job_id, worker_id=worker_id, storage_path=storage_path, config=config,
                    resume_from=resume_from)
    artifacts = {"best_checkpoint": out["best_model_path"], "last_checkpoint": out["last_model_path"]}
    return {"metrics": {**out["metrics"], "epochs": out["epochs"]}, "artifacts": artifacts,
            "best_model_path": out["best_model_path"]}
