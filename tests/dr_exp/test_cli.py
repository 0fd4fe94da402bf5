"""The CLI as a user types it: happy paths, and bad input that must exit 2 with one line and
write nothing."""

import json
import os
import uuid

import pytest

from tests.conftest import REPO, run_cli, snapshot


def ok(proc):
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc.stdout


def test_submit_list_show_cancel_retry_status(base):
    job_id = ok(run_cli("job", "submit", "--config-path", "exp_configs", "--config-name", "noop",
                        "--overrides", "duration=0 +x=5", "--priority", "10", "--tags", "a,b", base=base)).strip()
    assert uuid.UUID(job_id).version == 4
    listed = json.loads(ok(run_cli("job", "list", "--format", "json", base=base)))
    assert [j["id"] for j in listed] == [job_id] and listed[0]["tags"] == ["a", "b"]
    assert job_id in ok(run_cli("job", "list", "--tags", "a", base=base))
    assert "no jobs match" in ok(run_cli("job", "list", "--tags", "zzz", base=base))
    assert "pending" in ok(run_cli("job", "show", job_id[:8], base=base))
    assert "cancelled" in ok(run_cli("job", "cancel", job_id, base=base))
    assert "retrying" in ok(run_cli("job", "retry", "--status", "cancelled", base=base))
    status = ok(run_cli("status", base=base))
    assert "pending    1" in status
    dup = run_cli("job", "submit", "--config-path", "exp_configs", "--config-name", "noop",
                  "--overrides", "duration=0 +x=5", base=base)
    assert dup.returncode == 0 and "skipped" in dup.stderr


def test_sweep_then_list_json_parses(base):
    out = ok(run_cli("job", "sweep", "--config", "exp_configs/noop.yaml", "--params", "+x=range(0,4) +y=a,b", base=base))
    assert out.startswith("sweep ") and "submitted 8 jobs" in out
    jobs = json.loads(ok(run_cli("job", "list", "--format", "json", base=base)))
    assert len(jobs) == 8 and len({j["sweep_id"] for j in jobs}) == 1


def _bad_configs(tmp_path):
    d = tmp_path / "cfgs"
    d.mkdir()
    (d / "no_target.yaml").write_text("lr: 0.1\n")
    (d / "bad_target.yaml").write_text("_target_: not_a_module.train\n")
    (d / "exits.yaml").write_text("_target_: exits_on_import.train\n")
    (d / "exits_on_import.py").write_text("import sys\nsys.exit(0)\n")
    return d


BAD_INPUTS = {
    "unknown config name": (["job", "submit", "--config-path", "exp_configs", "--config-name", "nope"], "no config 'nope'"),
    "unknown group option": (["job", "submit", "--config-path", "exp_configs", "--config-name", "quickstart",
                              "--overrides", "model=resnet9000"], "resnet9000"),
    "bad override syntax": (["job", "submit", "--config-path", "exp_configs", "--config-name", "noop",
                             "--overrides", "duration=[1,"], "duration"),
    "bad sweep syntax": (["job", "sweep", "--config", "exp_configs/noop.yaml", "--params", "+x=range(0,"], "sweep params"),
    "missing _target_": (["job", "submit", "--config-path", "{cfgs}", "--config-name", "no_target"], "no _target_"),
    "_target_ does not import": (["job", "submit", "--config-path", "{cfgs}", "--config-name", "bad_target"], "does not import"),
    "priority out of range": (["job", "submit", "--config-path", "exp_configs", "--config-name", "noop",
                               "--priority", "5000"], "priority 5000 is out of range"),
    "experiment leaves base": (["--experiment", "../x", "job", "list"], "invalid experiment name"),
    "absolute experiment": (["--experiment", "/abs", "status"], "invalid experiment name"),
    "job id leaves base": (["job", "show", "../../etc/passwd"], "invalid job id"),
    "unknown job id": (["job", "cancel", str(uuid.UUID(int=7, version=4))], "no job"),
    "unwritable base path": (["--base-path", "/proc/dr_exp_cannot", "job", "submit", "--config-path", "exp_configs",
                              "--config-name", "noop"], "base path"),
    "bad SLURM time": (["system", "slurm-submit", "--time", "two days", "--dry-run"], "is not a SLURM time"),
    "bad SLURM array": (["system", "slurm-submit", "--array", "0", "--dry-run"], "--array 0"),
    "base path is a file": (["--base-path", "{file}/sub", "job", "submit", "--config-path", "exp_configs",
                             "--config-name", "noop"], "not a directory"),
    "experiment name ends in a newline": (["--experiment", "exp\n", "job", "list"], "invalid experiment name"),
    "empty experiment name": (["--experiment", "", "job", "list"], "empty experiment name"),
    "negative lease": (["system", "worker", "--lease-seconds", "-5"], "--lease-seconds -5.0 must be a positive"),
    "negative heartbeat": (["system", "worker", "--heartbeat-seconds", "-1"], "--heartbeat-seconds -1.0 must be"),
    "_target_ module exits at import": (["job", "submit", "--config-path", "{cfgs}", "--config-name", "exits"],
                                        "sys.exit(0)"),
    "search space in a grid sweep": (["job", "sweep", "--config", "exp_configs/noop.yaml",
                                      "--params", "+x=interval(0.001,0.1)"], "--search"),
    "callback that does not import": (["job", "submit", "--config-path", "exp_configs", "--config-name", "quickstart",
                                       "--overrides", "+callbacks.bad._target_=no_such.Callback"], "does not import"),
    "logger class that does not exist": (["job", "submit", "--config-path", "exp_configs", "--config-name", "quickstart",
                                          "--overrides", "+loggers.bad._target_=pytorch_lightning.loggers.NoLogger"],
                                         "is not defined"),
    "search path that does not exist": (["job", "submit", "--config-path", "exp_configs", "--config-name", "noop",
                                         "--searchpath", "/no/such/dir"], "is not a directory"),
    "unknown status filter": (["job", "list", "--status", "runing"], "unknown status runing"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(base, tmp_path, case):
    # An existing experiment must stay byte-for-byte unchanged.
    ok(run_cli("job", "submit", "--config-path", "exp_configs", "--config-name", "noop", base=base))
    before = snapshot(base)
    args, needle = BAD_INPUTS[case]
    afile = tmp_path / "afile"
    afile.write_text("x")
    cfgs = _bad_configs(tmp_path)
    args = [a.format(cfgs=cfgs, file=afile) for a in args]
    proc = run_cli(*args, base=base, PYTHONPATH=f"{cfgs}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and needle in lines[0], lines[0]
    assert snapshot(base) == before
    assert not (REPO / "outputs").exists()


def test_a_huge_override_string_splits_in_linear_time(exp):
    """A 2 MB override string: the old splitter took minutes (quadratic); the deadline is the
    test's timeout, not a timed assertion."""
    from dr_exp.compose import split_overrides

    big = " ".join(f"+k{i}='{'x' * 40}'" for i in range(40_000))
    assert len(split_overrides(big)) == 40_000 and len(big) > 2_000_000


def test_sweep_params_never_collide_with_builtin_result_columns(base):
    ok(run_cli("job", "sweep", "--config", "exp_configs/noop.yaml", "--params", "+status=a,b duration=0,0.01", base=base))
    ok(run_cli("system", "worker", "--idle-timeout", "0", base=base))
    rows = json.loads(ok(run_cli("results", "--format", "json", base=base)))
    assert sorted((r["param:status"], r["param:duration"]) for r in rows) == [("a", 0), ("a", 0.01), ("b", 0), ("b", 0.01)]
    assert {r["status"] for r in rows} == {"completed"} and all(isinstance(r["duration"], float) for r in rows)
