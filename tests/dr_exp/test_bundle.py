"""Repro bundles and reruns through the CLI: a bundle of a real quick start run, queued again on a
fresh base path with `job submit --from-bundle`, reproduces the config hash and the metrics;
`job rerun` by id and by sweep; damaged bundles and bad input exit 2 with one line."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from dr_exp.api import Experiment
from tests.conftest import EXP_CONFIGS, run_cli, snapshot

pytestmark = pytest.mark.timeout(300)


def ok(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def entries(bundle: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(bundle) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def test_bundle_rerun_on_a_fresh_base_path_reproduces_the_quickstart_metrics(base, tmp_path):
    job_id = ok(run_cli("job", "submit", "--config-path", "exp_configs", "--config-name", "quickstart",
                        "--overrides", "trainer.max_epochs=1 seed=5", "--tags", "quick", base=base)).strip()
    ok(run_cli("system", "worker", "--idle-timeout", "0", base=base, timeout=240))
    original = Experiment(base, "exp").get(job_id)
    assert original.status == "completed", original.error

    bundle = tmp_path / "run.zip"
    assert "wrote" in ok(run_cli("job", "bundle", job_id[:8], "--out", str(bundle), base=base))
    files = entries(bundle)
    manifest = json.loads(files["manifest.json"])
    assert manifest["format"] == "dr_exp-bundle" and manifest["job_id"] == job_id
    for name in ("record.json", "run/config.json", "run/provenance.json", "run/metrics.jsonl", "run/events.jsonl",
                 "run/result.json", "run/logs/train.log", f"provenance/{original.provenance['capture']}.json"):
        assert name in files, (name, sorted(files))
    assert not any(n.startswith("run/checkpoints/") for n in files), "checkpoints only when asked for"
    assert set(manifest["files"]) == set(files) - {"manifest.json"}
    ran = json.loads(files["run/provenance.json"])
    assert ran["seeds"] == {"seed": 5} and ran["attempts"][0]["torch"]["version"]  # the trainer's torch, as loaded
    with_ckpt = tmp_path / "with.zip"
    ok(run_cli("job", "bundle", job_id, "--out", str(with_ckpt), "--with-checkpoints", base=base))
    assert {"run/checkpoints/best.ckpt", "run/checkpoints/last.ckpt"} <= set(entries(with_ckpt))

    fresh = tmp_path / "elsewhere"
    rerun_id = ok(run_cli("job", "submit", "--from-bundle", str(bundle), base=fresh)).strip()
    ok(run_cli("system", "worker", "--idle-timeout", "0", base=fresh, timeout=240))
    rerun = Experiment(fresh, "exp").get(rerun_id)
    assert rerun.status == "completed", rerun.error
    assert rerun.config_hash == original.config_hash and rerun.config == original.config
    assert rerun.overrides == original.overrides and rerun.tags == [f"rerun-of:{job_id}"]
    assert rerun.provenance["rerun_of"]["job"] == job_id and rerun.provenance["rerun_of"]["bundle"] == "run.zip"
    assert rerun.result["metrics"] == original.result["metrics"], "a deterministic CPU run reproduces exactly"
    assert "rerun of   job " + job_id in ok(run_cli("job", "show", rerun_id, base=fresh))


def test_rerun_by_id_and_by_sweep_into_another_experiment(base):
    exp = Experiment(base, "exp")
    res = exp.sweep(str(EXP_CONFIGS / "noop.yaml"), "+x=1,2 +seed=0,1")
    ok(run_cli("system", "worker", "--idle-timeout", "0", base=base))
    first = res.submitted[0]
    out = run_cli("job", "rerun", first.id[:8], base=base)
    again = exp.get(ok(out).strip())
    assert again.config_hash == first.config_hash and again.sweep_params == first.sweep_params
    assert again.tags == [f"rerun-of:{first.id}"] and again.status == "pending" and again.sweep_id is None
    assert "note:" not in out.stderr, "same code as the original: nothing to point out"

    out = ok(run_cli("job", "rerun", "--sweep", res.sweep_id[:6], "--experiment", "again", "--tags", "ci", base=base))
    assert "submitted 4 jobs" in out
    moved = Experiment(base, "again").list()
    assert sorted(r.config_hash for r in moved) == sorted(r.config_hash for r in res.submitted)
    assert len({r.sweep_id for r in moved}) == 1 and moved[0].sweep_id != res.sweep_id
    assert all(r.tags == [f"rerun-of-sweep:{res.sweep_id}", "ci"] for r in moved)
    assert {r.provenance["rerun_of"]["job"] for r in moved} == {r.id for r in res.submitted}


def test_code_differences_are_pointed_out():
    from dr_exp.bundle import code_notes

    before = [{"repo": "/p", "commit": "a" * 40, "dirty": True, "diff": "d" * 64, "holds": ["config", "code"]}]
    assert code_notes(before, before) == []
    [note] = code_notes(before, [{**before[0], "commit": "b" * 40, "diff": None, "dirty": False}])
    assert "aaaaaaaaaaaa + diff provenance/dddddddddddd" in note and "bbbbbbbbbbbb" in note and "git checkout" in note


def test_bad_bundles_and_bad_input_exit_2_with_one_line(base, tmp_path):
    job_id = ok(run_cli("job", "submit", "--config-path", "exp_configs", "--config-name", "noop", base=base)).strip()
    good = tmp_path / "good.zip"
    ok(run_cli("job", "bundle", job_id, "--out", str(good), base=base))  # pending: the submit side only
    assert json.loads(entries(good)["run/provenance.json"])["attempts"] == []
    not_zip = tmp_path / "not.zip"
    not_zip.write_text("hello")
    no_manifest = tmp_path / "plain.zip"
    with zipfile.ZipFile(no_manifest, "w") as zf:
        zf.writestr("a.txt", "x")
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tampered, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data.replace(b"noop", b"nope") if name == "record.json" else data)
    cases = {
        "missing bundle": (["job", "submit", "--from-bundle", str(tmp_path / "none.zip")], "does not exist"),
        "not a zip": (["job", "submit", "--from-bundle", str(not_zip)], "not a readable dr_exp bundle"),
        "no manifest": (["job", "submit", "--from-bundle", str(no_manifest)], "not a dr_exp bundle"),
        "tampered": (["job", "submit", "--from-bundle", str(tampered)], "does not match its checksum"),
        "bundle and config": (["job", "submit", "--from-bundle", str(good), "--config-name", "noop"], "--from-bundle"),
        "neither": (["job", "submit"], "--config-path"),
        "bundle into missing dir": (["job", "bundle", job_id, "--out", str(tmp_path / "no" / "x.zip")], "does not exist"),
        "bundle unknown job": (["job", "bundle", "0123abcd"], "no job"),
        "rerun nothing": (["job", "rerun"], "give job ids"),
        "rerun unknown sweep": (["job", "rerun", "--sweep", "abcdef"], "no jobs of sweep"),
    }
    before = snapshot(base)
    for case, (args, needle) in cases.items():
        proc = run_cli(*args, base=base)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (case, proc.stdout, proc.stderr)
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr, (case, proc.stderr)
    assert snapshot(base) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".zip") == ["good.zip", "not.zip", "plain.zip",
                                                                              "tampered.zip"]
