"""Read commands on big experiments: `status`, `job list --status failed` and
`results --sort val/acc --limit 20` as whole processes (Python start-up included), with their
peak memory, next to the same answers computed by reading every record, at 10,000, 100,000 and
(generated directly, not through submit) 1,000,000 jobs. Also the time of a 100,000-point sweep
through `job sweep` (composition included).

    python -m benchmarks.bench_scale [--sizes 10000,100000,1000000] [--baseline-max 100000] [--sweep 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.common import machine, table
from dr_exp.api import Experiment
from dr_exp.job import JobRecord
from dr_exp.layout import Layout
from dr_exp.summary import META, SNAPSHOT, summary_line

STATUSES = [("completed", 70), ("failed", 10), ("pending", 10), ("running", 5), ("cancelled", 5)]
REPO = Path(__file__).resolve().parent.parent

# The same three answers from the records alone (what the commands did before the summary).
BASELINE = r"""
import heapq, sys
from dr_exp.api import Experiment
from dr_exp.results import result_rows
exp = Experiment(sys.argv[1], sys.argv[2])
what = sys.argv[3]
if what == "status":
    counts = {}
    for rec in exp.store.iter_records():
        counts[rec.status] = counts.get(rec.status, 0) + 1
    print(counts)
elif what == "list":
    rows = [rec for rec in exp.store.iter_records() if rec.status == "failed"]
    rows.sort(key=lambda r: (-r.priority, r.seq))
    print(len(rows))
else:
    rows = result_rows(r for r in exp.store.iter_records())
    top = heapq.nlargest(20, (r for r in rows if r.get("val/acc") is not None), key=lambda r: r["val/acc"])
    print(len(top))
"""


def generate(base: Path, name: str, n: int, seed: int = 0) -> None:
    """n records (and the summary snapshot a worker's fold would write), straight to disk."""
    rng = random.Random(seed)
    exp = Experiment(base, name)
    exp.store.ensure()
    lay = exp.layout
    weights = [w for _, w in STATUSES]
    summary_dir = lay.root / "summary"
    summary_dir.mkdir(exist_ok=True)
    now = time.time()
    with open(summary_dir / SNAPSHOT, "wb") as snap:
        for i in range(n):
            job_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            status = rng.choices([s for s, _ in STATUSES], weights)[0]
            lr = 10 ** rng.uniform(-4, -1)
            rec = JobRecord(id=job_id, experiment=name, status=status, storage_path=Layout.run_dir_relative(job_id),
                            config={"_target_": "dr_exp.trainers.noop.train", "optimizer": {"lr": lr}, "seed": i % 5},
                            sweep_id="bench", sweep_params={"optimizer.lr": f"{lr:.6g}", "seed": str(i % 5)},
                            overrides=[f"optimizer.lr={lr:.6g}", f"seed={i % 5}"], created_at=now - n + i,
                            started_at=None if status == "pending" else now - n + i + 1,
                            finished_at=now - n + i + 30 if status in ("completed", "failed", "cancelled") else None,
                            attempts=0 if status == "pending" else 1, rev=3)
            if status == "completed":
                rec.result = {"metrics": {"val/acc": rng.uniform(0.5, 0.99), "val/loss": rng.uniform(0.05, 2.0),
                                          "epochs": 50}, "artifacts": {}}
            elif status == "failed":
                rec.error = {"type": "RuntimeError", "message": "diverged"}
            fd = os.open(lay.record(job_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, rec.to_json().encode())
            os.close(fd)
            snap.write(summary_line(rec))
    (summary_dir / META).write_text(json.dumps({"offsets": {}, "written_at": time.time()}))


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak memory (MiB) of a whole process."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, cwd=REPO)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-500:]}")
    peak_kb = int(re.findall(r"^(\d+)$", proc.stderr, re.M)[-1])
    return elapsed, peak_kb / 1024


COMMANDS = {"status": ["status"], "list": ["job", "list", "--status", "failed"],
            "results": ["results", "--sort", "val/acc", "--reverse", "--limit", "20"]}


def measure(base: Path, name: str, n: int, baseline: bool) -> list[dict]:
    rows = []
    for what, args in COMMANDS.items():
        cmd = [sys.executable, "-m", "dr_exp", "--base-path", str(base), "--experiment", name, *args]
        secs, mib = min(timed(cmd) for _ in range(2))
        row = {"jobs": f"{n:,}", "command": " ".join(args), "seconds": f"{secs:.2f}", "peak_MiB": f"{mib:.0f}"}
        if baseline:
            bsecs, bmib = timed([sys.executable, "-c", BASELINE, str(base), name, what])
            row.update(every_record_seconds=f"{bsecs:.2f}", every_record_MiB=f"{bmib:.0f}",
                       speedup=f"{bsecs / secs:.1f}x")
        rows.append(row)
    return rows


def sweep_seconds(base: Path, n: int) -> float:
    cmd = [sys.executable, "-m", "dr_exp", "--base-path", str(base), "--experiment", "sweep", "job", "sweep",
           "--config", "exp_configs/quickstart.yaml", "--params", f"optimizer.lr=range(0,{n // 10}) seed=range(0,10)"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0 and f"submitted {n} jobs" in proc.stdout, proc.stderr[-500:]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--baseline-max", type=int, default=100000,
                        help="read every record too, up to this many jobs (it takes minutes beyond)")
    parser.add_argument("--sweep", type=int, default=100000)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        base = Path(tmp)
        for n in (int(s) for s in args.sizes.split(",")):
            t0 = time.perf_counter()
            generate(base, f"n{n}", n)
            print(f"generated {n:,} jobs in {time.perf_counter() - t0:.0f}s", flush=True)
            rows += measure(base, f"n{n}", n, n <= args.baseline_max)
            print(table(rows, list(rows[0])), flush=True)
        if args.sweep:
            secs = sweep_seconds(base, args.sweep)
            print(f"\n`dr_exp job sweep` of {args.sweep:,} points (compose + check + write, durable): {secs:.1f} s")


if __name__ == "__main__":
    main()
