"""Queue benchmarks: single-claim latency at 1k vs 50k pending jobs, drain rate of 1/2/4
processes claiming and completing no-op jobs with durable records, and `job list` of 10k jobs.

    python -m benchmarks.bench_queue [--big 50000] [--drain-jobs 4000]
"""

from __future__ import annotations

import argparse
import os
import multiprocessing as mp
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, pct, populate, table
from dr_exp.api import Experiment
from dr_exp.state import Status


def claim_latency(base: Path, n: int, samples: int) -> dict:
    exp = Experiment(base, f"lat{n}")
    populate(exp, n)
    exp.claim("warm")  # the first claim lists the queue; time the steady state like a worker sees it
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        rec = exp.claim("w", refresh_seconds=2.0)
        times.append((time.perf_counter() - t0) * 1000)
        assert rec is not None
    return {"pending": n, "claims": samples, "p50_ms": f"{pct(times, 50):.3f}", "p99_ms": f"{pct(times, 99):.3f}",
            "max_ms": f"{max(times):.2f}"}


def _drain(base: str, name: str, wid: str, go, counter) -> None:
    exp = Experiment(base, name)
    go.wait()
    done = 0
    while True:
        rec = exp.claim(wid, refresh_seconds=1.0)
        if rec is None:
            break
        exp.finish(rec.id, wid, rec.attempts, Status.COMPLETED, result={"metrics": {}})
        done += 1
    with counter.get_lock():
        counter.value += done


def drain_rate(base: Path, procs: int, jobs: int) -> dict:
    exp = Experiment(base, f"drain{procs}")
    populate(exp, jobs)
    ctx = mp.get_context("fork")
    go, counter = ctx.Event(), ctx.Value("i", 0)
    ps = [ctx.Process(target=_drain, args=(str(base), exp.name, f"w{i}", go, counter)) for i in range(procs)]
    for p in ps:
        p.start()
    time.sleep(0.5)
    t0 = time.perf_counter()
    go.set()
    for p in ps:
        p.join()
    elapsed = time.perf_counter() - t0
    assert counter.value == jobs, (counter.value, jobs)
    return {"processes": procs, "jobs": jobs, "seconds": f"{elapsed:.2f}", "jobs_per_s": f"{jobs / elapsed:.0f}"}


def list_time(base: Path, n: int) -> dict:
    exp = Experiment(base, "list")
    populate(exp, n)
    out = {}
    for fmt in ("table", "json"):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "dr_exp", "--base-path", str(base), "--experiment", "list",
                               "job", "list", "--format", fmt], capture_output=True, text=True)
        out[fmt] = time.perf_counter() - t0
        assert proc.returncode == 0 and proc.stdout.count("\n") >= n
    return {"jobs": n, "table_s": f"{out['table']:.2f}", "json_s": f"{out['json']:.2f}"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--big", type=int, default=50000)
    parser.add_argument("--samples", type=int, default=900)
    parser.add_argument("--drain-jobs", type=int, default=4000)
    parser.add_argument("--list-jobs", type=int, default=10000)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        base = Path(tmp)
        lat = [claim_latency(base, n, args.samples) for n in (args.small, args.big)]
        print("\nsingle claim latency (durable record write included)")
        print(table(lat, ["pending", "claims", "p50_ms", "p99_ms", "max_ms"]))
        ratio = float(lat[1]["p99_ms"]) / float(lat[0]["p99_ms"])
        print(f"p99 ratio {args.big} vs {args.small} pending: {ratio:.2f}x")
        drains = [drain_rate(base, p, args.drain_jobs) for p in (1, 2, 4)]
        print("\ndrain rate: claim + complete no-op jobs through the Python API")
        print(table(drains, ["processes", "jobs", "seconds", "jobs_per_s"]))
        print("\n`dr_exp job list` (whole command, fresh process)")
        print(table([list_time(base, args.list_jobs)], ["jobs", "table_s", "json_s"]))


if __name__ == "__main__":
    main()
