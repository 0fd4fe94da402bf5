"""What an experiment costs in files (`dr_exp du`), and `dr_exp pack`: finished runs' small files
go into one archive per run that every reader reads inside, and a retried job gets them back."""

import json
import re

from dr_exp.job import JobRecord
from tests.conftest import EXP_CONFIGS, run_cli

SYN = str(EXP_CONFIGS / "synthetic.yaml")
NOOP_CFG = str(EXP_CONFIGS / "noop.yaml")


def run_files(exp, rec: JobRecord) -> set[str]:
    root = exp.run_dir(rec).root
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def per_job_inodes(base) -> float:
    out = run_cli("du", base=base).stdout
    return float(re.search(r"([0-9.]+) inodes in all", out).group(1))


def test_pack_cuts_a_runs_files_and_every_reader_reads_inside(base, exp):
    res = exp.sweep(SYN, "lr=0.001,0.003", overrides=["epochs=3"])
    failing = exp.sweep(NOOP_CFG, "+x=1", overrides=["fail_on_attempt=1"], max_attempts=1).submitted[0]
    assert run_cli("system", "worker", "--idle-timeout", "0", base=base).returncode == 0
    assert exp.get(failing.id).status == "failed"
    job = res.submitted[0]
    run = exp.run_dir(job)
    before_files = run_files(exp, exp.get(job.id))
    assert {"metrics.jsonl", "events.jsonl", "logs/train.log"} <= before_files, before_files

    def views() -> dict:
        return {"logs": run_cli("job", "logs", job.id, base=base).stdout,
                "results": json.loads(run_cli("results", "--format", "json", base=base).stdout),
                "curves": json.loads(run_cli("curves", "val/acc", "--format", "json", base=base).stdout),
                "show": run_cli("job", "show", job.id, base=base).stdout}

    before = views()
    assert len(before["curves"]) == 2 and before["logs"].strip()
    inodes_before = per_job_inodes(base)

    proc = run_cli("pack", base=base)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"packed 3 of 3 runs; \d+ files fewer", proc.stdout), proc.stdout
    after_files = run_files(exp, exp.get(job.id))
    assert "packed.zip" in after_files and not after_files & {"metrics.jsonl", "events.jsonl", "logs/train.log"}
    assert len(after_files) < len(before_files) / 2, (before_files, after_files)
    assert all(not name.startswith("logs/") for name in after_files)  # emptied directories go too
    after = views()  # job logs, results, curves and job show read inside the archive
    assert after.pop("show").replace(f"{run.packed} (provenance.json inside)", str(run.provenance)) == before.pop("show")
    assert after == before
    assert per_job_inodes(base) < inodes_before

    # Packing twice changes nothing; a retried job unpacks, runs again and keeps its history.
    assert run_cli("pack", base=base).returncode == 0
    packed_failing = run_files(exp, exp.get(failing.id))
    assert "packed.zip" in packed_failing
    exp.retry(failing.id)
    assert "packed.zip" not in run_files(exp, exp.get(failing.id))
    assert run_cli("system", "worker", "--idle-timeout", "0", base=base).returncode == 0
    rec = exp.get(failing.id)
    assert rec.status == "completed" and rec.attempts == 2
    attempts = {e.get("attempt") for e in exp.run_dir(rec).read_events() if e.get("event") == "started"}
    assert attempts == {1, 2}, attempts


def test_pack_refuses_what_it_must_not_touch(base, exp):
    assert run_cli("pack", base=base).returncode == 2  # no experiment yet
    exp.sweep(NOOP_CFG, "+x=1,2")
    proc = run_cli("pack", base=base)  # nothing finished yet
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no finished job" in proc.stderr, proc.stderr
    proc = run_cli("pack", "--status", "running", base=base)
    assert proc.returncode == 2 and "only finished jobs can be packed" in proc.stderr, proc.stderr
    assert not any(exp.run_dir(r).packed.exists() for r in exp.list())
