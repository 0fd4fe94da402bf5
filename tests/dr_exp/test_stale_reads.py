"""Quarantine only what is really broken: records that read back cut short for a moment (as on
shared filesystems with attribute caching) are read again, never quarantined, and never make a
job vanish from a listing; a genuinely corrupt record is still quarantined."""

import json
import os
import subprocess
import sys
import time
from collections import Counter

import pytest

from dr_exp.fileio import read_jsonl
from tests.conftest import NOOP, REPO, cli_env, run_cli

pytestmark = pytest.mark.timeout(180)
SHIM = str(REPO / "tests" / "dr_exp" / "flaky_reads")
N_JOBS = 100


def test_stale_short_reads_while_workers_claim_and_a_reader_lists(base, exp):
    exp.submit_configs([{**NOOP, "i": i} for i in range(N_JOBS)])
    env = cli_env(base, "exp", PYTHONPATH=os.pathsep.join([SHIM, str(REPO), os.environ.get("PYTHONPATH", "")]),
                  DR_EXP_LEASE_SECONDS="20", DR_EXP_HEARTBEAT_SECONDS="2")
    probe = subprocess.run([sys.executable, "-c", "import dr_exp.store as s; print(s.read_bytes.__name__)"],
                           env=env, capture_output=True, text=True, cwd=REPO)
    assert probe.stdout.strip() == "first_read_cut_short", probe.stderr  # the shim is active
    workers = [subprocess.Popen([sys.executable, "-m", "dr_exp", "system", "worker", "--idle-timeout", "2"],
                                env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    counter = subprocess.Popen([sys.executable, "-m", "tests.dr_exp.counter", str(base), "exp", str(N_JOBS),
                                str(base / "counted.json")], env=env, cwd=REPO)
    for w in workers:
        out, _ = w.communicate(timeout=150)
        assert w.returncode == 0, out
    assert counter.wait(timeout=150) == 0
    seen = json.loads((base / "counted.json").read_text())
    assert seen["short"] == [] and seen["problems"] == [] and seen["recovered"] == [] and seen["passes"] >= 2, seen
    assert not os.listdir(exp.layout.quarantine_dir)
    records = exp.list()
    assert len(records) == N_JOBS and Counter(r.status for r in records) == {"completed": N_JOBS}
    for r in records:
        assert [e["event"] for e in read_jsonl(exp.run_dir(r).events)].count("completed") == 1
    status = subprocess.run([sys.executable, "-m", "dr_exp", "validate"], env=env, cwd=REPO, capture_output=True, text=True)
    assert status.returncode == 0 and "no problems found" in status.stdout, status.stdout


def test_a_really_corrupt_record_is_quarantined_by_a_claiming_worker(base, exp):
    bad, good = exp.submit_configs([{**NOOP, "i": 1}, {**NOOP, "i": 2}], priority=500).submitted
    path = exp.layout.record(bad.id)
    with open(path, "w") as fh:
        fh.write('{"id": "truncat')
    old = time.time() - 60
    os.utime(path, (old, old))
    proc = run_cli("system", "worker", "--idle-timeout", "1", base=base)
    assert proc.returncode == 0, proc.stderr
    assert exp.get(good.id).status == "completed"
    assert not os.path.exists(path)
    moved = sorted(p for p in os.listdir(exp.layout.quarantine_dir) if p.startswith(f"jobs-{bad.id}.json."))
    assert len(moved) == 2 and moved[1].endswith(".reason")  # the record and why it was moved
    report = run_cli("validate", base=base)
    assert report.returncode == 0, report.stdout
