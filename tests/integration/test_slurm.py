"""Against a real single-node SLURM started by scripts/slurm_local.sh (`-m slurm`).

Without a cluster these tests skip with the reason; under CI (CI=true) a missing cluster fails.
"""

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from dr_exp.api import Experiment
from dr_exp.fileio import read_jsonl
from tests.conftest import EXP_CONFIGS, REPO, run_cli, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]
CONF = os.environ.get("SLURM_CONF", "/tmp/dr_exp_slurm/slurm.conf")


def _cluster_up() -> str | None:
    if not Path(CONF).is_file():
        return f"no SLURM config at {CONF}: run `bash scripts/slurm_local.sh start`"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20,
                              env={**os.environ, "SLURM_CONF": CONF})
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed ({exc}): run `bash scripts/slurm_local.sh start`"
    if proc.returncode != 0 or not proc.stdout.strip():
        return f"SLURM is not answering ({proc.stderr.strip()}): run `bash scripts/slurm_local.sh start`"
    return None


@pytest.fixture(scope="module")
def slurm():
    problem = _cluster_up()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the SLURM tests: {problem}")
        pytest.skip(problem)
    return {**os.environ, "SLURM_CONF": CONF, "DR_EXP_PYTHON": sys.executable,
            "DR_EXP_LEASE_SECONDS": "3", "DR_EXP_HEARTBEAT_SECONDS": "0.5"}


def sh(env, *cmd, check=True, cwd=None):
    proc = subprocess.run(list(cmd), capture_output=True, text=True, env=env, timeout=60, cwd=cwd)
    if check:
        assert proc.returncode == 0, (cmd, proc.stdout, proc.stderr)
    return proc


def sbatch(env, base, *args, launcher_args=()):
    # Submitted from the base path, as a user submits from their project: SLURM's own output file
    # (one line pointing at logs/slurm-<id>.out) lands there.
    out = sh(env, "sbatch", "--parsable", "--job-name=dr_exp-test", *args, str(REPO / "scripts" / "slurm_launcher.sh"),
             "--base-path", str(base), "--experiment", "exp", *launcher_args, cwd=base)
    return out.stdout.strip().split(";")[0]


def job_state(env, job_id):
    proc = sh(env, "scontrol", "show", "job", "-o", job_id, check=False)
    fields = dict(t.partition("=")[::2] for t in proc.stdout.split())
    return fields.get("JobState", "GONE"), fields.get("ExitCode", "")


def wait_done(env, job_id, timeout=150):
    def done():
        state, _ = job_state(env, job_id)
        return state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "SUSPENDED")
    wait_for(done, timeout, interval=0.5, what=f"SLURM job {job_id} to end")
    return job_state(env, job_id)


def completed_once(exp):
    records = exp.list()
    assert records and all(r.status == "completed" for r in records), Counter(r.status for r in records)
    for r in records:
        events = read_jsonl(exp.run_dir(r.id).events)
        assert sum(e["event"] == "completed" for e in events) == 1, r.id
    return records


def test_sbatch_launcher_drains_the_queue(slurm, base):
    exp = Experiment(base, "exp")
    exp.sweep(str(EXP_CONFIGS / "noop.yaml"), "+x=range(0,12)", overrides="duration=0.3")
    job = sbatch(slurm, base, "--gres=none", "--cpus-per-task=1",
                 launcher_args=["--workers", "2", "--idle-timeout", "2"])
    state, code = wait_done(slurm, job)
    assert state == "COMPLETED" and code == "0:0"
    completed_once(exp)
    logs = exp.layout.logs_dir
    assert f"output continues in {logs}/slurm-{job}.out" in (base / f"dr_exp-{job}.out").read_text()
    assert "allocation" in (logs / f"slurm-{job}.out").read_text()
    assert len(list(logs.glob("*-w0.log"))) == 1 and len(list(logs.glob("*-w1.log"))) == 1


def test_two_allocations_share_one_queue(slurm, base):
    exp = Experiment(base, "exp")
    exp.sweep(str(EXP_CONFIGS / "noop.yaml"), "+x=range(0,30)", overrides="duration=0.3")
    job = sbatch(slurm, base, "--gres=none", "--cpus-per-task=1", "--array=0-1",
                 launcher_args=["--workers", "1", "--idle-timeout", "3"])
    for task in ("0", "1"):
        state, _ = wait_done(slurm, f"{job}_{task}")
        assert state == "COMPLETED"
    records = completed_once(exp)
    launchers = {r.worker_id.rsplit("-w", 1)[0] for r in records}
    assert len(launchers) == 2, launchers


def test_fake_gpus_give_two_workers_per_gpu(slurm, base):
    exp = Experiment(base, "exp")
    exp.sweep(str(EXP_CONFIGS / "noop.yaml"), "+x=range(0,4)")
    job = sbatch(slurm, base, "--gres=gpu:2", "--cpus-per-task=2",
                 launcher_args=["--workers-per-gpu", "2", "--idle-timeout", "1"])
    assert wait_done(slurm, job)[0] == "COMPLETED"
    envs = [json.loads(p.read_text())["env"] for p in exp.layout.logs_dir.glob("*.env.json")]
    assert sorted(e.get("CUDA_VISIBLE_DEVICES") for e in envs) == ["0", "0", "1", "1"]
    completed_once(exp)


def test_usr1_preemption_hands_job_back_and_next_allocation_resumes(slurm, base):
    exp = Experiment(base, "exp")
    job_id = exp.submit(str(EXP_CONFIGS), "noop", "duration=8 steps=80").submitted[0].id
    first = sbatch(slurm, base, "--gres=none", "--cpus-per-task=1", launcher_args=["--workers", "1", "--idle-timeout", "1"])
    wait_for(lambda: exp.get(job_id).status == "running", 60, what="job running")
    time.sleep(2)
    sh(slurm, "scancel", "-b", "-s", "USR1", first)
    state, code = wait_done(slurm, first)
    assert state == "COMPLETED" and code == "0:0", (state, code)  # the allocation ended cleanly
    rec = exp.get(job_id)
    assert rec.status == "pending" and rec.resume_from and rec.preemptions == 1, rec.history
    saved = json.loads(exp.run_dir(rec).resolve(rec.resume_from).read_text())["step"]
    assert 0 < saved < 80
    second = sbatch(slurm, base, "--gres=none", "--cpus-per-task=1", launcher_args=["--workers", "1", "--idle-timeout", "1"])
    assert wait_done(slurm, second)[0] == "COMPLETED"
    rec = exp.get(job_id)
    assert rec.status == "completed"
    assert rec.result["metrics"]["start_step"] == saved and rec.result["metrics"]["steps_done"] == 80


def test_scancel_sigterm_leaves_nothing_running_or_lost(slurm, base):
    exp = Experiment(base, "exp")
    exp.sweep(str(EXP_CONFIGS / "noop.yaml"), "+x=range(0,6)", overrides="duration=3 steps=30")
    job = sbatch(slurm, base, "--gres=none", "--cpus-per-task=1", launcher_args=["--workers", "2", "--idle-timeout", "1"])
    wait_for(lambda: len(exp.list(status="running")) == 2, 60, what="two jobs running")
    sh(slurm, "scancel", job)
    wait_done(slurm, job)
    time.sleep(4)  # any lease left behind expires (3 s)
    assert run_cli("job", "recover", base=base).returncode == 0
    assert not exp.list(status="running")
    assert Counter(r.status for r in exp.list()).keys() <= {"pending", "completed"}
    assert run_cli("system", "worker", "--idle-timeout", "0", base=base, timeout=120).returncode == 0
    completed_once(exp)


def test_slurm_submit_dry_run_is_a_valid_script_and_submit_shows_in_status(slurm, base):
    proc = run_cli("system", "slurm-submit", "--gpus-per-job", "0", "--workers", "2", "--cpus-per-task", "1",
                   "--time", "00:10:00", "--idle-timeout", "1", "--dry-run", base=base)
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    golden = (REPO / "tests" / "golden" / "slurm_submit_dry_run.sh").read_text()
    assert script.replace(str(base), "<BASE>").replace(sys.executable, "<PYTHON>") == golden
    path = base / "check.sh"
    path.write_text(script)
    (base / "exp" / "logs").mkdir(parents=True)
    assert "to start at" in sh(slurm, "sbatch", "--test-only", str(path)).stderr
    exp = Experiment(base, "exp")
    exp.sweep(str(EXP_CONFIGS / "noop.yaml"), "+x=range(0,3)")
    proc = run_cli("system", "slurm-submit", "--gpus-per-job", "0", "--workers", "1", "--cpus-per-task", "1",
                   "--time", "00:10:00", "--idle-timeout", "1", base=base, SLURM_CONF=CONF)
    assert proc.returncode == 0, proc.stderr
    slurm_id = proc.stdout.split()[3]

    def allocation_row() -> list[str]:  # the allocation's row of `status` (the id is its first column)
        rows = [line.split() for line in run_cli("status", base=base, SLURM_CONF=CONF).stdout.splitlines()]
        return next(r for r in rows if r and r[0] == slurm_id)

    assert allocation_row()
    assert wait_done(slurm, slurm_id)[0] == "COMPLETED"
    completed_once(exp)
    assert "completed" in allocation_row()


def test_requeue_allocation_restarts_the_same_slurm_job_which_resumes(slurm, base):
    exp = Experiment(base, "exp")
    job_id = exp.submit(str(EXP_CONFIGS), "noop", "duration=6 steps=60").submitted[0].id
    alloc = sbatch(slurm, base, "--gres=none", "--cpus-per-task=1",
                   launcher_args=["--workers", "1", "--idle-timeout", "1", "--requeue-allocation"])
    wait_for(lambda: exp.get(job_id).status == "running", 60, what="job running")
    time.sleep(1.5)
    sh(slurm, "scancel", "-b", "-s", "USR1", alloc)
    wait_for(lambda: exp.get(job_id).preemptions == 1, 60, what="job handed back")
    # The same SLURM job id runs again (SLURM_RESTART_COUNT=1) and finishes the job from its checkpoint.
    state, _ = wait_done(slurm, alloc, timeout=180)
    assert state == "COMPLETED"
    rec = exp.get(job_id)
    assert rec.status == "completed" and rec.result["metrics"]["start_step"] > 0, rec.history
    assert "restart 1" in (exp.layout.logs_dir / f"slurm-{alloc}.out").read_text()
