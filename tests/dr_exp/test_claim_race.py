"""Real processes race to claim one queue: every job is claimed exactly once, none is lost."""

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
    go.touch()
    for p in procs:
        assert p.wait(timeout=200) == 0
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
    assert exp.store.list_markers() == [] and not any(exp.store.claimed_dir.iterdir())
