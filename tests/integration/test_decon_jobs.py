"""decon_cnn's run-time features as a researcher meets them through dr_exp: a run stopped by
EarlyStopping completes with the reason in its record, a run whose loss turns NaN fails at once
(not retried) with the reason, and `job show` says both."""

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.timeout(300)
SMALL = "data.synthetic.num_train=512 data.synthetic.num_val=256"


def submit(base, overrides):
    proc = run_cli("job", "submit", "--config-path", "exp_configs", "--config-name", "quickstart",
                   "--overrides", overrides, base=base)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_early_stopping_and_nan_loss_through_the_queue(base, exp):
    stopped = submit(base, f"{SMALL} trainer.max_epochs=8 callbacks=early_stopping "
                           "callbacks.early_stopping.monitor=train/loss callbacks.early_stopping.mode=max "
                           "callbacks.early_stopping.patience=0")
    diverged = submit(base, f"{SMALL} trainer.max_epochs=2 optimizer.lr=1e12")
    worker = run_cli("system", "worker", "--idle-timeout", "0", base=base, timeout=280)
    assert worker.returncode == 0, worker.stderr
    rec = exp.get(stopped)
    assert rec.status == "completed" and rec.result["metrics"]["epochs"] < 8
    assert "early stopping" in rec.result["stop_reason"] and "train/loss" in rec.result["stop_reason"]
    assert "stop reason" in run_cli("job", "show", stopped, base=base).stdout
    bad = exp.get(diverged)
    assert bad.status == "failed" and bad.attempts == 1  # a diverged run fails the same way every time
    assert bad.error["type"] == "TrainingDiverged" and "loss became nan" in bad.error["message"]
    shown = run_cli("job", "show", diverged, base=base).stdout
    assert "TrainingDiverged: loss became nan" in shown
