"""A full disk (a small tmpfs): submit, sweep and worker each say so in one line, a failed sweep
queues nothing, a job interrupted by it goes back to pending without spending an attempt, and
once space is freed everything runs exactly once. Needs root to mount the tmpfs."""

import os
import subprocess
import threading
import time

import pytest

from dr_exp.api import Experiment
from dr_exp.fileio import read_jsonl
from tests.conftest import run_cli, snapshot, spawn_cli, wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt):
    """Use up every free byte of the disk."""
    path = mnt / f"filler-{time.time_ns()}"
    with open(path, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    return path


def free(mnt):
    for p in mnt.glob("filler-*"):
        p.unlink()


def one_line_exit_2(proc, needle):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert needle in lines[0], lines[0]


def test_full_disk(disk):
    base = disk / "runs"
    exp = Experiment(base, "exp")
    args = ("--config-path", "exp_configs", "--config-name", "noop")
    first = run_cli("job", "submit", *args, "--overrides", "duration=4 +n=1", base=base).stdout.strip()
    fill(disk)
    before = snapshot(base / "exp" / "jobs"), snapshot(base / "exp" / "queue")
    one_line_exit_2(run_cli("job", "submit", *args, "--overrides", "+n=2", base=base), "disk is full")
    one_line_exit_2(run_cli("job", "sweep", "--config", "exp_configs/noop.yaml", "--params", "+n=range(10,60)",
                            base=base), "nothing was queued")
    assert (snapshot(base / "exp" / "jobs"), snapshot(base / "exp" / "queue")) == before

    # A worker cannot even claim: it says so once and backs off; the job stays pending.
    worker = spawn_cli("system", "worker", "--idle-timeout", "6", "--lease-seconds", "5", "--heartbeat-seconds", "0.5",
                       base=base)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(worker.stdout), daemon=True)
    reader.start()
    wait_for(lambda: any("backing off" in line for line in output), 30, what="the worker to back off")
    assert exp.get(first).status == "pending" and exp.get(first).attempts == 0
    # Space comes back; the job starts; the disk fills up again while it runs.
    free(disk)
    wait_for(lambda: exp.get(first).status == "running", 30, what="the job to start")
    fill(disk)
    wait_for(lambda: exp.get(first).status == "pending", 30, what="the interrupted job to be handed back")
    rec = exp.get(first)
    assert rec.failed_attempts == 0 and rec.preemptions == 1 and "could not write" in rec.history[-1]["reason"]
    # Space comes back for good: everything runs exactly once.
    free(disk)
    sweep = run_cli("job", "sweep", "--config", "exp_configs/noop.yaml", "--params", "+n=range(10,14)", base=base)
    assert sweep.returncode == 0, sweep.stderr
    worker.wait(timeout=120)
    reader.join(10)
    out = "".join(output)
    assert worker.returncode == 0, out
    assert out.count("backing off") >= 1 and "Traceback" not in out, out
    records = exp.list()
    assert len(records) == 5 and {r.status for r in records} == {"completed"}, [(r.id, r.status) for r in records]
    for r in records:
        assert [e["event"] for e in read_jsonl(exp.run_dir(r).events)].count("completed") == 1


def test_read_only_storage_is_one_line_and_loses_nothing(disk):
    """The guide's troubleshooting case 4 (storage permission errors), on storage that refuses
    every write: submit and worker each say so in one line (exit 2) and the queued job waits,
    untouched, until the storage is writable again. Root ignores file modes, so a read-only
    mount stands in for a directory without write permission."""
    base = disk / "runs"
    exp = Experiment(base, "exp")
    args = ("--config-path", "exp_configs", "--config-name", "noop")
    job = run_cli("job", "submit", *args, "--overrides", "+n=1", base=base).stdout.strip()
    before = snapshot(base)
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    try:
        one_line_exit_2(run_cli("job", "submit", *args, "--overrides", "+n=2", base=base), "is not writable")
        one_line_exit_2(run_cli("system", "worker", "--idle-timeout", "0", base=base), "is not writable")
        assert snapshot(base) == before
        assert run_cli("status", base=base).returncode == 0 and exp.get(job).status == "pending"
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
    assert run_cli("system", "worker", "--idle-timeout", "0", base=base).returncode == 0
    assert [(r.id, r.status, r.attempts) for r in exp.list()] == [(job, "completed", 1)]
