"""Helpers shared by the benchmarks: machine description, percentiles, table printing."""

from __future__ import annotations

import os
import platform
import uuid
from pathlib import Path

from dr_exp.api import Experiment
from dr_exp.job import JobRecord
from dr_exp.layout import Layout


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["| " + " | ".join(c.ljust(widths[c]) for c in columns) + " |",
             "|" + "|".join("-" * (widths[c] + 2) for c in columns) + "|"]
    lines += ["| " + " | ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def populate(exp: Experiment, n: int, chunk: int = 5000) -> None:
    """Write n pending noop jobs quickly (setup only: no Hydra, no checks), in batches."""
    exp.store.ensure()
    for start in range(0, n, chunk):
        records = []
        for i in range(start, min(n, start + chunk)):
            job_id = str(uuid.uuid4())
            records.append(JobRecord(id=job_id, experiment=exp.name, config={"_target_": "dr_exp.trainers.noop.train",
                                                                             "i": i},
                                     storage_path=Layout.run_dir_relative(job_id)))
        exp.store.create_jobs(records)


__all__ = ["machine", "pct", "populate", "table"]
