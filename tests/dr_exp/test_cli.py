"""The CLI as a user types it: happy paths, and bad input that must exit 2 with one line and
write nothing."""

import json
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
    proc = run_cli(*args, base=base)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and needle in lines[0], lines[0]
    assert snapshot(base) == before
    assert not (REPO / "outputs").exists()
