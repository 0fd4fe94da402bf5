"""Never twice at once: a worker paused (SIGSTOP) for longer than its lease loses its job to
another worker, and at no moment do two trainers of that job run."""

import json
import os
import signal
import time
from pathlib import Path

import pytest

from dr_exp.fileio import read_jsonl
from tests.conftest import spawn_cli, wait_for

pytestmark = pytest.mark.timeout(120)
LEASE = ("--lease-seconds", "2", "--heartbeat-seconds", "0.3")


def test_a_paused_worker_loses_its_job_and_its_trainer_stops_first(base, exp, tmp_path):
    lock = str(tmp_path / "trainer.lock")
    job = exp.submit_configs([{"_target_": "tests.dr_exp.lock_trainer.train", "lock_path": lock, "seconds": 6.0}]
                             ).submitted[0].id
    a = spawn_cli("system", "worker", "--worker-id", "worker-a", "--idle-timeout", "1", *LEASE, base=base)
    wait_for(lambda: Path(lock + ".log").exists(), 60, what="the first trainer to start")
    first_lease = exp.layout.lease(job, 1)
    os.kill(a.pid, signal.SIGSTOP)  # the worker only: its job keeps training, unheartbeated
    try:
        b = spawn_cli("system", "worker", "--worker-id", "worker-b", "--idle-timeout", "3", *LEASE, base=base)
        wait_for(lambda: exp.get(job).attempts == 2, 30, what="worker b to take the job over")
        time.sleep(1.0)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    out_a, _ = a.communicate(timeout=60)
    out_b, _ = b.communicate(timeout=60)
    assert a.returncode == 0 and b.returncode == 0, (out_a, out_b)

    assert not Path(lock + ".overlap").exists(), Path(lock + ".overlap").read_text()
    starts = [json.loads(line) for line in Path(lock + ".log").read_text().splitlines()]
    assert [s["attempt"] for s in starts] == [1, 2]
    rec = exp.get(job)
    assert rec.status == "completed" and rec.worker_id == "worker-b" and rec.worker_losses == 1
    assert [(h["from"], h["to"]) for h in rec.history] == [("pending", "running"), ("running", "pending"),
                                                          ("pending", "running"), ("running", "completed")]
    assert "worker-a lost" in rec.history[1]["reason"]
    events = read_jsonl(exp.run_dir(job).events)
    assert [e["event"] for e in events].count("completed") == 1
    second = next(i for i, e in enumerate(events) if e.get("attempt") == 2)
    assert not [e for e in events[second:] if e.get("attempt") == 1], events
    # The first trainer stopped itself when its lease went stale, before the lease expired.
    log = exp.run_dir(job).train_log.read_text()
    assert "stopping: its worker stopped heartbeating its lease" in log
    # Worker a found its attempt gone when it woke, and never refreshed anybody's lease.
    worker_a = exp.layout.worker_log("worker-a").read_text()
    assert "attempt 1: stopped: the job was cancelled or taken over" in worker_a
    assert not os.path.exists(first_lease)
