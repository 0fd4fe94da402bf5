"""The launcher's own policy: giving up on slots that keep dying, and restart back-off."""

import pytest

from dr_exp.launcher import MAX_BACKOFF, restart_delay
from tests.conftest import run_cli

pytestmark = pytest.mark.timeout(120)


def test_restart_back_off_grows_and_is_capped():
    delays = [restart_delay(n) for n in range(1, 10)]
    assert delays[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert max(delays) == MAX_BACKOFF and delays == sorted(delays)


def test_launcher_exits_non_zero_with_one_line_when_every_slot_gave_up(base, exp):
    # Workers that cannot start (a bad option) die at once, again and again.
    proc = run_cli("system", "launcher", "--workers", "2", "--max-restarts", "1", "--idle-timeout", "1",
                   "--", "--lease-seconds", "-5", base=base, timeout=60)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.strip().splitlines()[-1].startswith("error: every worker died 2 times in a row")
    log = next(exp.layout.logs_dir.glob("launcher-*.log")).read_text()
    assert log.count("giving up on it") == 2 and "restarting in 1s" in log
