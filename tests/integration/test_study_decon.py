"""decon_cnn under an adaptive sweep: a search over the learning rate on the quick-start data,
with a pruner, through the CLI and a real worker. The trainer is the decon_cnn bridge as users run
it: it reports each epoch to the trial and stops when the pruner says so, with no code added."""

from pathlib import Path

import pytest

from dr_exp.api import Experiment
from dr_exp.study import load_study
from tests.conftest import run_cli

pytestmark = pytest.mark.timeout(180)
CONFIG = Path(__file__).parent / "study_configs" / "decon_lr.yaml"
BAD = (3e-5, 1e-4, 3e-4)


def test_learning_rate_search_prunes_bad_rates_early_and_finds_a_good_one(base):
    # Five learning rates, one trial at a time, in an order fixed by the seed: the median pruner
    # (after one complete trial) stops a trial whose accuracy after an epoch is below the median.
    out = run_cli("job", "sweep", "--config", str(CONFIG), "--sampler", "grid", "--seed", "0",
                  "--search", "optimizer.lr=choice(0.1,0.03,0.0003,0.0001,0.00003)", "--trials", "5", "--parallel", "1",
                  "--pruner", "median:n_startup_trials=1,n_warmup_steps=0", "--metric", "val/acc", "--mode", "max",
                  base=base)
    assert out.returncode == 0, out.stderr
    name = out.stdout.split()[1].rstrip(":")
    worker = run_cli("system", "worker", "--idle-timeout", "0.5", base=base, timeout=170)
    assert worker.returncode == 0, worker.stderr
    exp = Experiment(base, "exp")
    view = load_study(exp, name)
    assert view.finished and len(view.trials) == 5
    by_lr = {t.params["optimizer.lr"]: t for t in view.trials}
    max_epochs = 4
    pruned_bad = [lr for lr in BAD if by_lr[lr].state == "pruned"]
    assert len(pruned_bad) >= 2, [(t.params, t.state, t.epochs) for t in view.trials]
    for lr in pruned_bad:  # stopped early, recorded as pruned with the epoch
        trial = by_lr[lr]
        assert trial.epochs <= 2 and exp.get(trial.job_id).status == "pruned"
        assert exp.get(trial.job_id).result["pruned_at_epoch"] == trial.epochs - 1
    best = view.best
    assert best.params["optimizer.lr"] >= 0.03 and best.value >= 0.9, best
    assert sum(t.epochs for t in view.trials) < 5 * max_epochs
