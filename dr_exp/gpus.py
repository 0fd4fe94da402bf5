"""Which GPUs a process may use, read from the environment (no CUDA library is touched)."""

from __future__ import annotations

import os

GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "GPU_DEVICE_ORDINAL")


def visible_gpus(environ: dict[str, str] | None = None) -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES, else SLURM's GPU variables. An empty
    CUDA_VISIBLE_DEVICES means none."""
    env = os.environ if environ is None else environ
    for key in GPU_VARIABLES:
        value = env.get(key)
        if value is None:
            continue
        if key == "CUDA_VISIBLE_DEVICES" and value.strip() == "":
            return []
        if value.strip() not in ("", "NoDevFiles"):
            return [v.strip() for v in value.split(",") if v.strip() and v.strip() != "-1"]
    return []
