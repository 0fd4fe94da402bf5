"""scripts/ci_gate.sh as the README shows it: the quick start trained with main's code (in a
temporary git worktree) and with this checkout's, compared, a JSON verdict and the exit status;
then the stored baseline reused, and a baseline that does not exist (exit 2)."""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.timeout(300)


def gate(tmp_path, **env):
    return subprocess.run(["bash", "scripts/ci_gate.sh"], cwd=REPO, capture_output=True, text=True, timeout=280,
                          env={**os.environ, "CI_RUNS": str(tmp_path / "ci"), "SEEDS": "0", "EPOCHS": "1",
                               "PYTHON": sys.executable, "TMPDIR": str(tmp_path), **env})


def test_the_gate_passes_a_checkout_against_itself_and_refuses_a_missing_baseline(tmp_path):
    main = subprocess.run(["git", "rev-parse", "--verify", "-q", "main^{commit}"], cwd=REPO, capture_output=True)
    if main.returncode != 0:
        pytest.skip("not a git checkout with a main branch: the gate takes its baseline from main")
    proc = gate(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [verdict_file] = (tmp_path / "ci").glob("verdict-*.json")
    verdict = json.loads(verdict_file.read_text())
    assert verdict["verdict"] == "ok" and verdict["exit_status"] == 0, verdict["summary"]
    assert set(verdict["metrics"]) == {"val/acc", "val/loss"}
    assert not list(tmp_path.glob("ci_gate_baseline.*"))  # main's worktree is removed again
    stored = re.search(r"reuse them with BASELINE=(\S+)\)", proc.stderr).group(1)

    again = gate(tmp_path, BASELINE=stored)  # no baseline training this time
    assert again.returncode == 0 and "baseline from" not in again.stderr, again.stderr[-3000:]

    missing = gate(tmp_path, BASELINE="ci-baseline/sweep:0000dead")
    assert missing.returncode == 2, missing.stderr[-3000:]
    assert "0000dead" in missing.stderr and "Traceback" not in missing.stderr
