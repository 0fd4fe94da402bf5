"""Run ``stages:`` in sequence, each continuing from the previous stage's weights.

Each stage has a ``name``, ``max_epochs`` and optional ``optimizer`` / ``lr_scheduler``
sections: values merge onto the job's sections; a section naming another ``_target_``
replaces the job's. Stage checkpoints live in ``<checkpoints>/stage<i>_<name>/``, and
``<checkpoints>/stages.json`` records finished stages, so a pre-empted job resumes mid-stage
and skips the stages it already finished. Metrics rows carry a ``stage`` field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from dr_exp.errors import ConfigError
from dr_exp.fileio import atomic_write
from dr_exp.ranks import current_rank
from dr_exp.rundir import RunDir
from dr_exp.trainers.decon_trainer import (  # noqa: F401 - the worker and submit look for these here
    __dr_exp_check__,
    __dr_exp_check_keys__,
    __dr_exp_preload__,
    run_decon,
)


def _stages(config: DictConfig) -> list[dict[str, Any]]:
    from omegaconf import OmegaConf

    stages = config.get("stages")
    stages = OmegaConf.to_container(stages, resolve=True) if OmegaConf.is_config(stages) else stages
    if not stages or not isinstance(stages, list):
        raise ConfigError("multi_stage_trainer needs a non-empty `stages:` list of {name, max_epochs, ...}")
    names = [s.get("name") if isinstance(s, dict) else None for s in stages]
    if None in names or len(set(names)) != len(names) or any("max_epochs" not in s for s in stages):
        raise ConfigError(f"every stage needs a unique `name` and `max_epochs`; got {stages}")
    return stages


def stage_config(config: DictConfig | dict[str, Any], stage: dict[str, Any]) -> DictConfig:
    """The job's config with the stage's epochs and optimizer/lr_scheduler sections applied."""
    from omegaconf import OmegaConf

    # A copy, interpolations such as ${oc.env:...} kept for the node that runs the job.
    cfg = OmegaConf.create(OmegaConf.to_container(config, resolve=False) if OmegaConf.is_config(config) else config)
    cfg.pop("stages", None)
    cfg.trainer.max_epochs = int(stage["max_epochs"])
    for key in ("optimizer", "lr_scheduler"):
        override = stage.get(key)
        if override is None:
            continue
        base = cfg.get(key) or {}
        if override.get("_target_") and override["_target_"] != base.get("_target_"):
            cfg[key] = {"_partial_": True, **override}
        else:
            cfg[key] = OmegaConf.merge(base, override)
    return cfg


def train(config: DictConfig, *, job_id: str, worker_id: str, storage_path: str,
          resume_from: str | None = None) -> dict[str, Any]:
    stages = _stages(config)
    run = RunDir(Path(storage_path))
    state_file = run.checkpoints / "stages.json"
    done: dict[str, Any] = json.loads(state_file.read_text()) if state_file.exists() else {}
    previous: str | None = None
    flags: list[str] = []
    for i, stage in enumerate(stages):
        name = stage["name"]
        ckpt_dir = run.checkpoints / f"stage{i}_{name}"
        if name in done:
            previous = done[name]["checkpoint"]
            flags += [f for f in done[name].get("flags", []) if f not in flags]
            continue
        resume_here = resume_from if resume_from and Path(resume_from).parent == ckpt_dir else None
        result = run_decon(stage_config(config, stage), job_id=job_id, worker_id=worker_id,
                           storage_path=storage_path, resume_from=resume_here, checkpoint_dir=ckpt_dir,
                           extra_fields={"stage": name}, init_weights_from=None if resume_here else previous)
        flags += [f for f in result.flags if f not in flags]
        done[name] = {"checkpoint": result.last_model_path, "best": result.best_model_path,
                      "metrics": result.metrics, "epochs": result.epochs, "flags": result.flags,
                      "stop_reason": result.stop_reason}
        if current_rank() == 0:  # with several ranks (DDP), rank 0 alone writes the run directory
            state_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(state_file, json.dumps(done, indent=2))
        previous = result.last_model_path
    last = done[stages[-1]["name"]]
    out = {"metrics": {**last["metrics"], "epochs": last["epochs"], "stage": stages[-1]["name"]},
           "artifacts": {name: d["checkpoint"] for name, d in done.items()}}
    if last.get("stop_reason"):
        out["stop_reason"] = f"stage {stages[-1]['name']}: {last['stop_reason']}"
    if flags:
        out["flags"] = flags
    return out
