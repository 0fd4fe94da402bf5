"""Adaptive sweeps on the synthetic objective (dr_exp.trainers.synthetic), drained by real
``dr_exp system worker`` processes, every setting repeated over several seeds:

1. samplers at the same budget: the best val/acc after N trials for a grid (N points of a
   typical grid over the same ranges), random search and TPE; the objective is known, so the
   table also gives the true (noise-free) value of the configuration each one picked;
2. pruning at the same number of trials: total epochs trained, wall time and best value of TPE
   without a pruner and with ASHA.

    python -m benchmarks.bench_study [--seeds 5] [--trials 32] [--workers 4] [--epochs 20]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, table
from dr_exp.api import Experiment
from dr_exp.study import load_study, sweep
from dr_exp.trainers.synthetic import objective

REPO = Path(__file__).resolve().parent.parent
CONFIG = str(REPO / "exp_configs" / "synthetic.yaml")
SPACE = ("lr=tag(log,interval(1e-4,1e-1)) weight_decay=interval(0,1e-3) dropout=interval(0,0.5) "
         "arch=choice(small,large)")
# What a researcher would grid over the same ranges: 4 x 2 x 2 x 2 = 32 points.
GRID = "lr=choice(0.0001,0.001,0.01,0.1) weight_decay=choice(0,0.0005) dropout=choice(0,0.3) arch=choice(small,large)"
NOISE = 0.003  # the synthetic trainer's default noise (standard deviation of val/acc)


def run_study(exp: Experiment, *, search: str, sampler: str, pruner: str, seed: int, trials: int, parallel: int,
              epochs: int, epoch_seconds: float) -> dict:
    t0 = time.monotonic()
    res = sweep(exp, CONFIG, search, trials=trials, parallel=parallel, metric="val/acc", mode="max",
                sampler=sampler, pruner=pruner, seed=seed,
                overrides=f"epochs={epochs} epoch_seconds={epoch_seconds} seed={seed}")
    name = res.studies[0]
    while not (view := load_study(exp, name, jobs=False)).finished:
        time.sleep(0.1)
    wall = time.monotonic() - t0
    best = view.best
    p = {k: best.params.get(k, d) for k, d in (("lr", 1e-2), ("weight_decay", 0.0), ("dropout", 0.0), ("arch", "small"))}
    return {"best": best.value, "true": objective(float(p["lr"]), float(p["weight_decay"]), float(p["dropout"]),
                                                  str(p["arch"])),
            "epochs": sum(t.epochs for t in view.trials), "pruned": view.counts()["pruned"], "wall": wall}


def summary(label: str, runs: list[dict], keys: list[str]) -> dict:
    row: dict = {"setting": label, "seeds": len(runs)}
    for key in keys:
        values = [r[key] for r in runs]
        fmt = "{:.4f}" if key in ("best", "true") else "{:.1f}" if key == "wall" else "{:.0f}"
        row[f"{key} median"] = fmt.format(statistics.median(values))
        row[f"{key} min..max"] = f"{fmt.format(min(values))}..{fmt.format(max(values))}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--epoch-seconds", type=float, default=0.05)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"{args.workers} workers, {args.trials} trials per study ({args.workers} at a time), seeds 0..{args.seeds - 1}; "
          f"objective max 0.95, val/acc noise sd {NOISE}\n")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        exp = Experiment(tmp, "bench")
        exp.store.ensure()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        workers = [subprocess.Popen([sys.executable, "-m", "dr_exp", "--base-path", tmp, "--experiment", "bench",
                                     "system", "worker", "--idle-timeout", "3600"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(args.workers)]
        try:
            common = {"trials": args.trials, "parallel": args.workers}
            samplers = []
            for label, search, sampler in (("grid", GRID, "grid"), ("random", SPACE, "random"), ("tpe", SPACE, "tpe")):
                runs = [run_study(exp, search=search, sampler=sampler, pruner="none", seed=s, epochs=args.epochs,
                                  epoch_seconds=0, **common) for s in range(args.seeds)]
                samplers.append(summary(label, runs, ["best", "true"]))
            pruning, unpruned = [], []
            for pruner in ("none", "asha"):
                runs = [run_study(exp, search=SPACE, sampler="tpe", pruner=pruner, seed=s, epochs=args.epochs,
                                  epoch_seconds=args.epoch_seconds, **common) for s in range(args.seeds)]
                pruning.append(summary(f"tpe, pruner {pruner}", runs, ["best", "true", "epochs", "pruned", "wall"]))
                unpruned = unpruned or runs
        finally:
            for w in workers:
                w.send_signal(signal.SIGTERM)
            for w in workers:
                w.wait(60)
    print(f"best val/acc after {args.trials} trials ({args.epochs} epochs each, no pruner); true = the noise-free "
          "objective of the configuration with the best val/acc")
    print(table(samplers, list(samplers[0])))
    print(f"\nTPE with and without ASHA, {args.trials} trials of up to {args.epochs} epochs "
          f"({args.epoch_seconds:g} s each); epochs = all epochs trained, wall = submit to last trial told")
    print(table(pruning, list(pruning[0])))
    tpe, rnd = (float(r["best median"]) for r in samplers[2:0:-1])
    none, asha = pruning
    share = float(asha["epochs median"]) / float(none["epochs median"])
    gap = float(none["best median"]) - float(asha["best median"])
    spread = statistics.stdev(r["best"] for r in unpruned) if len(unpruned) > 1 else 0.0
    print(f"\nTPE median best {'beats' if tpe > rnd else 'does NOT beat'} random's ({tpe:.4f} vs {rnd:.4f}); "
          f"ASHA trains {share:.0%} of the epochs (target <= 50%); its median best is {gap:+.4f} below the "
          f"unpruned one, whose best varies by sd {spread:.4f} from seed to seed (one val/acc: sd {NOISE})")


if __name__ == "__main__":
    main()
