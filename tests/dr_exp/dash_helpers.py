"""Helpers of the dashboard and plot tests: a trainer that logs learning curves, an experiment
drained by a real worker, the dashboard run as a real process, and a browser when one exists."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, cli_env, run_cli

CURVE_TARGET = "tests.dr_exp.dash_helpers.curve_train"


def curve_train(*, job_id: str, worker_id: str, storage_path: str, lr: float = 0.1, seed: int = 0, epochs: int = 5,
                sleep: float = 0.0, fail: bool = False, **config: Any) -> dict[str, Any]:
    """A trainer whose curves are known: per epoch ``val/acc``, ``val/loss``, ``train/loss`` (and a
    per-batch ``train/loss``), a line of train.log and ``checkpoints/last.ckpt``."""
    from dr_exp.logging.structured_logger import StructuredLogger

    logger = StructuredLogger(storage_path, job_id, worker_id)
    logger.log_event("started", {"lr": lr})
    acc = loss = 0.0
    for epoch in range(epochs):
        speed = 1 - math.exp(-(epoch + 1) * float(lr) * 10)
        acc = 0.5 + 0.4 * speed + 0.01 * int(seed)
        loss = 2.0 * (1 - speed) + 0.1
        logger.log_metrics({"epoch": epoch, "step": epoch * 10 + 5, "phase": "train_batch", "train/loss": loss * 1.2})
        logger.log_metrics({"epoch": epoch, "step": epoch * 10 + 10, "phase": "epoch", "val/acc": acc, "val/loss": loss,
                            "train/loss": loss * 1.1})
        print(f"epoch {epoch}: val/acc {acc:.4f}", flush=True)
        if sleep:
            time.sleep(float(sleep))
    ckpt = Path(storage_path) / "checkpoints"
    ckpt.mkdir(exist_ok=True)
    (ckpt / "last.ckpt").write_bytes(b"x" * 2048)
    if fail:
        raise RuntimeError(f"told to fail after {epochs} epochs")
    return {"metrics": {"val/acc": acc, "val/loss": loss, "epochs": epochs}, "artifacts": {}}


def write_config(directory: Path, **values: Any) -> Path:
    path = directory / "curve.yaml"
    fields = {"_target_": CURVE_TARGET, "lr": 0.1, "seed": 0, "epochs": 5, "sleep": 0.0, "fail": False, **values}
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in fields.items()))
    return path


def drain(base: Path, experiment: str = "exp", timeout: float = 120) -> None:
    """Run one real worker until the queue is empty."""
    proc = run_cli("system", "worker", "--idle-timeout", "0.3", base=base, experiment=experiment, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def start_dashboard(base: Path, *args: str, experiment: str = "exp") -> tuple[subprocess.Popen, str, list[str]]:
    """``dr_exp dashboard --port 0 ARGS`` as a real process; its URL (up to the path) and all it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "dr_exp", "dashboard", "--port", "0", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=cli_env(base, experiment), cwd=REPO)
    lines: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("serving "):
            url = next(ln.split()[1] for ln in lines if ln.startswith("dashboard: "))
            return proc, url.split("#")[0].split("?")[0], lines
    proc.kill()
    raise AssertionError("the dashboard did not start:\n" + "\n".join(lines))


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def fetch(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    """(status, parsed JSON or text, headers) of one request; HTTP errors are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        **({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw, status, hdrs = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw, status, hdrs = exc.read(), exc.code, dict(exc.headers)
    try:
        return status, json.loads(raw), hdrs
    except ValueError:
        return status, raw.decode(errors="replace"), hdrs


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _no_browser(reason: str) -> None:
    """Skip saying why; under CI (where the test command installs chromium) that is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the browser tests: {reason}")
    pytest.skip(reason)


def browser_or_skip():  # type: ignore[no-untyped-def]
    """(playwright, browser) on the system's chromium, or skip saying what is missing."""
    path = chromium()
    if path is None:
        _no_browser("no chromium on this machine (as root, scripts/test.sh installs it: apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("playwright is not installed (pip install -e '.[test]')")
    pw = sync_playwright().start()
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    try:
        browser = pw.chromium.launch(executable_path=path, args=args)
    except Exception as exc:  # noqa: BLE001 -- any launch failure means: no usable browser here
        pw.stop()
        _no_browser(f"chromium at {path} does not start under playwright: {exc}")
    return pw, browser


def update_screenshots() -> bool:
    """Screenshots under docs/ are rewritten only when asked: DR_EXP_SCREENSHOTS=1."""
    return os.environ.get("DR_EXP_SCREENSHOTS") == "1"


DOCS = REPO / "docs"


class Site:
    """An experiment ``exp`` of finished jobs: a sweep lr x seed (6 jobs, tag ``a``) and a sweep
    of one failing job (tag ``b``), each 5 epochs, drained by a real worker."""

    def __init__(self, root: Path) -> None:
        from dr_exp.api import Experiment

        self.root = root
        self.base = root / "runs"
        self.base.mkdir()
        self.config = write_config(root)
        self.exp = Experiment(self.base, "exp")
        swept = self.exp.sweep(str(self.config), "lr=0.3,0.1,0.03 seed=0,1", tags="a")
        failing = self.exp.sweep(str(self.config), "lr=0.05", overrides="fail=true", tags="b", max_attempts=1)
        self.sweep_id = swept.sweep_id
        self.ids = [r.id for r in swept.submitted]
        self.failed_id = failing.submitted[0].id
        drain(self.base)
        records = {r.id: r for r in self.exp.list()}
        assert [records[i].status for i in self.ids] == ["completed"] * 6
        assert records[self.failed_id].status == "failed"

    @property
    def all_ids(self) -> list[str]:
        return [*self.ids, self.failed_id]


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return Site(tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    """One headless chromium per test module (skips with the reason when there is none)."""
    pw, chrome = browser_or_skip()
    try:
        yield chrome
    finally:
        chrome.close()
        pw.stop()
