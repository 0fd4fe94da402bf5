"""Queue benchmarks: single-claim latency at 1k vs 50k pending jobs, drain rate of 1/2/4
processes claiming and completing no-op jobs with durable records (next to the same code without
the record swap, and to Celery's filesystem broker), the submit rate of a 10,000-job batch next to
Celery's filesystem broker, and `job list` of 10k jobs. Every comparison is measured in the same
run, alternating, and reported as a ratio.

    python -m benchmarks.bench_queue [--big 50000] [--drain-jobs 4000] [--rounds 3] [--submit 10000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.common import machine, pct, populate, table
from benchmarks.kombu_baseline import JOB_CONFIG, kombu_drain_rate, kombu_submit_rate
from dr_exp import fileio
from dr_exp.api import Experiment


def claim_latency(base: Path, sizes: tuple[int, ...], samples: int) -> list[dict]:
    """Single claims timed one by one, alternating between queues of each size, so that whatever
    the disk is doing meanwhile (writeback, trims) falls on every size alike."""
    exps = []
    for n in sizes:
        exp = Experiment(base, f"lat{n}")
        populate(exp, n)
        exps.append(exp)
    relist = []
    for exp in exps:
        t0 = time.perf_counter()
        exp.store.list_markers()
        relist.append((time.perf_counter() - t0) * 1000)
        # The first claim lists the queue, as a worker re-lists it every 2 s: claims in between
        # are timed here, and the listing separately.
        exp.claim("warm")
    times: list[list[float]] = [[] for _ in sizes]
    for _ in range(samples):
        for exp, out in zip(exps, times, strict=False):
            t0 = time.perf_counter()
            attempt = exp.claim("w", refresh_seconds=2.0)
            out.append((time.perf_counter() - t0) * 1000)
            assert attempt is not None
    return [{"pending": n, "claims": samples, "p50_ms": f"{pct(t, 50):.3f}", "p99_ms": f"{pct(t, 99):.3f}",
             "max_ms": f"{max(t):.2f}", "relist_ms": f"{r:.1f}"} for n, t, r in zip(sizes, times, relist, strict=False)]


def _drain(base: str, name: str, wid: str, go, counter, swap: bool) -> None:
    if not swap:  # as on a filesystem without renameat2(RENAME_EXCHANGE): every update frees a file
        fileio._renameat2 = False
    exp = Experiment(base, name)
    go.wait()
    done = 0
    while True:
        attempt = exp.claim(wid, refresh_seconds=1.0)
        if attempt is None:
            break
        exp.complete(attempt, {"metrics": {}})
        done += 1
    with counter.get_lock():
        counter.value += done


def drain_seconds(base: Path, procs: int, jobs: int, swap: bool) -> float:
    exp = Experiment(base, f"drain-{uuid.uuid4().hex[:8]}")
    populate(exp, jobs)
    ctx = mp.get_context("fork")
    go, counter = ctx.Event(), ctx.Value("i", 0)
    ps = [ctx.Process(target=_drain, args=(str(base), exp.name, f"w{i}", go, counter, swap)) for i in range(procs)]
    for p in ps:
        p.start()
    time.sleep(0.5)
    t0 = time.perf_counter()
    go.set()
    for p in ps:
        p.join()
    elapsed = time.perf_counter() - t0
    assert counter.value == jobs, (counter.value, jobs)
    return elapsed


def drain_rate(base: Path, procs: int, jobs: int, rounds: int) -> dict:
    """dr_exp as it runs, next to the same code with the record swap turned off (the claim then
    renames over the pending record, freeing it, as on NFS) and to Celery's filesystem broker
    draining as many messages with as many processes; rounds alternate between the three and
    the medians are reported, as a virtual disk's speed drifts."""
    swap, rename, kombu = [], [], []
    for _ in range(rounds):
        swap.append(drain_seconds(base, procs, jobs, swap=True))
        rename.append(drain_seconds(base, procs, jobs, swap=False))
        kombu.append(jobs / kombu_drain_rate(jobs, procs, base))
    swap_s, rename_s, kombu_s = statistics.median(swap), statistics.median(rename), statistics.median(kombu)
    return {"processes": procs, "jobs": jobs, "rounds": rounds,
            "jobs_per_s": f"{jobs / swap_s:.0f}", "min_max_jobs_per_s": f"{jobs / max(swap):.0f}-{jobs / min(swap):.0f}",
            "without_swap_jobs_per_s": f"{jobs / rename_s:.0f}", "kombu_jobs_per_s": f"{jobs / kombu_s:.0f}",
            "vs_kombu": f"{kombu_s / swap_s:.2f}"}


_COUNTED = ("rename", "replace", "stat", "lstat", "open", "listdir", "utime", "unlink", "fstat", "pwrite", "write")


def fs_ops_per_claim(base: Path, pending: int, claims: int) -> tuple[dict[str, float], int]:
    """Filesystem operations of one claim + completion, counted by wrapping the os functions in
    this process (after one listing), and the directory entries one re-list reads."""
    exp = Experiment(base, f"ops-{uuid.uuid4().hex[:8]}")
    populate(exp, pending)
    exp.claim("warm")  # the listing, counted separately
    counts = dict.fromkeys(_COUNTED, 0)
    originals = {name: getattr(os, name) for name in _COUNTED}

    def counted(name):  # type: ignore[no-untyped-def]
        real = originals[name]

        def call(*a, **kw):  # type: ignore[no-untyped-def]
            counts[name] += 1
            return real(*a, **kw)
        return call

    for name in _COUNTED:
        setattr(os, name, counted(name))
    try:
        for _ in range(claims):
            attempt = exp.claim("w", refresh_seconds=2.0)
            exp.complete(attempt, {"metrics": {}})
    finally:
        for name, real in originals.items():
            setattr(os, name, real)
    return {k: v / claims for k, v in counts.items() if v}, len(exp.store.list_markers())


def metadata_model(per_claim: dict[str, float], workers: int, pending: int, job_minutes: float,
                   submits_per_hour: float, refresh_seconds: float = 2.0) -> list[dict]:
    """Metadata operations per second on one file server: ``workers`` claiming workers over
    ``pending`` jobs, each job running ``job_minutes``, new jobs submitted ``submits_per_hour``
    times an hour. Before: every worker re-lists the queue every ``refresh_seconds``. After:
    each worker opens one "job added" signal per resource class every ``refresh_seconds`` and
    re-lists only when it changed. Both walk past entries other workers took (one lstat each;
    about one per claim made elsewhere since this worker's last claim)."""
    claims_per_s = workers / (job_minutes * 60)
    per_claim_ops = sum(per_claim.values())
    # A free worker walks past the entries claimed elsewhere since its own last claim.
    stale = claims_per_s * (claims_per_s * job_minutes * 60)
    before = {"relist_entries_per_s": workers * pending / refresh_seconds,
              "signal_opens_per_s": 0.0}
    after = {"relist_entries_per_s": workers * pending * submits_per_hour / 3600,
             "signal_opens_per_s": workers / refresh_seconds}
    rows = []
    for name, part in (("re-list every 2 s", before), ("change signal", after)):
        total = part["relist_entries_per_s"] + part["signal_opens_per_s"] + claims_per_s * per_claim_ops + stale
        rows.append({"claim path": name, "readdir_entries_per_s": f"{part['relist_entries_per_s']:,.0f}",
                     "signal_opens_per_s": f"{part['signal_opens_per_s']:,.0f}",
                     "claim_ops_per_s": f"{claims_per_s * per_claim_ops:,.0f}",
                     "stale_lstats_per_s": f"{stale:,.0f}", "total_per_s": f"{total:,.0f}"})
    return rows


def _jobs(n: int, round_: int) -> list[dict]:
    out = []
    for i in range(n):
        config = {"_target_": "dr_exp.trainers.noop.train", **JOB_CONFIG}
        config["seed"] = round_ * n + i
        out.append(config)
    return out


def submit_rate(base: Path, n: int, rounds: int) -> dict:
    """``Experiment.submit_configs`` of an n-job batch (records fsynced: durable when it returns),
    next to publishing as many tasks of the same config to Celery's filesystem broker (not fsynced)."""
    ours, kombu = [], []

    def run_ours(r: int) -> None:
        configs = _jobs(n, r)
        exp = Experiment(base, f"submit-{uuid.uuid4().hex[:8]}")
        t0 = time.perf_counter()
        result = exp.submit_configs(configs)
        ours.append(time.perf_counter() - t0)
        assert len(result.submitted) == n

    def run_kombu(r: int) -> None:
        kombu.append(n / kombu_submit_rate(n, base, cleanup=False))

    # Alternating which goes first, nothing deleted in between, and the previous run's writes
    # flushed before each: neither side pays for the other's writeback.
    for r in range(rounds):
        for run in (run_ours, run_kombu) if r % 2 == 0 else (run_kombu, run_ours):
            os.sync()
            time.sleep(0.5)
            run(r)
    ours_s, kombu_s = statistics.median(ours), statistics.median(kombu)
    return {"jobs": n, "rounds": rounds, "dr_exp_jobs_per_s": f"{n / ours_s:.0f}",
            "min_max": f"{n / max(ours):.0f}-{n / min(ours):.0f}", "kombu_jobs_per_s": f"{n / kombu_s:.0f}",
            "vs_kombu": f"{kombu_s / ours_s:.2f}"}


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
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--list-jobs", type=int, default=10000)
    parser.add_argument("--submit", type=int, default=10000)
    parser.add_argument("--only", choices=["claim", "drain", "ops", "submit", "list"], action="append",
                        help="run only these parts (repeatable; default: all)")
    args = parser.parse_args()
    parts = set(args.only or ["claim", "drain", "ops", "submit", "list"])
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        base = Path(tmp)
        if "claim" in parts:
            lat = claim_latency(base, (args.small, args.big), args.samples)
            print("\nsingle claim latency (marker taken, lease written, record written as running)")
            print(table(lat, ["pending", "claims", "p50_ms", "p99_ms", "max_ms", "relist_ms"]))
            ratio = float(lat[1]["p99_ms"]) / float(lat[0]["p99_ms"])
            print(f"p99 ratio {args.big} vs {args.small} pending: {ratio:.2f}x")
        if "drain" in parts:
            drains = [drain_rate(base, p, args.drain_jobs, args.rounds) for p in (1, 2, 4)]
            print("\ndrain rate: claim + complete no-op jobs through the Python API, vs Celery's filesystem broker")
            print(table(drains, ["processes", "jobs", "rounds", "jobs_per_s", "min_max_jobs_per_s",
                                 "without_swap_jobs_per_s", "kombu_jobs_per_s", "vs_kombu"]))
        if "ops" in parts:
            ops, _ = fs_ops_per_claim(base, args.big, 500)
            print(f"\nfilesystem operations per claim + completion ({args.big} pending, after the first listing)")
            print(table([{k: f"{v:.2f}" for k, v in ops.items()}], list(ops)))
            print("\nmodelled metadata load on one file server: 1,000 workers, 50,000 pending jobs, 10-minute jobs, "
                  "a submit every 10 minutes")
            model = metadata_model(ops, 1000, 50_000, 10.0, 6.0)
            print(table(model, list(model[0])))
        if "submit" in parts:
            sub = submit_rate(base, args.submit, args.rounds)
            print("\nsubmit rate: one batch, durable when the call returns, vs Celery's filesystem broker "
                  "(alternating which goes first)")
            print(table([sub], ["jobs", "rounds", "dr_exp_jobs_per_s", "min_max", "kombu_jobs_per_s", "vs_kombu"]))
        if "list" in parts:
            print("\n`dr_exp job list` (whole command, fresh process)")
            print(table([list_time(base, args.list_jobs)], ["jobs", "table_s", "json_s"]))

if __name__ == "__main__":
    main()
