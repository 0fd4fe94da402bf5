"""Provenance: a job submitted from a git repository with an uncommitted change records the commit
and the diff; from a directory that is no repository it says so; git is asked once per submit
call, not per job; no secret from the environment (or an untracked file) reaches any file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dr_exp import provenance
from dr_exp.api import Experiment
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.timeout(180)
SECRETS = {"AWS_SECRET_ACCESS_KEY": "s3cr3t-aws-7f1e2d", "WANDB_API_KEY": "s3cr3t-wandb-99ab01",
           "MY_SERVICE_TOKEN": "s3cr3t-token-4c5d6e", "DB_PASSWORD": "s3cr3t-pw-0a0b0c"}
TRAINER = '''
def train(*, job_id, worker_id, storage_path, lr=0.1, seed=0, **config):
    return {"metrics": {"acc": 0.5 + lr}, "artifacts": {}, "flags": ["loss_spike"]}
'''


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A researcher's repository: a job config and its trainer, committed, then changed."""
    repo = tmp_path / "project"
    (repo / "job_configs").mkdir(parents=True)
    (repo / "job_configs" / "job.yaml").write_text("_target_: proj_trainer.train\nlr: 0.1\nseed: 0\n")
    (repo / "proj_trainer.py").write_text(TRAINER)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    (repo / "proj_trainer.py").write_text(TRAINER.replace("0.5 + lr", "0.25 + lr"))
    (repo / "helper.py").write_text("UNTRACKED_HELPER = 1\n")
    (repo / ".env").write_text(f"WANDB_API_KEY={SECRETS['WANDB_API_KEY']}\n")  # untracked, not source
    (repo / "scratch").mkdir()
    (repo / "scratch" / "notes.py").write_text("SCRATCH = 1\n")  # an untracked directory is listed, not walked
    return repo


def test_git_commit_and_diff_recorded_and_no_secret_anywhere(base, project, tmp_path):
    env = {**SECRETS, "PYTHONPATH": f"{REPO}:{project}"}
    job = run_cli("job", "submit", "--config-path", str(project / "job_configs"), "--config-name", "job",
                  "--overrides", "lr=0.2 seed=7", base=base, **env)
    assert job.returncode == 0, job.stderr
    job_id = job.stdout.strip()
    worker = run_cli("system", "worker", "--idle-timeout", "0", base=base, **env)
    assert worker.returncode == 0, worker.stderr
    exp = Experiment(base, "exp")
    rec = exp.get(job_id)
    assert rec.status == "completed", rec.error

    # The record: a small summary pointing at the content-addressed capture and diff.
    [entry] = rec.provenance["git"]
    assert entry["repo"] == str(project) and entry["holds"] == ["config", "code"]
    assert entry["commit"] == git(project, "rev-parse", "HEAD") and entry["branch"] == "main" and entry["dirty"]
    assert "lr=0.2 seed=7" in rec.provenance["command"] and rec.provenance["command"].startswith("dr_exp job submit")
    assert len(json.dumps(rec.provenance)) < 1000
    diff = exp.layout.provenance_file(entry["diff"], "diff").read_text()
    assert "+    return {\"metrics\": {\"acc\": 0.25 + lr}" in diff and "UNTRACKED_HELPER" in diff
    assert ".env" not in diff and "SCRATCH" not in diff
    # The diff applies to the commit: the changed code can be got back exactly.
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    subprocess.run(["git", "apply"], input=diff.encode(), cwd=clone, check=True)
    assert (clone / "proj_trainer.py").read_text() == (project / "proj_trainer.py").read_text()

    # The run directory: submit side (with the full capture), seeds, and the node.
    ran = json.loads(exp.run_dir(rec).provenance.read_text())
    assert ran["seeds"] == {"seed": 7} and ran["config_hash"] == rec.config_hash
    assert ran["submit"]["git"] == rec.provenance["git"]
    details = ran["submit"]["details"]
    assert details["git"][0]["untracked_included"] == ["helper.py"]
    assert details["git"][0]["untracked_skipped"] == [{"path": ".env", "why": "not a source file"},
                                                      {"path": "scratch/", "why": "untracked directory"}]
    assert details["packages"]["hydra_core"] and details["python"]["version"]
    [attempt] = ran["attempts"]
    assert attempt["attempt"] == 1 and attempt["host"] and "gpus" in attempt and "driver" in attempt
    assert attempt["packages"]["omegaconf"] and attempt["torch"] is None  # this trainer never imports torch

    shown = run_cli("job", "show", job_id, base=base).stdout
    assert f"{entry['commit'][:12]} on main + uncommitted changes" in shown
    assert "seeds      seed=7" in shown and "ran on" in shown

    # No secret in any file under the base path, nor inside a bundle of the job.
    bundle = base / "job.zip"
    assert run_cli("job", "bundle", job_id, "--out", str(bundle), base=base, **env).returncode == 0
    with zipfile.ZipFile(bundle) as zf:
        contents = {name: zf.read(name) for name in zf.namelist()}
    files = [p for p in base.rglob("*") if p.is_file()]
    assert len(files) > 10
    for secret in SECRETS.values():
        for path in files:
            assert secret.encode() not in path.read_bytes(), (secret, path)
        for name, data in contents.items():
            assert secret.encode() not in data, (secret, name)


def test_not_a_repository_says_so(base, tmp_path):
    configs = tmp_path / "loose_configs"
    configs.mkdir()
    (configs / "job.yaml").write_text("_target_: dr_exp.trainers.noop.train\nseed: 3\n")
    job = run_cli("job", "submit", "--config-path", str(configs), "--config-name", "job", base=base)
    assert job.returncode == 0, job.stderr
    rec = Experiment(base, "exp").get(job.stdout.strip())
    config_entry = next(g for g in rec.provenance["git"] if "config" in g["holds"])
    assert config_entry["repo"] is None and config_entry["note"] == "not a git repository"
    assert config_entry["path"] == str(configs)
    shown = run_cli("job", "show", rec.id, base=base).stdout
    assert f"{configs}: not a git repository" in shown


def test_git_is_asked_once_per_submit_call_and_diffs_are_stored_once(base, project, monkeypatch):
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.delitem(sys.modules, "proj_trainer", raising=False)
    calls = []
    real = provenance._git
    monkeypatch.setattr(provenance, "_git", lambda cwd, *args, **kw: calls.append(args[0]) or real(cwd, *args, **kw))
    exp = Experiment(base, "exp")
    first = exp.sweep(str(project / "job_configs" / "job.yaml"), "lr=range(0,200)")
    assert len(first.submitted) == 200
    # One repository holds config and code: rev-parse for each of the two directories, one status, one diff.
    assert sorted(calls) == ["diff", "rev-parse", "rev-parse", "status"]
    second = exp.sweep(str(project / "job_configs" / "job.yaml"), "seed=range(0,3)")
    summaries = {json.dumps(r.provenance, sort_keys=True) for r in first.submitted}
    assert len(summaries) == 1, "one capture per call, shared by its jobs"
    assert first.submitted[0].provenance["capture"] != second.submitted[0].provenance["capture"]
    blobs = sorted(p.suffix for p in exp.layout.provenance_dir.iterdir())
    sys.modules.pop("proj_trainer", None)
    assert blobs == [".diff", ".json", ".json"], "the same diff is stored once per experiment"


def test_diff_size_is_capped_and_marked(project, monkeypatch):
    (project / "proj_trainer.py").write_text(TRAINER + "".join(f"# line {i}\n" for i in range(5000)))
    monkeypatch.setenv("DR_EXP_PROVENANCE_MAX_DIFF", "4096")
    state, diff = provenance.git_state(str(project))
    assert state["truncated"] and 0 < len(diff) <= 4096 and diff.endswith(b"\n")
    assert state["diff_bytes"] == len(diff) and state["diff"] == provenance.digest(diff)
    assert {"path": "helper.py", "why": "over the diff size cap"} in state["untracked_skipped"]
    assert "truncated" in provenance.describe_git({**state, "holds": ["code"]})


def test_seeds_found_at_any_depth():
    config = {"seed": 1, "data": {"seed": 2, "split_seed": 3, "size": 4}, "model": {"init_seed": 5}, "lr": 0.1}
    assert provenance.seeds(config) == {"seed": 1, "data.seed": 2, "data.split_seed": 3, "model.init_seed": 5}
    assert all(provenance.is_seed_key(k) for k in ("seed", "+seed", "data.seed", "init_seed"))
    assert not any(provenance.is_seed_key(k) for k in ("seeds_dir", "lr", "seeding.mode"))


def test_gpus_and_driver_from_nvidia_smi(tmp_path, monkeypatch):
    assert provenance.gpus()["gpus"] == [] or provenance.gpus()["driver"]  # none here, or a real one
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho '0, NVIDIA H200, 565.57.01, 143771, GPU-aaaa'\n"
                    "echo '1, NVIDIA H200, 565.57.01, 143771, GPU-bbbb'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    node = provenance.node_info()
    assert node["driver"] == "565.57.01" and [g["name"] for g in node["gpus"]] == ["NVIDIA H200", "NVIDIA H200"]
    assert node["env"]["CUDA_VISIBLE_DEVICES"] == "1"
