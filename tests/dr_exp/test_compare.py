"""`dr_exp compare` as a CI script runs it: seeds aggregated, groups matched by their non-seed
parameters, ok / warn / fail with exit status 0 / 0 / 1, and bad input exit 2 with one line and
nothing written. Jobs are finished through the API (claim + complete), as a worker would record
them, so these tests need no training."""

from __future__ import annotations

import json
import statistics

import pytest

from dr_exp.api import Experiment
from dr_exp.state import Ending
from tests.conftest import EXP_CONFIGS, run_cli, snapshot

pytestmark = pytest.mark.timeout(120)
NOOP = str(EXP_CONFIGS / "noop.yaml")


def acc_of(config: dict) -> float:
    """The accuracy a fake run reaches: depends on lr and seed, shifted by the change under test."""
    return 0.8 + 0.05 * float(config["lr"]) + 0.01 * int(config["seed"]) + float(config.get("shift", 0.0))


def finish(exp: Experiment, fail_seed: int | None = None, flags: list[str] | None = None) -> None:
    """Record every pending job as a worker would: completed with its metrics (or failed)."""
    while (attempt := exp.claim("test-worker", lease_seconds=60)) is not None:
        config = attempt.record.config
        if fail_seed is not None and config.get("seed") == fail_seed:
            exp.fail(attempt, {"type": "RuntimeError", "message": "diverged"}, Ending.FATAL)
            continue
        acc = acc_of(config)
        exp.complete(attempt, {"metrics": {"val/acc": acc, "val/loss": 1.0 - acc}, "artifacts": {},
                               **({"flags": flags} if flags else {})})


def sweep(exp: Experiment, tag: str, shift: float, lrs: str = "1,2") -> str:
    res = exp.sweep(NOOP, f"+lr={lrs} +seed=0,1,2", overrides=f"+shift={shift}", tags=tag)
    return res.sweep_id


@pytest.fixture
def runs(base):
    exp = Experiment(base, "exp")
    ids = {"base": sweep(exp, "base", 0.0), "ok": sweep(exp, "better", 0.002), "warn": sweep(exp, "slightly", -0.007),
           "fail": sweep(exp, "worse", -0.05)}
    finish(exp)
    return exp, ids


def compare(base, *args, experiment="exp"):
    proc = run_cli("compare", *args, base=base, experiment=experiment)
    return proc, (json.loads(proc.stdout) if "--format" in args and proc.returncode in (0, 1) else None)


def test_ok_warn_fail_with_exit_status_and_seed_aggregation(base, runs, tmp_path):
    _, ids = runs
    expected = {"ok": (0, "ok"), "warn": (0, "warn"), "fail": (1, "fail")}
    for case, (code, verdict) in expected.items():
        proc, report = compare(base, "--baseline", f"sweep:{ids['base']}", "--candidate", f"sweep:{ids[case]}",
                               "--metric", "val/acc:max", "--metric", "val/loss:min", "--format", "json")
        assert proc.returncode == code, (case, proc.stdout, proc.stderr)
        assert report["verdict"] == verdict and report["exit_status"] == code
        assert {m: r["verdict"] for m, r in report["metrics"].items()} == {"val/acc": verdict, "val/loss": verdict}
        assert report["group_by"] == ["lr"], "seeds are aggregated, the fixed shift is the change under test"
        for group in report["metrics"]["val/acc"]["groups"]:
            lr = float(group["params"]["lr"])
            values = [acc_of({"lr": lr, "seed": s}) for s in range(3)]
            b = group["baseline"]
            assert b["n"] == 3 and b["mean"] == pytest.approx(statistics.fmean(values))
            assert b["std"] == pytest.approx(statistics.stdev(values)) and b["std"] == pytest.approx(0.01)
            assert group["candidate"]["n"] == 3 and len(group["candidate"]["jobs"]) == 3
        assert report["summary"].startswith(f"compare: {verdict.upper()} ")

    # The table and the one-line summary for a CI log; the JSON verdict also to a file.
    out = tmp_path / "verdict.json"
    proc = run_cli("compare", "--baseline", "tags:base", "--candidate", "tags:worse", "--metric", "val/acc",
                   "--output", str(out), base=base, experiment="exp")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split() == ["metric", "params", "baseline", "candidate", "delta", "verdict"]
    assert any("lr=1" in line and "(n=3)" in line and line.rstrip().endswith("fail") for line in lines)
    assert lines[-1].startswith("compare: FAIL val/acc:max fail (-0.05") and "tolerance 0.01" in lines[-1]
    assert json.loads(out.read_text())["verdict"] == "fail"

    # Thresholds: absolute or relative to the baseline's mean.
    proc, report = compare(base, "--baseline", f"sweep:{ids['base']}", "--candidate", f"sweep:{ids['fail']}",
                           "--metric", "val/acc", "--tolerance", "10%", "--warn", "1%", "--format", "json")
    assert proc.returncode == 0 and report["verdict"] == "warn", report["summary"]


def test_selectors_prefixes_auto_detection_and_other_experiments(base, runs):
    exp, ids = runs
    jobs = [r.id for r in exp.list(sweep_id=ids["warn"])]
    other = Experiment(base, "nightly")
    nightly = sweep(other, "nightly", -0.1)
    finish(other)
    cases = [
        (ids["warn"][:6], "warn", f"exp/sweep:{ids['warn'][:6]}"),              # a bare sweep id prefix
        ("jobs:" + ",".join(j[:8] for j in jobs), "warn", None),                 # job id prefixes
        (",".join(jobs), "warn", "exp/jobs:"),                                   # bare job ids
        ("slightly", "warn", "exp/tags:slightly"),                               # a bare tag
        (f"nightly/sweep:{nightly}", "fail", f"nightly/sweep:{nightly}"),        # another experiment
    ]
    for selector, verdict, label in cases:
        proc, report = compare(base, "--baseline", "tags:base", "--candidate", selector, "--metric", "val/acc",
                               "--format", "json")
        assert report is not None and report["verdict"] == verdict, (selector, proc.stdout, proc.stderr)
        assert report["candidate"]["jobs"] == 6
        if label:
            assert report["candidate"]["selector"].startswith(label)


def test_partial_overlap_failed_candidate_jobs_and_flags(base, runs):
    exp, ids = runs
    # A candidate that covers only lr=1 is compared there; the baseline's lr=2 is reported unmatched.
    only = sweep(exp, "only-lr1", 0.001, lrs="1")
    finish(exp)
    proc, report = compare(base, "--baseline", "tags:base", "--candidate", f"sweep:{only}", "--metric", "val/acc",
                           "--format", "json")
    assert proc.returncode == 0 and report["verdict"] == "ok", proc.stderr
    assert report["unmatched"] == {"baseline": [{"lr": "2"}], "candidate": []}
    # A candidate whose jobs fail fails the gate even where its other metrics are fine.
    broken = sweep(exp, "broken", 0.01)
    finish(exp, fail_seed=1, flags=["loss_spike"])
    proc, report = compare(base, "--baseline", "tags:base", "--candidate", f"sweep:{broken}", "--metric", "val/acc",
                           "--format", "json")
    assert proc.returncode == 1 and report["verdict"] == "fail" and report["failed_candidate_jobs"] == 2
    assert report["metrics"]["val/acc"]["verdict"] == "ok" and report["candidate"]["flagged"] == 4
    # Sanity flags show in `job list` (a flags column only when some job has flags) and `results`.
    listed = run_cli("job", "list", "--sweep", broken, base=base, experiment="exp").stdout.splitlines()
    assert "flags" in listed[0].split() and sum("loss_spike" in line for line in listed) == 4
    clean = run_cli("job", "list", "--sweep", ids["base"], base=base, experiment="exp").stdout.splitlines()
    assert "flags" not in clean[0].split()
    rows = json.loads(run_cli("results", "--sweep", broken, "--format", "json", base=base, experiment="exp").stdout)
    assert sorted(r.get("flags", "-") for r in rows) == ["-", "-", "loss_spike", "loss_spike", "loss_spike", "loss_spike"]
    table = run_cli("results", "--sweep", broken, base=base, experiment="exp").stdout.splitlines()
    assert "flags" in table[0].split()


def test_bad_input_exits_2_with_one_line_and_writes_nothing(base, runs, tmp_path):
    exp, ids = runs
    exp.sweep(NOOP, "+lr=3 +seed=0,1", overrides="+shift=0.3", tags="lr3")          # no lr in common with base
    exp.sweep(NOOP, "+lr=1 +seed=5", overrides="+shift=0.4", tags=ids["ok"][:6])   # a tag that looks like a sweep id
    finish(exp)
    exp.sweep(NOOP, "+lr=3 +seed=0", overrides="+shift=0.5", tags="pending-one")   # never run
    out = tmp_path / "verdict.json"
    good = ["--baseline", "tags:base", "--candidate", "tags:better"]
    cases = {
        "unknown selector kind": (["--baseline", "run:1", "--candidate", "tags:better", "--metric", "val/acc"], "unknown kind"),
        "no such sweep": (["--baseline", "sweep:abcdef123456", "--candidate", "tags:better", "--metric", "val/acc"],
                          "no sweep"),
        "no such tag": (["--baseline", "tags:nope", "--candidate", "tags:better", "--metric", "val/acc"], "no job carries"),
        "no such job": (["--baseline", "jobs:0123abcd", "--candidate", "tags:better", "--metric", "val/acc"], "no job"),
        "matches nothing": (["--baseline", "zzz-nothing", "--candidate", "tags:better", "--metric", "val/acc"],
                            "matches no sweep"),
        "ambiguous": (["--baseline", "tags:base", "--candidate", ids["ok"][:6], "--metric", "val/acc"], "ambiguous"),
        "no such experiment": (["--baseline", "elsewhere/tags:base", "--candidate", "tags:better", "--metric", "val/acc"],
                               "no experiment"),
        "metric no job has": ([*good, "--metric", "val/f1"], "no completed job of the baseline"),
        "mixed directions": ([*good, "--metric", "val/acc:max", "--metric", "val/acc:min"], "both :max and :min"),
        "bad direction": ([*good, "--metric", "val/acc:up"], "NAME:max"),
        "no metric": (good, "at least one --metric"),
        "negative tolerance": ([*good, "--metric", "val/acc", "--tolerance", "-1"], "--tolerance"),
        "warn above tolerance": ([*good, "--metric", "val/acc", "--tolerance", "0.01", "--warn", "0.1"], "--warn 0.1"),
        "unfinished jobs": (["--baseline", "tags:base", "--candidate", "tags:pending-one", "--metric", "val/acc"],
                            "not finished"),
        "nothing in common": (["--baseline", "tags:base", "--candidate", "tags:lr3", "--metric", "val/acc"],
                              "no group of jobs matches"),
        "output directory missing": ([*good, "--metric", "val/acc", "--output", str(tmp_path / "no" / "v.json")],
                                     "does not exist"),
    }
    before = snapshot(base)
    for case, (args, needle) in cases.items():
        proc = run_cli("compare", *args, "--output", str(out), base=base, experiment="exp") if "--output" not in args \
            else run_cli("compare", *args, base=base, experiment="exp")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (case, proc.stdout, proc.stderr)
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr, (case, proc.stderr)
        assert not out.exists(), case
    assert snapshot(base) == before
