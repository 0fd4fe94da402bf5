"""The bad-file catalogue: records of the wrong shape, malformed leases, strays in queue/. Every
command keeps working, a worker keeps claiming the good jobs, ``validate`` names each bad file
and ``validate --fix`` repairs or quarantines it."""

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from dr_exp.job import FIELD_NAMES
from dr_exp.layout import marker_name
from tests.conftest import NOOP, run_cli

pytestmark = pytest.mark.timeout(240)
FAST_SETTLE = {"DR_EXP_SETTLE_SECONDS": "0.05"}  # many corrupt records: keep the re-reads short

NULLABLE = {"started_at", "finished_at", "config_path", "config_name", "sweep_id", "timeout", "worker_id", "host",
            "resume_from", "result", "error", "sync", "provenance", "study"}
REQUIRED = {"id", "experiment", "config", "status", "seq"}
DICT_FIELDS = {"config", "result", "error", "sync", "sweep_params", "resources", "provenance", "study"}


def _backdate(path, seconds=120):
    old = time.time() - seconds
    os.utime(path, (old, old), follow_symlinks=False)


def _write(exp, job_id, data):
    path = exp.layout.record(job_id)
    with open(path, "w") as fh:
        json.dump(data, fh)
    _backdate(path)
    return path


def test_bad_files_never_stop_commands_or_workers_and_validate_fixes_them(base, exp):
    good = [r.id for r in exp.submit_configs([{**NOOP, "i": i} for i in range(3)]).submitted]
    template = json.loads(Path(exp.layout.record(good[0])).read_text())
    unreadable, defaults = {}, {}
    # Records: every field with a wrong type, null, and missing.
    victims = exp.submit_configs([{**NOOP, "v": i} for i in range(3 * len(FIELD_NAMES))]).submitted
    cases = [(f, kind) for f in FIELD_NAMES for kind in ("wrong", "null", "missing")]
    for (field, kind), rec in zip(cases, victims, strict=True):
        data = json.loads(Path(exp.layout.record(rec.id)).read_text())
        if kind == "wrong":
            data[field] = "oops" if field in DICT_FIELDS else {"bad": 1}
        elif kind == "null":
            data[field] = None
        else:
            del data[field]
        path = _write(exp, rec.id, data)
        broken = kind == "wrong" or (kind == "null" and field not in NULLABLE) or (kind == "missing" and field in REQUIRED)
        (unreadable if broken else defaults if kind == "missing" else {})[path] = f"{field}/{kind}"
    # Leases of running jobs: a wrong type, null content, a directory; plus names that are no lease.
    running = [r.id for r in exp.submit_configs([{**NOOP, "r": i} for i in range(3)], priority=1000).submitted]
    attempts = [exp.claim("dead-worker", lease_seconds=5, refresh_seconds=0) for _ in running]
    assert sorted(a.job_id for a in attempts) == sorted(running)
    Path(attempts[0].lease_path).write_text(json.dumps({"lease_seconds": "abc", "worker_id": None}))
    Path(attempts[1].lease_path).write_text("null")
    os.unlink(attempts[2].lease_path)
    os.mkdir(attempts[2].lease_path)
    for a in attempts:
        _backdate(a.lease_path)
    bad_lease_name = exp.layout.leases_dir / "garbage.json"
    bad_lease_name.write_text("{}")
    # Strays in queue/: a bad name, a directory and a symlink with marker names.
    (exp.layout.queue_dir / "not-a-marker").write_text("")
    stray_dir = exp.layout.queue_dir / "g0" / marker_name(500, 1, str(uuid.uuid4()))
    stray_dir.mkdir()
    stray_link = exp.layout.queue_dir / "g0" / marker_name(500, 2, str(uuid.uuid4()))
    stray_link.symlink_to("/etc/hostname")

    # Every command works.
    for args in (["job", "list"], ["status"], ["results"], ["job", "show", good[0]]):
        proc = run_cli(*args, base=base, **FAST_SETTLE)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (args, proc.stderr)
    listed = json.loads(run_cli("job", "list", "--format", "json", base=base, **FAST_SETTLE).stdout)
    assert set(good) <= {j["id"] for j in listed}
    report = run_cli("validate", base=base, **FAST_SETTLE)
    assert report.returncode == 1 and "Traceback" not in report.stderr
    for path, case in unreadable.items():
        assert f"unreadable record {path}" in report.stdout, case
    for path, case in defaults.items():
        assert f"record {path} lacks" in report.stdout, case
    assert "garbage.json: not a lease file name" in report.stdout
    assert "not-a-marker: not a queue marker name" in report.stdout
    assert f"{stray_dir.name}: not a plain file" in report.stdout and f"{stray_link.name}: not a plain file" in report.stdout
    assert f"{attempts[0].lease_path}: unreadable or malformed lease" in report.stdout  # lease_seconds of the wrong type
    assert f"{attempts[1].lease_path}: unreadable or malformed lease" in report.stdout
    assert f"{attempts[2].lease_path}: unreadable or malformed lease" in report.stdout  # a directory
    recovered = run_cli("job", "recover", base=base, **FAST_SETTLE)
    assert recovered.returncode == 0 and "recovered 3 jobs" in recovered.stdout, recovered.stdout + recovered.stderr

    # A worker claims every good job (and the ones whose missing fields have defaults), and
    # re-runs the jobs whose leases were malformed; the broken ones are quarantined on the way.
    worker = run_cli("system", "worker", "--idle-timeout", "1", "--lease-seconds", "5", "--heartbeat-seconds", "1",
                     base=base, timeout=180, **FAST_SETTLE)
    assert worker.returncode == 0, worker.stderr
    for job_id in good + running:
        assert exp.get(job_id).status == "completed", exp.get(job_id).history
    for p, case in defaults.items():
        rec = exp.get(os.path.basename(p)[:-5])
        assert rec.status == "completed", (case, rec.status, rec.history)

    fixed = run_cli("validate", "--fix", base=base, **FAST_SETTLE)
    assert fixed.returncode == 0 and "fixed:" in fixed.stdout, fixed.stdout + fixed.stderr
    clean = run_cli("validate", base=base, **FAST_SETTLE)
    assert clean.returncode == 0 and "no problems found" in clean.stdout, clean.stdout
    quarantined = {p.name for p in exp.layout.quarantine_dir.iterdir()}
    for path in unreadable:
        assert any(name.startswith(f"jobs-{os.path.basename(path)}.") for name in quarantined), path
    assert not os.path.exists(stray_dir) and not os.path.lexists(stray_link)
    assert template["id"] == good[0]


def test_a_young_corrupt_record_is_left_for_a_second_look(base, exp):
    rec = exp.submit_configs([NOOP]).submitted[0]
    path = exp.layout.record(rec.id)
    Path(path).write_text("{half a rec")
    proc = run_cli("validate", "--fix", base=base, **FAST_SETTLE)
    assert "written moments ago" in proc.stdout and os.path.exists(path)
    _backdate(path)
    proc = run_cli("validate", "--fix", base=base, **FAST_SETTLE)
    assert f"quarantined {path}" in proc.stdout and not os.path.exists(path)
    reason = next(p for p in exp.layout.quarantine_dir.iterdir() if p.name.endswith(".reason"))
    assert "Expecting" in reason.read_text() or "JSON" in reason.read_text() or reason.read_text().strip()


def test_validate_reports_and_fixes_queue_and_lease_drift(base, exp):
    jobs = [r.id for r in exp.submit_configs([{**NOOP, "i": i} for i in range(3)]).submitted]
    exp.hand_back(exp.claim_job(jobs[1], "w"), None)  # it now has a spare
    os.unlink(exp.layout.queued(exp.get(jobs[0]).marker, 0))
    orphan = exp.layout.lease(str(uuid.uuid4()), 1)
    Path(orphan).write_text("{}")
    os.unlink(exp.layout.record(jobs[1]))
    # What a submit killed mid-batch leaves: a staged record and a staged marker (hidden names).
    staged = [f"{exp.layout.jobs}/.{uuid.uuid4()}.json.tmp", f"{exp.layout.queue_class(0)}/.{uuid.uuid4()}.tmp"]
    for path in staged:
        Path(path).write_text("")
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    proc = run_cli("validate", base=base, **FAST_SETTLE)
    assert proc.returncode == 1
    assert all(f"leftover temp file {path}" in proc.stdout for path in staged)
    assert f"pending job {jobs[0]} has no queue marker" in proc.stdout
    assert f"orphan lease {orphan}" in proc.stdout
    assert "has no pending job" in proc.stdout and f"spare file .{jobs[1]}.spare" in proc.stdout
    assert run_cli("validate", "--fix", base=base, **FAST_SETTLE).returncode == 0
    assert "no problems found" in run_cli("validate", base=base, **FAST_SETTLE).stdout
    assert exp.claim("w").job_id in (jobs[0], jobs[2])
    assert not any(os.path.exists(path) for path in staged)
