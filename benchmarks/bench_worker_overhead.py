"""Per-job overhead of a long-lived worker (claim -> trainer entered -> result recorded) with the
noop trainer, next to what a fresh Python that imports torch and pytorch_lightning costs, which
is what a worker that starts a new interpreter per job would pay on every job.

    python -m benchmarks.bench_worker_overhead [--jobs 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, pct, table
from dr_exp.api import Experiment
from dr_exp.fileio import read_jsonl


def worker_overhead(base: Path, jobs: int, preload: str) -> dict:
    exp = Experiment(base, f"overhead{len(preload)}")
    exp.submit_configs([{"_target_": "dr_exp.trainers.noop.train", "i": i} for i in range(jobs)])
    cmd = [sys.executable, "-m", "dr_exp", "--base-path", str(base), "--experiment", exp.name, "system", "worker",
           "--idle-timeout", "0"] + (["--preload", preload] if preload else [])
    subprocess.run(cmd, check=True)
    total, to_trainer = [], []
    runs = []
    for rec in exp.list():
        claimed = next(h["at"] for h in rec.history if h["to"] == "running")
        done = next(h["at"] for h in rec.history if h["to"] == "completed")
        started = next(e["time"] for e in read_jsonl(exp.run_dir(rec).events) if e["event"] == "started")
        runs.append((claimed, done, started))
    for claimed, done, started in sorted(runs):  # in the order the worker ran them
        total.append((done - claimed) * 1000)
        to_trainer.append((started - claimed) * 1000)
    steady = total[1:]  # the first job also starts the fork server
    return {"worker": f"long-lived, preload={preload or '-'}", "jobs": jobs,
            "first_job_ms": f"{total[0]:.0f}", "p50_ms": f"{pct(steady, 50):.1f}", "p90_ms": f"{pct(steady, 90):.1f}",
            "mean_ms": f"{statistics.mean(steady):.1f}", "claim_to_trainer_p50_ms": f"{pct(to_trainer[1:], 50):.1f}"}


def fresh_python(runs: int) -> dict:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, pytorch_lightning"], check=True)
        times.append((time.perf_counter() - t0) * 1000)
    return {"worker": "fresh python: import torch, pytorch_lightning", "jobs": runs, "first_job_ms": f"{times[0]:.0f}",
            "p50_ms": f"{pct(times, 50):.0f}", "p90_ms": f"{pct(times, 90):.0f}", "mean_ms": f"{statistics.mean(times):.0f}",
            "claim_to_trainer_p50_ms": "-"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--fresh-runs", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        rows = [worker_overhead(Path(tmp), args.jobs, ""),
                worker_overhead(Path(tmp), args.jobs, "torch,pytorch_lightning"),
                fresh_python(args.fresh_runs)]
    print(table(rows, ["worker", "jobs", "first_job_ms", "p50_ms", "p90_ms", "mean_ms", "claim_to_trainer_p50_ms"]))


if __name__ == "__main__":
    main()
