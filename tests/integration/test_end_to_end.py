"""The main job through the CLI: sweep quickstart, drain it with a worker, read the results."""

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.timeout(300)


def test_quickstart_sweep_through_the_queue(base):
    out = run_cli("job", "sweep", "--config", "exp_configs/quickstart.yaml",
                  "--params", "optimizer.lr=0.1,0.01 seed=0,1", base=base)
    assert out.returncode == 0 and "submitted 4 jobs" in out.stdout, out.stderr
    worker = run_cli("system", "worker", "--idle-timeout", "0", base=base, timeout=280)
    assert worker.returncode == 0, worker.stderr
    rows = json.loads(run_cli("results", "--format", "json", base=base).stdout)
    assert len(rows) == 4
    assert sorted((r["optimizer.lr"], r["seed"]) for r in rows) == [(0.01, 0), (0.01, 1), (0.1, 0), (0.1, 1)]
    assert all(r["status"] == "completed" and r["val/acc"] >= 0.9 for r in rows), rows
    for r in rows:
        run = base / "exp" / "storage" / f"run_{r['job_id']}"
        for name in ("config.json", "metrics.jsonl", "events.jsonl", "result.json", "logs/train.log",
                     "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
            assert (run / name).is_file(), name
    table = run_cli("results", "--metrics", "val/acc", "--sort", "val/acc", "--reverse", base=base).stdout
    assert table.splitlines()[0].split()[:3] == ["optimizer.lr", "seed", "val/acc"]
    csv_out = run_cli("results", "--format", "csv", base=base).stdout
    assert csv_out.splitlines()[0].startswith("optimizer.lr,seed,")

    curves = json.loads(run_cli("curves", "val/acc", "--format", "json", base=base).stdout)
    assert len(curves) == 4
    for c in curves:
        assert [e for e, _ in c["points"]] == [0, 1, 2] and all(0 <= v <= 1.0001 for _, v in c["points"])
    table = run_cli("curves", "train/loss", base=base).stdout.splitlines()
    assert table[0].startswith("epoch") and "optimizer.lr=0.1 seed=0" in table[0] and len(table) == 2 + 3
