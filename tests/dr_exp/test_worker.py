"""Workers with real processes and real signals: crashes, kill -9, pre-emption, cancel, timeout,
retry, the launcher. Every wait has a deadline so a hang fails instead of stalling CI."""

import json
import os
import signal
import time

import pytest

from dr_exp.api import Experiment
from dr_exp.fileio import read_jsonl
from tests.conftest import EXP_CONFIGS, run_cli, spawn_cli, wait_for

pytestmark = pytest.mark.timeout(120)
FAST_LEASE = ("--lease-seconds", "2", "--heartbeat-seconds", "0.5")


def submit(exp, overrides, **kw):
    return exp.submit(str(EXP_CONFIGS), "noop", overrides, **kw).submitted[0].id


def worker(base, *args):
    return spawn_cli("system", "worker", *FAST_LEASE, *args, base=base)


def finish(proc, timeout=60):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def test_kill_9_worker_job_goes_back_and_completes_with_attempt_2(base, exp):
    job = submit(exp, "duration=3 steps=30")
    a = worker(base, "--idle-timeout", "0.5")
    wait_for(lambda: exp.get(job).status == "running", 30, what="job running")
    time.sleep(0.5)
    a.send_signal(signal.SIGKILL)
    a.wait(10)
    b = worker(base, "--idle-timeout", "8")
    code, out = finish(b)
    rec = exp.get(job)
    assert code == 0, out
    assert rec.status == "completed" and rec.attempts == 2, rec.history
    assert any("lease expired" in h.get("reason", "") for h in rec.history)
    assert [e["event"] for e in read_jsonl(exp.run_dir(job).events)].count("completed") == 1


def test_sigusr1_preempts_and_next_worker_resumes(base, exp):
    job = submit(exp, "duration=4 steps=40")
    a = worker(base, "--idle-timeout", "0.5")
    wait_for(lambda: exp.get(job).status == "running", 30, what="job running")
    time.sleep(1.5)
    a.send_signal(signal.SIGUSR1)
    code, out = finish(a, 20)
    assert code == 0, out
    rec = exp.get(job)
    assert rec.status == "pending" and rec.resume_from and rec.preemptions == 1, rec.history
    saved = json.loads(exp.run_dir(job).resolve(rec.resume_from).read_text())["step"]
    assert 0 < saved < 40
    code, out = finish(worker(base, "--idle-timeout", "0.5"))
    rec = exp.get(job)
    assert rec.status == "completed", out
    assert rec.result["metrics"]["start_step"] == saved and rec.result["metrics"]["steps_done"] == 40
    events = [e["event"] for e in read_jsonl(exp.run_dir(job).events)]
    assert "preempted" in events and "resumed" in events


def test_child_crashes_fail_the_job_and_worker_goes_on(base, exp):
    seg = submit(exp, "fail_on_attempt=1 fail_mode=segfault", max_attempts=1)
    exc = submit(exp, "fail_on_attempt=1 fail_mode=raise", max_attempts=1)
    ex3 = submit(exp, "fail_on_attempt=1 fail_mode=exit", max_attempts=1)
    fine = submit(exp, "+ok=1")
    code, out = finish(worker(base, "--idle-timeout", "0.5"))
    assert code == 0, out
    assert "SIGSEGV" in exp.get(seg).error["message"]
    assert exp.get(exc).error["type"] == "RuntimeError" and "attempt 1" in exp.get(exc).error["message"]
    assert "sys.exit(3)" in exp.get(ex3).error["message"]
    for j in (seg, exc, ex3):
        rec = exp.get(j)
        assert rec.status == "failed"
        assert (exp.store.root / rec.error["traceback_path"]).is_file()
    assert exp.get(fine).status == "completed"
    shown = run_cli("job", "show", exc, base=base).stdout
    assert "RuntimeError: noop trainer told to fail on attempt 1" in shown


def test_failed_attempt_is_retried(base, exp):
    job = submit(exp, "fail_on_attempt=1")
    code, out = finish(worker(base, "--idle-timeout", "0.5"))
    rec = exp.get(job)
    assert code == 0, out
    assert rec.status == "completed" and rec.attempts == 2, out


def test_cancel_running_job_stops_it_within_seconds(base, exp):
    job = submit(exp, "duration=60")
    w = worker(base, "--idle-timeout", "0.2")
    wait_for(lambda: exp.get(job).status == "running", 30, what="job running")
    t0 = time.monotonic()
    assert run_cli("job", "cancel", job, base=base).returncode == 0
    code, out = finish(w, 30)
    assert code == 0, out
    assert time.monotonic() - t0 < 10, "cancel took too long"
    assert exp.get(job).status == "cancelled"


def test_timeout_is_a_failed_attempt_retried_while_attempts_last(base, exp):
    job = submit(exp, "duration=60", timeout=1.0, max_attempts=2)
    t0 = time.monotonic()
    code, out = finish(worker(base, "--idle-timeout", "0.2"))
    rec = exp.get(job)
    assert code == 0, out
    assert rec.status == "failed" and rec.error["reason"] == "timeout", rec.error
    assert rec.attempts == 2 and [h["to"] for h in rec.history] == ["running", "pending", "running", "failed"]
    assert time.monotonic() - t0 < 20


def test_worker_options_validated(base):
    proc = run_cli("system", "worker", "--lease-seconds", "1", "--heartbeat-seconds", "5", base=base)
    assert proc.returncode == 2 and "heartbeat" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.timeout(180)
def test_launcher_drains_sweep_and_restarts_killed_worker(base):
    exp = Experiment(base, "exp")
    res = exp.sweep(str(EXP_CONFIGS / "noop.yaml"), "+x=range(0,20)", overrides="duration=0.4")
    assert len(res.submitted) == 20
    launcher = spawn_cli("system", "launcher", "--workers", "2", "--idle-timeout", "3", base=base,
                         DR_EXP_LEASE_SECONDS="2", DR_EXP_HEARTBEAT_SECONDS="0.5")
    env_files = wait_for(lambda: sorted(exp.layout.logs_dir.glob("*-w0.env.json")), 30, what="worker 0 started")
    wait_for(lambda: len(exp.list(status="completed")) >= 2, 60, what="progress")
    victim = json.loads(env_files[0].read_text())["pid"]
    os.kill(victim, signal.SIGKILL)
    code, out = finish(launcher, 120)
    assert code == 0, out
    launcher_log = next(exp.layout.logs_dir.glob("launcher-*.log")).read_text()
    assert "restarting" in launcher_log
    assert list(exp.layout.logs_dir.glob("*-w0r1.env.json")), "killed worker was not restarted"
    records = exp.list()
    assert len(records) == 20 and all(r.status == "completed" for r in records)
    for r in records:
        done = [e for e in read_jsonl(exp.run_dir(r.id).events) if e["event"] == "completed"]
        assert len(done) == 1
    rows = json.loads(run_cli("results", "--format", "json", "--sweep", res.sweep_id, base=base).stdout)
    assert len(rows) == 20
    assert sorted(r["x"] for r in rows) == list(range(20)) and all(0 <= r["score"] < 1 for r in rows)


def test_run_one_in_the_foreground_and_logs(base, exp):
    job = submit(exp, "+x=7")
    proc = run_cli("job", "run-one", job[:8], base=base)
    assert proc.returncode == 0 and "completed" in proc.stdout, proc.stderr
    assert exp.get(job).status == "completed" and exp.get(job).attempts == 1
    logs = run_cli("job", "logs", job, base=base)
    assert logs.returncode == 0 and f"[dr_exp] job {job} attempt 1" in logs.stdout
    again = run_cli("job", "run-one", job, base=base)
    assert again.returncode == 2 and "only a pending job" in again.stderr and "Traceback" not in again.stderr
    failing = submit(exp, "fail_on_attempt=1", max_attempts=1)
    proc = run_cli("job", "run-one", failing, base=base)
    assert proc.returncode == 1 and exp.get(failing).status == "failed"


def test_launcher_forwards_a_signal_once_and_job_is_handed_back(base, exp):
    job = submit(exp, "duration=20 steps=200")
    launcher = spawn_cli("system", "launcher", "--workers", "1", "--idle-timeout", "1", base=base)
    wait_for(lambda: exp.get(job).status == "running", 30, what="job running")
    time.sleep(1.0)
    launcher.send_signal(signal.SIGINT)
    code, out = finish(launcher, 30)
    assert code == 0, out
    rec = exp.get(job)
    assert rec.status == "pending" and rec.preemptions == 1 and rec.resume_from, rec.history
    assert json.loads(exp.run_dir(job).resolve(rec.resume_from).read_text())["step"] > 0  # checkpointed, not killed


def test_worker_max_jobs_gpu_pinning_and_preload(base, exp):
    first = submit(exp, "+i=1")
    second = submit(exp, "+i=2")
    code, out = finish(worker(base, "--idle-timeout", "5", "--max-jobs", "1", "--gpu", "3", "--preload", "json",
                              "--worker-id", "w-pinned"))
    assert code == 0, out
    assert [exp.get(first).status, exp.get(second).status] == ["completed", "pending"]  # stopped after one job
    env = json.loads((exp.layout.logs_dir / "w-pinned.env.json").read_text())["env"]
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    events = read_jsonl(exp.run_dir(first).events)
    assert next(e for e in events if e["event"] == "started")["cuda_visible_devices"] == "3"
    log = (exp.layout.logs_dir / "w-pinned.log").read_text()
    assert "fork server preloads" in log and "'json'" in log


def test_launcher_hands_jobs_back_when_its_hours_are_up(base, exp):
    job = submit(exp, "duration=60 steps=600")
    t0 = time.monotonic()
    launcher = spawn_cli("system", "launcher", "--workers", "1", "--max-hours", "0.001", "--idle-timeout", "30",
                         base=base)
    code, out = finish(launcher, 60)
    assert code == 0, out
    assert time.monotonic() - t0 < 30
    rec = exp.get(job)
    assert rec.status == "pending" and rec.preemptions == 1 and rec.resume_from, rec.history


def test_a_second_signal_stops_the_job_at_once(base, exp):
    """A job whose checkpoint takes long: the first signal asks for it, the second stops the job
    without waiting, and the job goes back to the queue (not failed)."""
    job = submit(exp, "duration=60 steps=600 +checkpoint_seconds=60")
    w = worker(base, "--idle-timeout", "0.5")
    wait_for(lambda: exp.get(job).status == "running", 30, what="job running")
    time.sleep(0.5)
    w.send_signal(signal.SIGUSR1)
    time.sleep(1.0)
    assert w.poll() is None  # still waiting for the checkpoint
    t0 = time.monotonic()
    w.send_signal(signal.SIGTERM)
    code, out = finish(w, 30)
    assert code == 0, out
    assert time.monotonic() - t0 < 10, "the second signal did not stop the job at once"
    rec = exp.get(job)
    assert rec.status == "pending" and rec.preemptions == 1 and rec.failed_attempts == 0, rec.history
