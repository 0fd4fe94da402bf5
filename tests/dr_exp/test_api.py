"""The job database through the Python API: submit, dedup, order, cancel, retry, quarantine, leases."""

import json
import os
import time

import pytest

from dr_exp.api import Experiment
from dr_exp.errors import DrExpError, InvalidTransition
from dr_exp.state import Status
from tests.conftest import EXP_CONFIGS, NOOP


def test_submit_composes_and_writes_record(exp):
    res = exp.submit(str(EXP_CONFIGS), "noop", "duration=0.5 +x=3", priority=7, tags="a,b")
    (rec,) = res.submitted
    data = json.loads(exp.store.record_path(rec.id).read_text())
    assert data["config"]["_target_"] == "dr_exp.trainers.noop.train"
    assert data["config"]["duration"] == 0.5 and data["config"]["x"] == 3
    assert data["status"] == "pending" and data["priority"] == 7 and data["tags"] == ["a", "b"]
    assert data["storage_path"].endswith(f"storage/run_{rec.id}")
    assert len(exp.store.list_markers()) == 1
    assert len(list(exp.store.locks_dir.iterdir())) == 256  # lock stripes exist before any claim


def test_dedup_skips_active_or_completed_unless_forced(exp):
    first = exp.submit(str(EXP_CONFIGS), "noop", "+x=1")
    again = exp.submit(str(EXP_CONFIGS), "noop", "+x=1")
    assert not again.submitted and again.skipped[0][1] == first.submitted[0].id
    forced = exp.submit(str(EXP_CONFIGS), "noop", "+x=1", force=True)
    assert len(forced.submitted) == 1
    exp.cancel(first.submitted[0].id)
    exp.cancel(forced.submitted[0].id)
    assert len(exp.submit(str(EXP_CONFIGS), "noop", "+x=1").submitted) == 1  # cancelled ones do not block


def test_sweep_uses_hydra_semantics(exp):
    res = exp.sweep(str(EXP_CONFIGS / "noop.yaml"), "+x=range(0,3) +name='a,b',c")
    assert len(res.submitted) == 6 and res.sweep_id
    names = sorted((r.config["x"], r.config["name"]) for r in res.submitted)
    assert names == [(0, "a,b"), (0, "c"), (1, "a,b"), (1, "c"), (2, "a,b"), (2, "c")]
    assert all(r.sweep_id == res.sweep_id for r in res.submitted)
    assert res.submitted[0].sweep_params == {"x": "0", "name": "'a,b'"}


def test_claim_order_priority_then_fifo(exp):
    low = exp.submit_configs([{**NOOP, "i": 1}], priority=1).submitted[0]
    a = exp.submit_configs([{**NOOP, "i": 2}], priority=500).submitted[0]
    b = exp.submit_configs([{**NOOP, "i": 3}], priority=500).submitted[0]
    high = exp.submit_configs([{**NOOP, "i": 4}], priority=1000).submitted[0]
    order = [exp.claim("w").id for _ in range(4)]
    assert order == [high.id, a.id, b.id, low.id]
    assert exp.claim("w") is None


def test_new_high_priority_job_seen_on_refresh(exp):
    exp.submit_configs([{**NOOP, "i": i} for i in range(5)], priority=1)
    exp.claim("w", refresh_seconds=0.0)
    urgent = exp.submit_configs([{**NOOP, "i": 99}], priority=999).submitted[0]
    assert exp.claim("w", refresh_seconds=0.0).id == urgent.id


def test_claim_sets_running_lease_and_attempts(exp):
    rec = exp.submit_configs([NOOP]).submitted[0]
    claimed = exp.claim("w1", lease_seconds=30)
    assert claimed.id == rec.id and claimed.status == Status.RUNNING and claimed.attempts == 1
    lease, _ = exp.store.read_lease(rec.id)
    assert lease["worker_id"] == "w1" and lease["lease_seconds"] == 30
    assert exp.finish(rec.id, "other-worker", 1, Status.COMPLETED) is None  # not the owner
    done = exp.finish(rec.id, "w1", 1, Status.COMPLETED, result={"metrics": {"m": 1}})
    assert done.status == "completed" and not exp.store.lease_path(rec.id).exists()


def test_cancel_pending_then_retry(exp):
    rec = exp.submit_configs([NOOP]).submitted[0]
    exp.cancel(rec.id)
    assert exp.claim("w") is None
    with pytest.raises(InvalidTransition):
        exp.cancel(rec.id)
    exp.retry(rec.id[:8])  # a unique prefix works
    assert exp.claim("w").id == rec.id


def test_cancel_running_removes_lease(exp):
    rec = exp.submit_configs([NOOP]).submitted[0]
    exp.claim("w")
    exp.cancel(rec.id)
    assert exp.get(rec.id).status == "cancelled" and not exp.store.lease_path(rec.id).exists()
    assert exp.finish(rec.id, "w", 1, Status.COMPLETED) is None


def test_expired_lease_is_recovered_with_checkpoint(exp):
    rec = exp.submit_configs([NOOP]).submitted[0]
    exp.claim("w", lease_seconds=1)
    ckpt = exp.store.run_dir(rec.id) / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_text("{}")
    assert exp.recover() == []  # still fresh
    old = time.time() - 10
    os.utime(exp.store.lease_path(rec.id), (old, old))
    (job_id, what), = exp.recover()
    again = exp.get(rec.id)
    assert job_id == rec.id and "re-queued" in what
    assert again.status == "pending" and again.resume_from == str(ckpt)
    assert exp.claim("w2").attempts == 2


def test_recovery_fails_job_without_attempts_left(exp):
    rec = exp.submit_configs([NOOP], max_attempts=1).submitted[0]
    exp.claim("w", lease_seconds=1)
    old = time.time() - 10
    os.utime(exp.store.lease_path(rec.id), (old, old))
    exp.recover()
    assert exp.get(rec.id).status == "failed" and exp.get(rec.id).error["type"] == "WorkerLost"


def test_corrupt_record_is_quarantined_and_others_still_work(exp):
    good = exp.submit_configs([{**NOOP, "i": 1}, {**NOOP, "i": 2}]).submitted
    path = exp.store.record_path(good[0].id)
    path.write_text(path.read_text()[:40])  # truncated
    problems = []
    listed = exp.list(problems=problems)
    assert [r.id for r in listed] == [good[1].id]
    assert "quarantined" in problems[0] and not path.exists()
    assert list(exp.store.quarantine_dir.glob(f"{good[0].id}.json.*"))
    assert exp.claim("w").id == good[1].id  # the broken job's marker is skipped
    assert exp.claim("w") is None


def test_bad_priority_and_tags(exp):
    with pytest.raises(DrExpError, match="priority"):
        exp.submit_configs([NOOP], priority=1001)
    with pytest.raises(DrExpError, match="tag"):
        exp.submit_configs([NOOP], tags=["a b"])
    assert not exp.store.root.exists()


def test_experiment_name_cannot_leave_base(base):
    for bad in ("../x", "/abs", "a/b", ".hidden", ""):
        with pytest.raises(DrExpError):
            Experiment(base, bad or "..")


def _spare_bytes(exp, job_id):
    return open(exp.store.spare_path(job_id), "rb").read()


def test_a_record_that_was_public_is_never_rewritten(exp):
    """Updates swap a private file into place; a reader holding the old record keeps reading
    exactly what it opened, through claims, re-queues and completion."""
    rec = exp.submit_configs([NOOP]).submitted[0]
    assert _spare_bytes(exp, rec.id) == b""  # the unused spare is empty
    with open(exp.store.record_path(rec.id), "rb") as reader:
        pending = exp.store.record_path(rec.id).read_bytes()
        claimed = exp.claim("w1")
        assert exp.get(rec.id).status == "running"
        kept = _spare_bytes(exp, rec.id)
        if kept:  # the filesystem swapped the names: the pending record stays at the spare
            assert kept == pending
        exp.finish(rec.id, "w1", claimed.attempts, Status.PENDING, "pre-empted", preemptions=1)
        again = exp.claim("w2")  # the spare is not empty now: a fresh file is used
        assert again.id == rec.id and again.attempts == 2 and exp.get(rec.id).worker_id == "w2"
        assert _spare_bytes(exp, rec.id) == kept
        exp.finish(rec.id, "w2", 2, Status.COMPLETED, result={"metrics": {"m": 1}})
        assert reader.read() == pending
    assert exp.get(rec.id).status == "completed"
    assert not exp.store.lease_path(rec.id).exists()
    assert [p.name for p in exp.store.jobs_dir.iterdir() if p.name.endswith(".tmp")] == []


def test_exchange_swaps_and_falls_back(exp, tmp_path, monkeypatch):
    from dr_exp import fileio as store

    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("A")
    b.write_text("B")
    if store.exchange(a, b):  # Linux on a local filesystem
        assert (a.read_text(), b.read_text()) == ("B", "A")
        with pytest.raises(FileNotFoundError):
            store.exchange(a, tmp_path / "missing")
    # Where the system cannot swap (NFS, not Linux) a claim renames and frees the old record.
    monkeypatch.setattr(store, "_renameat2", False)
    assert store.exchange(a, b) is False
    rec = exp.submit_configs([NOOP]).submitted[0]
    assert exp.claim("w").id == rec.id and exp.get(rec.id).status == "running"
    assert not os.path.exists(exp.store.spare_path(rec.id))
    assert exp.finish(rec.id, "w", 1, Status.COMPLETED).status == "completed"


def test_overwrite_keeps_exactly_the_new_content(tmp_path):
    from dr_exp.store import overwrite

    path = tmp_path / "f"
    path.write_bytes(b"a long old content")
    fd = os.open(path, os.O_WRONLY)
    try:
        assert overwrite(fd, b"short", path) and path.read_bytes() == b"short"
        assert overwrite(fd, b"longer than before", path) and path.read_bytes() == b"longer than before"
        assert overwrite(fd, b"x", path, empty_only=True) is False
        assert path.read_bytes() == b"longer than before"
    finally:
        os.close(fd)


def test_after_a_lost_race_the_pick_stays_within_the_head_priority(base):
    for k in range(10):  # the pick after a lost race is random: repeat
        exp = Experiment(base, f"prio{k}")
        high = [r.id for r in exp.submit_configs([{**NOOP, "i": i} for i in range(3)], priority=900).submitted]
        exp.submit_configs([{**NOOP, "i": i} for i in range(3, 40)], priority=10)
        a = Experiment(base, exp.name)
        assert a.claim("a").id == high[0]  # a now holds the listed batch
        assert Experiment(base, exp.name).claim("b").id == high[1]  # b wins a's next marker
        assert a.claim("a").id == high[2]  # a loses the race on it; no low-priority job jumps ahead
