"""Adaptive sweeps: the search grammar, studies advanced by whoever ends a trial (no controller),
repairs after a process died at every step in between, pruning, pre-emption, real workers racing
over one study, and bad input."""

import json
import math
import os
import signal
import time
from collections import Counter

import pytest

from dr_exp.api import Experiment
from dr_exp.compose import parse_sweep
from dr_exp.errors import ConfigError
from dr_exp.fileio import read_jsonl
from dr_exp.state import Ending
from dr_exp.study import StudyError, load_study, repair_studies, sweep
from dr_exp.study import driver as study_driver
from dr_exp.study.algorithms import make_pruner, parse_choice
from dr_exp.study.space import parse_search
from dr_exp.study.spec import StudyFiles
from tests.conftest import EXP_CONFIGS, run_cli, snapshot, spawn_cli, wait_for

pytestmark = pytest.mark.timeout(120)
SYN = str(EXP_CONFIGS / "synthetic.yaml")
SEARCH = "lr=tag(log,interval(1e-4,1e-1)) weight_decay=interval(0,1e-3) arch=choice(small,large)"
FAST = {"DR_EXP_LEASE_SECONDS": "2", "DR_EXP_HEARTBEAT_SECONDS": "0.5"}


def ok(proc):
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc.stdout


def study_jobs(exp, name):
    """trial number -> its job records (a list, so that duplicates show)."""
    out = {}
    for rec in exp.list():
        if rec.study and rec.study["name"] == name:
            out.setdefault(rec.study["trial"], []).append(rec)
    return out


def journal_ops(exp, name, op_code):
    lines = StudyFiles.of(exp.layout, name).journal.read_text().splitlines()
    return [op for op in map(json.loads, lines) if op["op_code"] == op_code]


def assert_one_job_per_trial(exp, name, trials):
    view = load_study(exp, name)
    jobs = study_jobs(exp, name)
    assert [t.number for t in view.trials] == list(range(trials))
    assert sorted(jobs) == list(range(trials)), sorted(set(range(trials)) ^ set(jobs))
    for t in view.trials:
        assert len(jobs[t.number]) == 1, (t.number, [r.id for r in jobs[t.number]])
        assert jobs[t.number][0].id == t.job_id, t.number
    return view, {n: recs[0] for n, recs in jobs.items()}


# -- the grammar, samplers and pruners ----------------------------------------------------------
def test_search_grammar_is_hydras_optuna_sweeper_grammar():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    params, fixed = parse_search("optimizer.lr=tag(log,interval(1e-4,1e-1)) optimizer.weight_decay=interval(0,1e-3) "
                                 "model=choice(small_cnn,resnet18_cifar) +layers=range(1,5) seed=3 +bs=16,32")
    dists = {p.name: p.distribution for p in params}
    assert dists["optimizer.lr"] == FloatDistribution(1e-4, 1e-1, log=True)
    assert dists["optimizer.weight_decay"] == FloatDistribution(0.0, 1e-3)
    assert dists["model"] == CategoricalDistribution(["small_cnn", "resnet18_cifar"])
    assert dists["layers"] == IntDistribution(1, 4)  # range() excludes its stop, as in hydra -m
    assert dists["bs"] == CategoricalDistribution([16, 32])
    assert fixed == ["seed=3"]
    by_name = {p.name: p for p in params}
    assert by_name["layers"].override(3) == "+layers=3" and by_name["optimizer.lr"].override(0.003) == "optimizer.lr=0.003"
    assert by_name["model"].grid_values() == ["small_cnn", "resnet18_cifar"] and by_name["layers"].grid_values() == [1, 2, 3, 4]
    with pytest.raises(StudyError, match="grid needs discrete values"):
        by_name["optimizer.lr"].grid_values()
    # A grid keeps refusing search expressions, pointing at --search.
    with pytest.raises(ConfigError, match="--search"):
        parse_sweep("optimizer.lr=tag(log,interval(1e-4,1e-1))")


@pytest.mark.parametrize(("text", "message"), [
    ("lr=interval(1e-4", "bad --search"), ("lr=interval(1,0)", "low <= high"),
    ("lr=tag(log,interval(0,1))", "lr=tag(log,interval(0,1))"), ("lr=tag(lgo,interval(1,2))", "unknown tag lgo"),
    ("seed=3", "nothing to search"), ("lr=range(5,1)", "empty range"), ("a=1,2 a=3,4", "twice"),
])
def test_bad_search_expressions(text, message):
    with pytest.raises(StudyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_search(text)


def test_samplers_and_pruners_by_name_with_options():
    assert parse_choice("tpe:n_startup_trials=20,multivariate=true", "sampler", ("tpe",)) == \
        ("tpe", {"n_startup_trials": 20, "multivariate": True})
    asha = make_pruner("asha:reduction_factor=3")
    assert type(asha).__name__ == "SuccessiveHalvingPruner" and asha._reduction_factor == 3 and asha._min_resource == 2
    with pytest.raises(StudyError, match="has no option nope"):
        make_pruner("median:nope=1")
    with pytest.raises(StudyError, match="unknown --pruner 'asah'"):
        make_pruner("asah")


# -- the lifecycle, driven through the API -------------------------------------------------------
def test_each_finished_trial_asks_the_next_until_the_budget(exp):
    res = sweep(exp, SYN, SEARCH, trials=7, parallel=2, metric="val/acc", mode="max", seed=3, overrides="epochs=3")
    name = res.studies[0]
    assert [r.study for r in res.submitted] == [{"name": name, "trial": 0}, {"name": name, "trial": 1}]
    assert all(r.sweep_id == res.sweep_id and set(r.sweep_params) == {"lr", "weight_decay", "arch"} for r in res.submitted)
    assert res.submitted[0].config["epochs"] == 3 and res.submitted[0].config["lr"] == float(res.submitted[0].sweep_params["lr"])
    endings = iter(["complete", "fail", "prune", "no_metric", "cancel", "complete", "complete", "complete"])
    while (attempt := exp.claim("w1")) is not None:
        assert len(exp.list(status="pending,running")) <= 2  # never more than --parallel at a time
        how = next(endings)
        if how == "cancel":  # a cancelled job is told as a failed trial by the next advance
            exp.cancel(exp.list(status="pending")[0].id)
            how = "complete"
        if how == "complete":
            exp.complete(attempt, {"metrics": {"val/acc": 0.5 + attempt.record.study["trial"] / 100}})
        elif how == "fail":
            exp.fail(attempt, {"type": "RuntimeError", "message": "boom\nsecond line"}, Ending.FATAL)
        elif how == "prune":
            exp.prune(attempt, {"metrics": {"val/acc": 0.1}, "pruned_at_epoch": 1}, "pruned at epoch 1")
        else:
            exp.complete(attempt, {"metrics": {"val/loss": 0.3}})
    view, jobs = assert_one_job_per_trial(exp, name, 7)
    assert view.finished and view.counts() == {"complete": 3, "pruned": 1, "fail": 3, "running": 0, "waiting": 0}
    states = {t.number: (t.state, jobs[t.number].status) for t in view.trials}
    assert Counter(states.values()) == Counter({("complete", "completed"): 3, ("fail", "failed"): 1,
                                                ("pruned", "pruned"): 1, ("fail", "completed"): 1,
                                                ("fail", "cancelled"): 1})
    reasons = {t.state + "/" + jobs[t.number].status: t.fail_reason for t in view.trials if t.fail_reason}
    assert reasons["fail/failed"] == "RuntimeError: boom second line"
    assert reasons["fail/completed"] == "its job completed without reporting 'val/acc' (it reported val/loss); check --metric"
    assert reasons["fail/cancelled"] == "its job was cancelled"
    assert view.best.value == max(t.value for t in view.trials if t.state == "complete")


def test_a_trial_whose_workers_are_lost_too_often_fails_and_recovery_asks_the_next(exp):
    res = sweep(exp, SYN, SEARCH, trials=2, parallel=1, metric="val/acc", mode="max", max_worker_losses=1)
    name = res.studies[0]
    attempt = exp.claim("w1", lease_seconds=0.2)
    time.sleep(0.5)
    assert exp.recover(lease_seconds=0.2) == [(attempt.job_id, "failed (too many lost workers)")]
    view = load_study(exp, name)
    assert view.trials[0].state == "fail" and view.trials[0].fail_reason.startswith("WorkerLost: ")
    assert view.trials[1].job_id and exp.get(view.trials[1].job_id).status == "pending"


class Died(BaseException):
    """Stands for the process dying at a crash point (the hook lets only Exceptions through)."""


@pytest.mark.parametrize(("point", "trial"), [("ended", 0), ("told", 0), ("asked", 1), ("submitted", 1)])
def test_recover_repairs_a_study_whose_advancer_died(base, exp, monkeypatch, point, trial):
    res = sweep(exp, SYN, SEARCH, trials=3, parallel=1, metric="val/acc", mode="max", seed=1)
    name = res.studies[0]

    def die(at, number):
        if (at, number) == (point, trial):
            raise Died(at)

    monkeypatch.setattr(study_driver, "_crash_point", die)
    attempt = exp.claim("w1")
    with pytest.raises(Died):
        exp.complete(attempt, {"metrics": {"val/acc": 0.9}})
    assert exp.get(attempt.job_id).status == "completed"  # recorded before the study was advanced
    view = load_study(exp, name)
    if point in ("ended", "told"):
        assert not exp.list(status="pending")  # nothing asked yet
    else:
        assert view.trials[1].job_id is None  # asked, but its job not recorded in the trial
        assert len(study_jobs(exp, name).get(1, [])) == (1 if point == "submitted" else 0)
    monkeypatch.undo()
    out = ok(run_cli("job", "recover", base=base))
    assert f"study {name}:" in out
    view = load_study(exp, name)
    assert view.trials[0].state == "complete" and view.trials[0].value == 0.9
    assert view.trials[1].job_id is not None and exp.get(view.trials[1].job_id).status == "pending"
    while (attempt := exp.claim("w1")) is not None:
        exp.complete(attempt, {"metrics": {"val/acc": 0.5}})
    view, _ = assert_one_job_per_trial(exp, name, 3)
    assert view.finished
    assert repair_studies(exp) == []  # nothing left to repair


# -- real workers --------------------------------------------------------------------------------
def workers_of(base, n, **env):
    return [spawn_cli("system", "worker", "--idle-timeout", "2", base=base, **FAST, **env) for _ in range(n)]


@pytest.mark.timeout(240)
def test_six_workers_over_200_trials_with_kills_nothing_lost_nothing_duplicated(base):
    exp = Experiment(base, "exp")
    out = ok(run_cli("job", "sweep", "--config", SYN, "--search", SEARCH, "--trials", "200", "--parallel", "6",
                     "--sampler", "random", "--pruner", "median:n_startup_trials=5,n_warmup_steps=1",
                     "--metric", "val/acc", "--mode", "max", "--seed", "7",
                     "--overrides", "epochs=3 epoch_seconds=0.02", base=base))
    name = out.split()[1].rstrip(":")
    # Four workers die inside the hook, one at each step between recording a trial's end and
    # recording the next trial's job; one more is killed with SIGKILL while it runs a trial.
    crash = {study_driver.CRASH_ENV: "ended:30,told:60,asked:90,submitted:120"}
    workers = workers_of(base, 6, **crash)
    exits, killed = [], None
    deadline = time.monotonic() + 200
    while any(w.poll() is None for w in workers):
        assert time.monotonic() < deadline, "the study did not finish"
        finished = len(exp.list(status="completed,pruned,failed"))
        for i, w in enumerate(workers):
            if w.poll() is not None and w not in exits and finished < 200:
                exits.append(w)
                workers[i] = workers_of(base, 1, **crash)[0]  # what the launcher would do
        if killed is None and finished >= 50:
            killed = kill_a_worker_mid_trial(exp, workers)
        time.sleep(0.5)
    codes = Counter(w.returncode for w in exits)
    assert codes[70] == 4 and codes[-signal.SIGKILL] == 1, codes
    recovered = ok(run_cli("job", "recover", base=base))
    assert "submitted" not in recovered, recovered  # every gap was repaired by a later trial's end
    view, jobs = assert_one_job_per_trial(exp, name, 200)
    assert view.finished and view.counts()["fail"] == 0 and view.counts()["pruned"] > 0, view.counts()
    for t in view.trials:
        assert {"complete": "completed", "pruned": "pruned"}[t.state] == jobs[t.number].status
        assert list(t.intermediate) == list(range(t.epochs))  # one value per epoch, no gap
    steps = Counter((op["trial_id"], op["step"]) for op in journal_ops(exp, name, 7))
    assert max(steps.values()) == 1  # no epoch reported twice, resumed trial included
    victim = exp.get(killed)
    assert victim.worker_losses == 1 and victim.attempts == 2, victim.history
    assert victim.status in ("completed", "pruned") and victim.study["trial"] in jobs


def kill_a_worker_mid_trial(exp, workers):
    """SIGKILL a worker while its lease shows it running a trial; return that job's id."""
    pids = {w.pid for w in workers}
    for _ in range(200):
        for lease in exp.store.leases():
            pid = (lease.content or {}).get("pid")
            if pid in pids and exp.get(lease.job_id).status == "running":
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.3)
                if exp.get(lease.job_id).status == "running":  # it did not finish first
                    return lease.job_id
        time.sleep(0.01)
    raise AssertionError("never caught a worker mid-trial")


def test_sigusr1_mid_trial_the_same_trial_resumes_with_continuous_values(base):
    exp = Experiment(base, "exp")
    res = sweep(exp, SYN, SEARCH, trials=1, parallel=1, metric="val/acc", mode="max", seed=2,
                overrides="epochs=8 epoch_seconds=0.25")
    name, job = res.studies[0], res.submitted[0].id
    (w,) = workers_of(base, 1)
    wait_for(lambda: len(load_study(exp, name, jobs=False).trials[0].intermediate) >= 3, 30, what="3 epochs")
    w.send_signal(signal.SIGUSR1)
    assert w.wait(20) == 0
    rec = exp.get(job)
    assert rec.status == "pending" and rec.preemptions == 1 and rec.resume_from, rec.history
    assert load_study(exp, name).trials[0].state == "running"  # a hand-back does not end the trial
    (w,) = workers_of(base, 1)
    assert w.wait(60) == 0
    view, jobs = assert_one_job_per_trial(exp, name, 1)
    trial = view.trials[0]
    assert trial.state == "complete" and jobs[0].id == job and jobs[0].attempts == 2
    assert list(trial.intermediate) == list(range(8)) and trial.value == trial.intermediate[7]
    assert max(Counter(op["step"] for op in journal_ops(exp, name, 7)).values()) == 1
    epochs = [r["epoch"] for r in read_jsonl(exp.run_dir(job).metrics)]
    assert sorted(set(epochs)) == list(range(8))
    events = [e["event"] for e in read_jsonl(exp.run_dir(job).events)]
    assert "preempted" in events and "resumed" in events


def test_pruned_trials_end_pruned_with_epoch_and_reason_and_a_metric_never_reported_fails_trials(base):
    exp = Experiment(base, "exp")
    pruning = ok(run_cli("job", "sweep", "--config", SYN, "--search", SEARCH, "--trials", "8", "--parallel", "2",
                         "--pruner", "asha", "--metric", "val/acc", "--mode", "max", "--seed", "5",
                         "--overrides", "epochs=12", base=base)).split()[1].rstrip(":")
    bad = ok(run_cli("job", "sweep", "--config", SYN, "--search", SEARCH, "--trials", "2", "--parallel", "1",
                     "--metric", "val/nope", "--mode", "max", base=base))
    assert run_cli("system", "worker", "--idle-timeout", "1", base=base).returncode == 0
    jobs = [r for r in exp.list() if r.study["name"] == pruning]
    pruned = [r for r in jobs if r.status == "pruned"]
    assert pruned, [r.status for r in jobs]
    for rec in pruned:
        epoch = rec.result["pruned_at_epoch"]
        assert 2 <= epoch < 11 and rec.history[-1]["reason"].startswith(f"pruned at epoch {epoch} by the asha pruner")
        assert "val/acc" in rec.result["metrics"]
    shown = ok(run_cli("study", "show", bad.split()[1].rstrip(":"), base=base))
    view = load_study(exp, bad.split()[1].rstrip(":"))
    assert view.finished and [t.state for t in view.trials] == ["fail", "fail"]  # the study went on
    for t in view.trials:
        assert "metric 'val/nope' is not among the reported metrics (val/acc, val/loss); check --metric" in t.fail_reason
        assert "\n" not in t.fail_reason and exp.get(t.job_id).status == "failed" and exp.get(t.job_id).attempts == 1
    assert "2/2 asked (2 fail)" in shown and "check --metric" in shown
    listed = ok(run_cli("study", "list", base=base))
    assert "max val/acc" in listed and "8/8 asked" in listed and "2/2 asked (2 fail)" in listed


def test_study_show_json_and_importances(exp):
    res = sweep(exp, SYN, SEARCH, trials=6, parallel=3, metric="val/loss", mode="min", seed=4)
    from dr_exp.trainers.synthetic import objective

    while (attempt := exp.claim("w1")) is not None:
        p = attempt.record.config
        exp.complete(attempt, {"metrics": {"val/loss": 1 - objective(p["lr"], p["weight_decay"], 0.0, p["arch"])}})
    view = load_study(exp, res.studies[0])
    assert view.best.value == min(t.value for t in view.trials)
    importances = view.importances()
    assert set(importances) == {"lr", "weight_decay", "arch"} and math.isclose(sum(importances.values()), 1.0)


# -- bad input -----------------------------------------------------------------------------------
def sweep_args(search=SEARCH, **extra):
    args = {"--config": SYN, "--search": search, "--trials": "8", "--metric": "val/acc", "--mode": "max", **extra}
    return ["job", "sweep", *[x for k, v in args.items() if v is not None for x in (k, v)]]


BAD_INPUTS = {
    "malformed search": (sweep_args("lr=tag(log,interval(1e-4,1e-1)"), "bad --search"),
    "log interval from 0": (sweep_args("lr=tag(log,interval(0,1))"), "lr=tag(log,interval(0,1))"),
    "unknown sampler": (sweep_args(**{"--sampler": "bayes"}), "unknown --sampler 'bayes'; use one of tpe, random"),
    "unknown pruner": (sweep_args(**{"--pruner": "asah"}), "unknown --pruner 'asah'"),
    "unknown pruner option": (sweep_args(**{"--pruner": "asha:rungs=3"}), "--pruner asha has no option rungs"),
    "zero trials": (sweep_args(**{"--trials": "0"}), "--trials 0 must be an integer of at least 1"),
    "mode not min or max": (sweep_args(**{"--mode": "maximize"}), "--mode 'maximize' must be min or max"),
    "no mode": (sweep_args(**{"--mode": None}), "--search needs --mode"),
    "grid over an interval": (sweep_args(**{"--sampler": "grid"}), "--sampler grid needs discrete values"),
    "grid smaller than trials": (sweep_args("arch=choice(small,large)", **{"--sampler": "grid"}),
                                 "--trials 8 is more than the 2 points of the grid"),
    "key not in the config": (sweep_args("optim.lr=interval(0,1)"), "optim.lr"),
    "searched and in the grid": (sweep_args(**{"--params": "arch=small,large"}), "arch is both in --params and in --search"),
    "search option without search": (["job", "sweep", "--config", SYN, "--params", "seed=1,2", "--trials", "4"],
                                     "--trials goes with --search"),
    "neither grid nor search": (["job", "sweep", "--config", SYN], 'give --params "key=v1,v2"'),
    "interval in a grid": (["job", "sweep", "--config", SYN, "--params", "lr=interval(0,1)"], "pass it to --search"),
    "unknown study": (["study", "show", "nope"], "no study 'nope'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(base, exp, case):
    exp.submit_configs([{"_target_": "dr_exp.trainers.noop.train"}])  # an experiment that must not change
    before = snapshot(base)
    args, needle = BAD_INPUTS[case]
    proc = run_cli(*args, base=base)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr and needle in lines[0], lines[0]
    assert snapshot(base) == before
