"""Dashboard benchmarks on an experiment of 10,000 completed jobs with 50 epochs of metrics each:
the job table's JSON (cold and warm), one job's curves, the page interactive in a real browser,
and ``dr_exp results`` on the same experiment as a whole process.

    python -m benchmarks.bench_dashboard [--jobs 10000] [--epochs 50] [--rounds 20] [--keep DIR]

The experiment's files are written directly (records, metrics.jsonl), as workers would leave
them, which takes seconds instead of running 10,000 jobs. The browser step needs chromium
(``apt-get install -y chromium``) and playwright; it is skipped with the reason otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from benchmarks.common import machine, pct, table
from dr_exp.api import Experiment
from dr_exp.dashboard.payload import SCAN_MAX_AGE
from dr_exp.job import JobRecord


def generate(base: Path, name: str, jobs: int, epochs: int, seed: int = 0) -> Experiment:
    """An experiment of ``jobs`` completed jobs of one sweep (lr x depth x seed), each with
    ``epochs`` per-epoch rows of train/loss, val/loss and val/acc, written without fsync."""
    rng = random.Random(seed)
    exp = Experiment(base, name)
    exp.store.ensure()
    sweep_id = uuid.uuid4().hex[:12]
    start = time.time() - jobs * 2.0
    lrs = ["0.3", "0.1", "0.03", "0.01", "0.003"]
    for i in range(jobs):
        job_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        params = {"optimizer.lr": lrs[i % 5], "model.depth": str(2 + (i // 5) % 4), "seed": str(i // 20)}
        run = exp.run_dir(job_id)
        run.root.mkdir(parents=True)
        lr = float(params["optimizer.lr"])
        t0 = start + i * 2.0
        lines = []
        acc = loss = 0.0
        for e in range(epochs):
            speed = 1 - math.exp(-(e + 1) * lr * 3)
            acc = 0.5 + 0.45 * speed + rng.uniform(-0.01, 0.01)
            loss = 2.3 * (1 - speed) + 0.05 + rng.uniform(0, 0.02)
            lines.append(json.dumps({"time": t0 + e, "epoch": e, "step": (e + 1) * 100, "phase": "epoch",
                                     "train/loss": round(loss * 1.1, 5), "val/loss": round(loss, 5),
                                     "val/acc": round(acc, 5)}))
        (run.metrics).write_text("\n".join(lines) + "\n")
        rec = JobRecord(id=job_id, experiment=name, config={"_target_": "dr_exp.trainers.noop.train", **params},
                        status="completed", seq=time.time_ns(), created_at=t0 - 1, started_at=t0,
                        finished_at=t0 + epochs * 0.03, attempts=1, sweep_id=sweep_id, sweep_params=params,
                        overrides=[f"{k}={v}" for k, v in params.items()],
                        result={"metrics": {"val/acc": round(acc, 5), "val/loss": round(loss, 5), "epochs": epochs},
                                "artifacts": {}},
                        history=[{"time": t0, "from": "pending", "to": "running", "reason": "claimed"},
                                 {"time": t0 + 1, "from": "running", "to": "completed", "reason": "done"}])
        rec.storage_path = exp.layout.run_dir_relative(job_id)
        Path(exp.layout.record(job_id)).write_text(rec.to_json())
    return exp


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=60) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:  # 304 Not Modified
        body = exc.read()
    return (time.perf_counter() - t0) * 1000, body


def _aged() -> bool:
    time.sleep(SCAN_MAX_AGE + 0.1)
    return True


def _touch_one(exp: Experiment) -> None:
    """Rewrite one record (as a worker would, by rename), so the next table is rebuilt."""
    rec = exp.list()[0]
    rec.priority = 100 if rec.priority != 100 else 101
    path = Path(exp.layout.record(rec.id))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(rec.to_json())
    os.replace(tmp, path)


def start_dashboard(base: Path, experiment: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "dr_exp", "--base-path", str(base), "--experiment", experiment,
                             "dashboard", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("dashboard: http"):
            return proc, line.split()[1].split("#")[0].rstrip("/")
    raise RuntimeError(f"the dashboard did not start (exit {proc.wait()})")


def browser_interactive(url: str, rows_expected: int) -> float | str:
    """Milliseconds from navigation until the job table shows rows and answers a click on a
    column header (sorted), in headless chromium; or why it was skipped."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return "skipped: no chromium (apt-get install -y chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "skipped: playwright is not installed (pip install -e '.[test]')"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        # bypass_csp: playwright evaluates its wait conditions as strings, which the page's CSP refuses.
        page = browser.new_page(viewport={"width": 1400, "height": 900}, bypass_csp=True)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            page.goto(url)
            page.wait_for_selector(".jobrow")
            page.wait_for_function(f"document.querySelector('#count').textContent.includes('{rows_expected:,}')")
            page.click("[data-col='val/acc']")
            page.wait_for_selector("[data-col='val/acc'].sorted")
            times.append((time.perf_counter() - t0) * 1000)
        browser.close()
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--keep", default=None, help="Write the experiment here and keep it.")
    args = ap.parse_args()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_dash_"))
    print(machine())
    t0 = time.perf_counter()
    exp = generate(base, "bench", args.jobs, args.epochs)
    os.sync()
    print(f"wrote {args.jobs} jobs x {args.epochs} epochs in {time.perf_counter() - t0:.1f} s under {base}")
    rows = []
    proc, url = start_dashboard(base, "bench")
    try:
        api = f"{url}/api/experiments/bench"
        cold, body = _get(f"{api}/jobs")
        table_rows = len(json.loads(body)["rows"])
        assert table_rows == args.jobs, table_rows
        # Each timed request comes after the server's scan has aged out (SCAN_MAX_AGE), as a
        # browser's poll every 2 s does: these include a fresh pass over the 10,000 records.
        polls_n = min(args.rounds, 10)
        warm = [_get(f"{api}/jobs")[0] for _ in range(polls_n) if _aged()]
        gz = [_get(f"{api}/jobs", {"Accept-Encoding": "gzip"}) for _ in range(polls_n) if _aged()]
        etag = urllib.request.urlopen(f"{api}/jobs", timeout=60).headers["ETag"]
        polls = [_get(f"{api}/jobs", {"If-None-Match": etag})[0] for _ in range(polls_n) if _aged()]
        changed = []
        for _ in range(polls_n):
            _touch_one(exp)
            _aged()
            changed.append(_get(f"{api}/jobs")[0])
        again = [_get(f"{api}/jobs")[0] for _ in range(args.rounds)]
        rows.append({"what": f"job table JSON, {args.jobs} jobs ({len(body) / 1e6:.1f} MB), cold", "ms": f"{cold:.0f}",
                     "target": "-"})
        rows.append({"what": "job table JSON, warm, unchanged, a poll every 2 s (median / p90)",
                     "ms": f"{statistics.median(warm):.0f} / {pct(warm, 90):.0f}", "target": "≤ 300"})
        rows.append({"what": f"  the same gzipped ({len(gz[0][1]) / 1e6:.2f} MB), as browsers ask (median / p90)",
                     "ms": f"{statistics.median(g[0] for g in gz):.0f} / {pct([g[0] for g in gz], 90):.0f}", "target": "≤ 300"})
        rows.append({"what": "  a poll with nothing new (If-None-Match: 304), median / p90",
                     "ms": f"{statistics.median(polls):.0f} / {pct(polls, 90):.0f}", "target": "-"})
        rows.append({"what": "  after one job changed (table rebuilt), median / p90",
                     "ms": f"{statistics.median(changed):.0f} / {pct(changed, 90):.0f}", "target": "≤ 300"})
        rows.append({"what": "  several requests within a second (one scan shared), median / p90",
                     "ms": f"{statistics.median(again):.0f} / {pct(again, 90):.0f}", "target": "-"})
        ids = [r.id for r in exp.list()[: args.rounds]]
        first = [_get(f"{api}/jobs/{job_id}/curves")[0] for job_id in ids]
        again = [_get(f"{api}/jobs/{job_id}/curves")[0] for job_id in ids]
        rows.append({"what": f"a job's curves, {args.epochs} epochs x 3 metrics, first read (median / max)",
                     "ms": f"{statistics.median(first):.1f} / {max(first):.1f}", "target": "≤ 100"})
        rows.append({"what": "a job's curves, again (median / max)",
                     "ms": f"{statistics.median(again):.1f} / {max(again):.1f}", "target": "≤ 100"})
        detail = [_get(f"{api}/jobs/{job_id}")[0] for job_id in ids]
        rows.append({"what": "a job's page data (record, error, checkpoints, events), median",
                     "ms": f"{statistics.median(detail):.1f}", "target": "-"})
        interactive = browser_interactive(f"{url}/#/x/bench", args.jobs)
        rows.append({"what": f"page interactive in chromium ({args.jobs} rows shown, sorted by a click), median of 3",
                     "ms": f"{interactive:.0f}" if isinstance(interactive, float) else interactive, "target": "≤ 2000"})
    finally:
        proc.terminate()
        proc.wait(10)
    env = dict(os.environ, DR_EXP_BASE_PATH=str(base), DR_EXP_EXPERIMENT="bench")
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dr_exp", "results", "--format", "csv"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        times.append((time.perf_counter() - t0) * 1000)
    rows.append({"what": f"`dr_exp results` on the same {args.jobs} jobs, whole process (median of 3)",
                 "ms": f"{statistics.median(times):.0f}", "target": "-"})
    print(table(rows, ["what", "ms", "target"]))
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
