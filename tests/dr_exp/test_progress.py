"""Queue progress: counts, jobs per minute and time to drain from record times; `dr_exp status
--watch` while a real worker drains the queue; the launcher's live line on a terminal (a pty)
and its absence when the output is not one."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest

from dr_exp.api import Experiment
from dr_exp.job import JobRecord
from dr_exp.progress import describe, measure
from tests.conftest import REPO, cli_env, run_cli
from tests.dr_exp.dash_helpers import CURVE_TARGET

pytestmark = pytest.mark.timeout(120)


def rec(status: str, started: float | None = None, finished: float | None = None) -> JobRecord:
    return JobRecord(id="x", experiment="e", config={}, status=status, started_at=started, finished_at=finished)


def test_rate_and_time_to_drain_come_from_record_times():
    now = 10_000.0
    records = ([rec("completed", now - 600 + 60 * i, now - 540 + 60 * i) for i in range(6)]  # 6 in the last 10 min
               + [rec("completed", 100.0, 200.0)]  # long ago: not in the rate
               + [rec("failed", now - 100, now - 50), rec("running", now - 30)] + [rec("pending")] * 9)
    state = measure(records, now=now)
    assert (state.pending, state.running, state.completed, state.failed, state.total) == (9, 1, 7, 1, 18)
    assert state.jobs_per_minute == pytest.approx(7 / 10)  # 7 ended within 600 s of now
    assert state.eta_seconds == pytest.approx(10 / 0.7 * 60)
    assert describe(state) == "pending 9 · running 1 · done 7 · failed 1 · 0.7 jobs/min · drains in ~14m17s"
    drained = measure([rec("completed", now - 120, now - 60), rec("completed", now - 60, now - 30)], now=now)
    assert drained.jobs_per_minute == pytest.approx(2 / 90 * 60)  # the clock stops at the last finish
    assert describe(drained).endswith("queue drained")
    assert measure([rec("pending")], now=now).eta_seconds is None
    assert describe(measure([], now=now)) == "pending 0 · running 0 · done 0 · failed 0 · queue drained"


def submit(base, experiment: str, n: int) -> list[str]:
    exp = Experiment(base, experiment)
    configs = [{"_target_": CURVE_TARGET, "seed": i, "epochs": 2, "sleep": 0.15} for i in range(n)]
    return [r.id for r in exp.submit_configs(configs).submitted]


def test_status_watch_follows_a_draining_queue(base):
    submit(base, "exp", 4)
    watch = subprocess.Popen([sys.executable, "-m", "dr_exp", "status", "--watch", "--until-done", "--interval", "0.2"],
                             env=cli_env(base), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    worker = run_cli("system", "worker", "--idle-timeout", "0.3", base=base)
    assert worker.returncode == 0, worker.stderr
    out, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("pending 4 · running 0 · done 0 · failed 0")
    assert lines[-1].startswith("pending 0 · running 0 · done 4 · failed 0 · ") and lines[-1].endswith("queue drained")
    assert "jobs/min" in lines[-1]
    bad = run_cli("status", "--watch", "--interval", "0", base=base)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --interval 0 must be a positive number of seconds"


def run_in_pty(argv: list[str], env: dict[str, str], timeout: float = 60) -> str:
    """Run a command with a terminal as its stdin/stdout/stderr (and as its controlling
    terminal, the command in its foreground); return what it wrote."""
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.execve(sys.executable, [sys.executable, *argv], env)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_launcher_shows_a_live_line_only_on_a_terminal(base):
    submit(base, "exp", 3)
    args = ["-m", "dr_exp", "system", "launcher", "--workers", "1", "--idle-timeout", "0.5"]
    shown = run_in_pty(args, cli_env(base, COLUMNS="140"))
    assert "pending 3 · running 0 · done 0" in shown or "pending 2 · running 1 · done 0" in shown
    assert "done 3 · failed 0" in shown and "queue drained" in shown
    assert "3/3" in shown  # the bar's count on a wide terminal
    submit(base, "exp2", 1)
    piped = run_cli(*args[2:], base=base, experiment="exp2")
    assert piped.returncode == 0 and "queue drained" not in piped.stdout + piped.stderr
