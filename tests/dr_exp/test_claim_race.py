"""Real processes race to claim one queue: every job is claimed exactly once, none is lost, and
a process listing the records meanwhile never finds one unreadable or going back in time."""

import json
import subprocess
import sys
from collections import Counter

import pytest

from dr_exp.api import Experiment
from tests.conftest import NOOP, REPO

N_JOBS = 3000
N_PROCS = 6


@pytest.mark.timeout(240)
@pytest.mark.parametrize("round_", [1, 2])
def test_six_processes_claim_each_job_exactly_once(base, round_):
    exp = Experiment(base, f"race{round_}")
    ids = {r.id for r in exp.submit_configs([{**NOOP, "i": i} for i in range(N_JOBS)]).submitted}
    assert len(ids) == N_JOBS
    go = base / "go"
    procs = [subprocess.Popen([sys.executable, "-m", "tests.dr_exp.claimer", str(base), exp.name, f"w{i}",
                               str(go), str(base / f"won{i}.txt")], cwd=REPO) for i in range(N_PROCS)]
    lister = subprocess.Popen([sys.executable, "-m", "tests.dr_exp.lister", str(base), exp.name, str(N_JOBS),
                               str(go), str(base / "listed.json")], cwd=REPO)
    go.touch()
    for p in [*procs, lister]:
        assert p.wait(timeout=200) == 0
    listed = json.loads((base / "listed.json").read_text())
    assert listed["problems"] == [] and listed["backwards"] == [], listed
    assert listed["passes"] >= 2, listed
    assert not any(exp.layout.quarantine_dir.iterdir())
    won = Counter()
    per_proc = []
    for i in range(N_PROCS):
        lines = [line for line in (base / f"won{i}.txt").read_text().splitlines() if line]
        per_proc.append(len(lines))
        won.update(lines)
    assert set(won) == ids, "a job was lost"
    assert max(won.values()) == 1, "a job was claimed twice"
    assert sum(1 for n in per_proc if n > 0) >= 2, f"no real race happened: {per_proc}"
    statuses = Counter(r.status for r in exp.list())
    assert statuses == {"completed": N_JOBS}
    assert exp.store.list_markers() == [] and not any(exp.layout.claimed_dir.iterdir())
