"""SLURM: render and submit sbatch allocations of the launcher, and report which are alive.

Allocations submitted with ``dr_exp system slurm-submit`` are recorded in
``<experiment>/slurm/allocations.jsonl``; ``dr_exp status`` asks ``squeue`` (and, for finished
ones, ``scontrol show job``, which keeps them for ``MinJobAge``) how each is doing. ``sacct`` is
never needed.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from dr_exp.api import Experiment
from dr_exp.errors import DrExpError
from dr_exp.fileio import append_line, atomic_write, read_jsonl

_TIME_RE = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$")


@dataclass
class SlurmRequest:
    array: int = 1
    gpus_per_job: int = 1
    gpus_per_worker: list[int] | None = None
    workers_per_gpu: int = 1
    workers: int = 1
    cpus_per_task: int = 4
    time: str = "48:00:00"
    partition: str | None = None
    max_hours: float | None = None
    signal_margin: int = 300
    requeue_allocation: bool = False
    idle_timeout: float = 600.0
    extra_sbatch: list[str] = field(default_factory=list)

    def validate(self) -> SlurmRequest:
        if self.array < 1:
            raise DrExpError(f"--array {self.array} must be at least 1")
        if self.gpus_per_job < 0 or self.workers_per_gpu < 1 or self.workers < 1 or self.cpus_per_task < 1:
            raise DrExpError("--gpus-per-job must be >= 0; --workers-per-gpu, --workers, --cpus-per-task >= 1")
        if self.gpus_per_worker:
            from dr_exp.launcher import layout_slots

            layout_slots([str(i) for i in range(self.gpus_per_job)], self.workers_per_gpu, self.gpus_per_worker)
        if not _TIME_RE.match(self.time):
            raise DrExpError(f"--time {self.time!r} is not a SLURM time; use e.g. 48:00:00 or 2-00:00:00")
        return self


def render_script(exp: Experiment, req: SlurmRequest, python: str | None = None) -> str:
    """A complete sbatch script for one launcher allocation (or an array of them)."""
    req.validate()
    logs = exp.layout.logs_dir
    lines = ["#!/usr/bin/env bash", f"#SBATCH --job-name=dr_exp-{exp.name}"]
    lines.append(f"#SBATCH --gres=gpu:{req.gpus_per_job}" if req.gpus_per_job else "#SBATCH --gres=none")
    lines += [f"#SBATCH --cpus-per-task={req.cpus_per_task}", f"#SBATCH --time={req.time}",
              f"#SBATCH --signal=B:USR1@{req.signal_margin}", "#SBATCH --requeue"]
    if req.partition:
        lines.append(f"#SBATCH --partition={req.partition}")
    if req.array > 1:
        lines.append(f"#SBATCH --array=0-{req.array - 1}")
        lines.append(f"#SBATCH --output={logs}/slurm-%A_%a.out")
    else:
        lines.append(f"#SBATCH --output={logs}/slurm-%j.out")
    lines += [f"#SBATCH {arg}" for arg in req.extra_sbatch]
    launcher = [python or sys.executable, "-m", "dr_exp", "--base-path", str(exp.store.base_path),
                "--experiment", exp.name, "system", "launcher", "--idle-timeout", f"{req.idle_timeout:g}"]
    if req.gpus_per_job:
        launcher += ["--workers-per-gpu", str(req.workers_per_gpu)]
        if req.gpus_per_worker:
            launcher += ["--gpus-per-worker", ",".join(map(str, req.gpus_per_worker))]
    else:
        launcher += ["--workers", str(req.workers)]
    if req.max_hours:
        launcher += ["--max-hours", f"{req.max_hours:g}"]
    if req.requeue_allocation:
        launcher.append("--requeue-allocation")
    lines += ["set -euo pipefail",
              'echo "$(date -Is) dr_exp allocation ${SLURM_JOB_ID} on $(hostname), gpus ${CUDA_VISIBLE_DEVICES:-none}"',
              "# exec: the launcher itself receives SLURM's signals (no bash trap in between).",
              "exec " + " ".join(shlex.quote(a) for a in launcher)]
    return "\n".join(lines) + "\n"


def submit(exp: Experiment, req: SlurmRequest) -> list[str]:
    """Write the script under ``<experiment>/slurm/`` and sbatch it; returns the SLURM job id."""
    if shutil.which("sbatch") is None:
        raise DrExpError("sbatch is not on PATH; run this on a SLURM login node "
                         "(or start a local cluster: bash scripts/slurm_local.sh start)")
    exp.store.ensure()
    script = render_script(exp, req)
    slurm_dir = exp.layout.slurm_dir
    slurm_dir.mkdir(exist_ok=True)
    path = slurm_dir / f"submit-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6}.sh"
    atomic_write(path, script)
    proc = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise DrExpError(f"sbatch refused the allocation: {' '.join(proc.stderr.split())[:300]}")
    job_id = proc.stdout.strip().split(";")[0]
    append_line(slurm_dir / "allocations.jsonl", {"slurm_job_id": job_id, "array": req.array,
                                                  "submitted_at": time.time(), "script": str(path)})
    return [job_id]


def _scontrol_state(job_id: str) -> dict[str, str]:
    proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
    out: dict[str, str] = {}
    if proc.returncode != 0:
        return out
    for line in proc.stdout.splitlines()[:1]:
        for token in line.split():
            key, _, value = token.partition("=")
            out[key] = value
    return out


def allocation_status(exp: Experiment) -> list[dict[str, Any]]:
    """One row per recorded allocation (array tasks expanded): state, elapsed, time left."""
    recorded = read_jsonl(exp.layout.slurm_dir / "allocations.jsonl", problems=[])
    if not recorded or shutil.which("squeue") is None:
        return [{"slurm_job": r["slurm_job_id"], "state": "unknown (no squeue here)"} for r in recorded]
    ids = [r["slurm_job_id"] for r in recorded]
    proc = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%M|%L|%R"],
                          capture_output=True, text=True, timeout=30)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
        jid, state, elapsed, left, reason = (line.split("|") + [""] * 5)[:5]
        rows.append({"slurm_job": jid, "state": state, "elapsed": elapsed, "time_left": left, "where": reason})
        seen.add(jid.split("_")[0])
    for jid in ids:
        if jid in seen:
            continue
        info = _scontrol_state(jid)
        rows.append({"slurm_job": jid, "state": info.get("JobState", "gone").lower() if info else "gone",
                     "elapsed": info.get("RunTime", "-"), "time_left": "-", "where": info.get("NodeList", "-")})
    return rows


__all__ = ["SlurmRequest", "allocation_status", "render_script", "submit"]
