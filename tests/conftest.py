"""Shared fixtures: a base path per test, the CLI run as a real subprocess, waiting helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXP_CONFIGS = REPO / "exp_configs"


def cli_env(base: Path, experiment: str = "exp", **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DR_EXP_BASE_PATH=str(base), DR_EXP_EXPERIMENT=experiment, PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_cli(*args: str, base: Path, experiment: str = "exp", timeout: float = 120, cwd: Path | None = None,
            **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dr_exp", *args], capture_output=True, text=True,
                          env=cli_env(base, experiment, **env), timeout=timeout, cwd=cwd or REPO)


def spawn_cli(*args: str, base: Path, experiment: str = "exp", **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dr_exp", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=cli_env(base, experiment, **env), cwd=REPO)


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (for 'nothing was written' checks)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


@pytest.fixture
def exp(base: Path):
    from dr_exp.api import Experiment

    return Experiment(base, "exp")


NOOP = {"_target_": "dr_exp.trainers.noop.train"}
