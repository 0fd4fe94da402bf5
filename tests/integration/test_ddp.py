"""DDP inside a job, on the CPU (2 ranks, gloo), under a real `dr_exp system worker`: the job's
ranks are the job's children, rank 0 alone writes the run directory, pre-emption stops every rank
at the same batch and the resumed run continues the step count, a rank that dies fails the job
naming the rank and leaves no process of the job behind."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from dr_exp.api import Experiment
from dr_exp.fileio import read_jsonl
from tests.conftest import EXP_CONFIGS, run_cli, spawn_cli, wait_for

torch = pytest.importorskip("torch")
if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    pytest.skip("torch.distributed with the gloo backend is not available", allow_module_level=True)

pytestmark = pytest.mark.timeout(240)

# quickstart on 2 CPU ranks: 1024 training images, 16 batches of 32 per rank and epoch.
DDP = "trainer.devices=2 trainer.strategy=ddp data.batch_size=32"
STEPS_PER_EPOCH = 1024 // 2 // 32


def submit(exp: Experiment, overrides: str, config: str = "quickstart", **kw) -> str:
    return exp.submit(str(EXP_CONFIGS), config, overrides, **kw).submitted[0].id


def events(exp: Experiment, job: str) -> list[dict]:
    return read_jsonl(exp.run_dir(job).events)


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (zombies included), from /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            pids.append(int(stat.parent.name))
    return pids


def assert_group_gone(pgid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert group_members(pgid) == []


def test_two_rank_job_learns_writes_once_and_the_worker_claims_nothing_meanwhile(base):
    exp = Experiment(base, "exp")
    out = run_cli("job", "submit", "--config-path", "exp_configs", "--config-name", "quickstart",
                  "--overrides", f"{DDP} trainer.max_epochs=2", "--priority", "900", base=base)
    assert out.returncode == 0, out.stderr
    ddp = out.stdout.strip().splitlines()[-1]
    spawn = run_cli("job", "submit", "--config-path", "exp_configs", "--config-name", "quickstart",
                    "--overrides", "trainer.devices=2 trainer.strategy=ddp_spawn", base=base)
    assert spawn.returncode == 2 and spawn.stderr.count("\n") == 1, spawn.stderr
    assert "use trainer.strategy=ddp (dr_exp starts the ranks)" in spawn.stderr
    after = submit(exp, "duration=0", "noop")
    worker = run_cli("system", "worker", "--idle-timeout", "0", base=base, timeout=200)
    assert worker.returncode == 0, worker.stderr

    rec = exp.get(ddp)
    assert rec.status == "completed", (rec.error, exp.run_dir(ddp).tail())
    assert rec.result["metrics"]["val/acc"] >= 0.9, rec.result
    assert not any(k.startswith("gpu/") for k in rec.result["metrics"])  # CPU: no GPU keys at all
    run = exp.run_dir(ddp)
    rows = run.read_metrics()
    assert [(r["phase"], r["epoch"]) for r in rows] == [("epoch", 0), ("epoch", 1)], rows  # rank 1 wrote nothing
    assert [r["step"] for r in rows] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert all(r["images_per_s"] > 0 and not any(k.startswith("gpu/") for k in r) for r in rows)
    names = [e["event"] for e in events(exp, ddp)]
    assert names.count("train_start") == 1 and names.count("epoch_end") == 2 and names.count("started") == 1
    started = next(e for e in events(exp, ddp) if e["event"] == "ranks_started")
    assert started["world_size"] == 2 and len(started["pids"]) == 2
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert_group_gone(started["pgid"])

    # One worker did everything, one job after the other: rank 1 never became a second worker.
    later = exp.get(after)
    assert later.status == "completed" and later.started_at >= rec.finished_at
    assert later.worker_id == rec.worker_id
    assert len(list(exp.layout.worker_env(rec.worker_id).parent.glob("*.env.json"))) == 1


def test_sigusr1_checkpoints_every_rank_and_the_resumed_run_continues_the_steps(base):
    exp = Experiment(base, "exp")
    job = submit(exp, f"{DDP} trainer.max_epochs=3")
    worker = spawn_cli("system", "worker", "--idle-timeout", "0", base=base)
    run = exp.run_dir(job)
    wait_for(lambda: run.read_metrics(), 150, 0.05, "the first epoch")
    worker.send_signal(signal.SIGUSR1)
    out, _ = worker.communicate(timeout=120)
    assert worker.returncode == 0, out

    rec = exp.get(job)
    assert rec.status == "pending" and rec.resume_from and rec.preemptions == 1, (rec.history, run.tail())
    saved = torch.load(run.resolve(rec.resume_from), map_location="cpu", weights_only=False)
    assert STEPS_PER_EPOCH <= saved["global_step"] < 3 * STEPS_PER_EPOCH
    first = next(e for e in events(exp, job) if e["event"] == "ranks_started")
    assert_group_gone(first["pgid"])

    resumed = run_cli("system", "worker", "--idle-timeout", "0", base=base, timeout=200)
    assert resumed.returncode == 0, resumed.stderr
    rec = exp.get(job)
    assert rec.status == "completed", (rec.error, run.tail())
    rows = run.read_metrics()
    # Every epoch once, the step count continuing across the hand-back: as if never interrupted.
    assert [r["epoch"] for r in rows] == [0, 1, 2], rows
    assert [r["step"] for r in rows] == [STEPS_PER_EPOCH * (e + 1) for e in range(3)]
    names = [e["event"] for e in events(exp, job)]
    assert names.count("resumed") == 1 and names.count("ranks_started") == 2
    assert [e.get("reason") for e in events(exp, job) if e["event"] == "checkpoint"] == ["preempted"]  # saved once
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_kill_9_of_rank_1_fails_the_job_naming_the_rank_and_leaves_no_process(base):
    exp = Experiment(base, "exp")
    job = submit(exp, f"{DDP} trainer.max_epochs=100", max_attempts=1)
    worker = spawn_cli("system", "worker", "--idle-timeout", "0", base=base)
    wait_for(lambda: any(e["event"] == "train_start" for e in events(exp, job)), 150, 0.05, "training on 2 ranks")
    started = next(e for e in events(exp, job) if e["event"] == "ranks_started")
    rank0, rank1 = started["pids"]
    os.kill(rank1, signal.SIGKILL)
    out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, out

    rec = exp.get(job)
    assert rec.status == "failed", rec.history
    assert rec.error["message"].startswith("rank 1 of 2 killed by SIGKILL"), rec.error
    assert "rank 1 of 2 killed by SIGKILL" in exp.run_dir(job).error.read_text()
    assert started["pgid"] == rank0
    assert_group_gone(rank0)
    for pid in (rank0, rank1):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert json.loads(json.dumps(rec.error))["type"] == "RankDied"


def test_a_pruned_two_rank_trial_stops_on_both_ranks_at_the_same_epoch(base):
    # An adaptive sweep of one trial on 2 ranks whose accuracy after the first epoch is below the
    # threshold: rank 0 alone asks the study, both ranks stop there, and the job ends pruned.
    pytest.importorskip("optuna")
    out = run_cli("job", "sweep", "--config", str(EXP_CONFIGS / "quickstart.yaml"), "--search", "optimizer.lr=choice(0.05)",
                  "--sampler", "grid", "--trials", "1", "--pruner", "threshold:lower=0.999", "--metric", "val/acc",
                  "--mode", "max", "--overrides", f"{DDP} trainer.max_epochs=5", base=base)
    assert out.returncode == 0, out.stderr
    worker = run_cli("system", "worker", "--idle-timeout", "0", base=base, timeout=200)
    assert worker.returncode == 0, worker.stderr

    exp = Experiment(base, "exp")
    (rec,) = exp.list()
    assert rec.status == "pruned", (rec.status, rec.error, exp.run_dir(rec.id).tail())
    assert rec.result["pruned_at_epoch"] == 0 and 0 < rec.result["metrics"]["val/acc"] < 0.999, rec.result
    assert "pruned at epoch 0 by the threshold pruner" in rec.history[-1]["reason"]
    names = [e["event"] for e in events(exp, rec.id)]
    assert names.count("epoch_end") == 1 and names.count("pruned") == 1, names
    assert_group_gone(next(e for e in events(exp, rec.id) if e["event"] == "ranks_started")["pgid"])
