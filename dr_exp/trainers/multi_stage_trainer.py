"""Run ``stages:`` in sequence, each continuing from the previous stage's weights.

Each stage has a ``name``, ``max_epochs`` and optional ``optimizer`` / ``lr_scheduler``
overrides merged onto the job's config. Stage checkpoints live in
``checkpoints/stage<i>_<name>/``; ``stages.json`` in the run directory records finished
stages, so a pre-empted job resumes mid-stage and skips the stages it already finished.
Metrics rows carry a ``stage`` field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dr_exp.fileio import atomic_write
from dr_exp.trainers.decon_trainer import __dr_exp_preload__, run_decon  # noqa: F401 - re-exported for the worker


def _stage_config(config: dict[str, Any], stage: dict[str, Any]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    override = {"trainer": {"max_epochs": int(stage["max_epochs"])}}
    for key in ("optimizer", "lr_scheduler"):
        if stage.get(key):
            override[key] = dict(stage[key])
    merged = OmegaConf.merge(OmegaConf.create(config), OmegaConf.create(override))
    return OmegaConf.to_container(merged, resolve=True)  # type: ignore[return-value]


def train(*, job_id: str, worker_id: str, storage_path: str, stages: list[dict[str, Any]],
          resume_from: str | None = None, **config: Any) -> dict[str, Any]:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(stages, (DictConfig, ListConfig)):
        stages = OmegaConf.to_container(stages, resolve=True)  # type: ignore[assignment]
    if not stages:
        raise ValueError("multi_stage_trainer needs a non-empty `stages:` list")
    names = [s.get("name") for s in stages]
    if None in names or len(set(names)) != len(names) or any("max_epochs" not in s for s in stages):
        raise ValueError(f"every stage needs a unique `name` and `max_epochs`; got {stages}")
    run = Path(storage_path)
    state_file = run / "stages.json"
    done: dict[str, Any] = json.loads(state_file.read_text()) if state_file.exists() else {}
    previous: str | None = None
    out: dict[str, Any] = {}
    for i, stage in enumerate(stages):
        name = stage["name"]
        ckpt_dir = run / "checkpoints" / f"stage{i}_{name}"
        if name in done:
            previous = done[name]["checkpoint"]
            out = done[name]
            continue
        resume_here = resume_from if resume_from and Path(resume_from).parent == ckpt_dir else None
        result = run_decon(job_id=job_id, worker_id=worker_id, storage_path=storage_path,
                           config=_stage_config(config, stage), resume_from=resume_here,
                           extra_fields={"stage": name}, init_weights_from=None if resume_here else previous,
                           checkpoint_dir=str(ckpt_dir))
        out = {"checkpoint": result["last_model_path"], "best": result["best_model_path"],
               "metrics": result["metrics"]}
        done[name] = out
        atomic_write(state_file, json.dumps(done, indent=2))
        previous = result["last_model_path"]
    return {"metrics": {**out["metrics"], "stage": stages[-1]["name"]},
            "artifacts": {name: d["checkpoint"] for name, d in done.items()},
            "best_model_path": out.get("best")}
