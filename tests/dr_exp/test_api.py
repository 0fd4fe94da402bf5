"""The Python API: submit, dedup, order, cancel, retry, and the lifecycle of an attempt (one
operation per way an attempt ends, one policy deciding what a failure becomes)."""

import json
import os
import time
from pathlib import Path

import pytest

from dr_exp.api import Experiment
from dr_exp.errors import ConfigError, DrExpError, InvalidTransition, StorageError
from dr_exp.state import Ending, Status
from tests.conftest import EXP_CONFIGS, NOOP


def test_submit_composes_and_writes_record(exp):
    res = exp.submit(str(EXP_CONFIGS), "noop", "duration=0.5 +x=3", priority=7, tags="a,b")
    (rec,) = res.submitted
    data = json.loads(Path(exp.layout.record(rec.id)).read_text())
    assert data["config"]["_target_"] == "dr_exp.trainers.noop.train"
    assert data["config"]["duration"] == 0.5 and data["config"]["x"] == 3
    assert data["status"] == "pending" and data["priority"] == 7 and data["tags"] == ["a", "b"]
    assert data["storage_path"] == f"storage/run_{rec.id}"  # relative: the experiment can move
    assert len(exp.store.list_markers()) == 1
    assert len(list(exp.layout.locks_dir.iterdir())) == 256  # lock stripes exist before any claim


def test_runtime_keys_become_record_fields_not_config(exp, tmp_path):
    cfg = tmp_path / "timed.yaml"
    cfg.write_text("_target_: dr_exp.trainers.noop.train\ntimeout: 30\nmax_attempts: 5\n")
    (rec,) = exp.submit(str(tmp_path), "timed").submitted
    assert rec.timeout == 30.0 and rec.max_attempts == 5
    assert "timeout" not in rec.config and "max_attempts" not in rec.config
    (forced,) = exp.submit(str(tmp_path), "timed", timeout=7, max_attempts=2, force=True).submitted
    assert (forced.timeout, forced.max_attempts) == (7, 2)


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
    order = [exp.claim("w").job_id for _ in range(4)]
    assert order == [high.id, a.id, b.id, low.id]
    assert exp.claim("w") is None


def test_new_high_priority_job_seen_on_refresh(exp):
    exp.submit_configs([{**NOOP, "i": i} for i in range(5)], priority=1)
    exp.claim("w", refresh_seconds=0.0)
    urgent = exp.submit_configs([{**NOOP, "i": 99}], priority=999).submitted[0]
    assert exp.claim("w", refresh_seconds=0.0).job_id == urgent.id


def test_set_priority_moves_a_pending_job(exp):
    jobs = [r.id for r in exp.submit_configs([{**NOOP, "i": i} for i in range(3)], priority=10).submitted]
    exp.set_priority(jobs[2][:8], 900)
    assert exp.get(jobs[2]).priority == 900
    assert exp.claim("w", refresh_seconds=0).job_id == jobs[2]
    with pytest.raises(DrExpError, match="out of range"):
        exp.set_priority(jobs[0], 1001)


def test_an_attempt_is_owned_by_one_worker_and_completes_once(exp):
    rec = exp.submit_configs([NOOP]).submitted[0]
    att = exp.claim("w1", lease_seconds=30)
    assert att.job_id == rec.id and att.number == 1 and exp.get(rec.id).status == Status.RUNNING
    lease = exp.store.read_lease(rec.id, 1)
    assert lease.content["worker_id"] == "w1" and lease.content["lease_seconds"] == 30
    assert lease.path == att.lease_path
    done = exp.complete(att, {"metrics": {"m": 1}})
    assert done.status == "completed" and done.result == {"metrics": {"m": 1}}
    assert not os.path.exists(att.lease_path) and not exp.owns(att)
    assert exp.complete(att, {"metrics": {"m": 2}}) is None  # a second end is dropped
    assert exp.get(rec.id).result == {"metrics": {"m": 1}}


def test_failure_policy_retry_then_fail(exp):
    rec = exp.submit_configs([NOOP], max_attempts=2).submitted[0]
    first = exp.fail(exp.claim("w"), {"type": "RuntimeError", "message": "boom"})
    assert first.status == "pending" and "retrying" in first.history[-1]["reason"]
    second = exp.fail(exp.claim("w"), {"type": "RuntimeError", "message": "boom"}, Ending.TIMEOUT)
    assert second.status == "failed" and second.failed_attempts == 2
    assert exp.get(rec.id).error["message"] == "boom"


def test_fatal_errors_fail_at_once_and_hand_backs_cost_nothing(exp):
    a = exp.submit_configs([{**NOOP, "i": 1}], max_attempts=3).submitted[0]
    assert exp.fail(exp.claim("w"), {"type": "ConfigError", "message": "x"}, Ending.FATAL).status == "failed"
    b = exp.submit_configs([{**NOOP, "i": 2}], max_attempts=1).submitted[0]
    for _ in range(3):
        back = exp.hand_back(exp.claim("w", refresh_seconds=0), "checkpoints/last.ckpt")
        assert back.status == "pending" and back.resume_from == "checkpoints/last.ckpt"
    rec = exp.get(b.id)
    assert rec.attempts == 3 and rec.preemptions == 3 and rec.failed_attempts == 0
    assert exp.get(a.id).failed_attempts == 1


def test_cancel_pending_then_retry_keeps_attempt_numbers_unique(exp):
    rec = exp.submit_configs([NOOP], max_attempts=1).submitted[0]
    att = exp.claim("w")
    exp.fail(att, {"type": "E", "message": "m"})
    assert exp.get(rec.id).status == "failed"
    exp.retry(rec.id[:8])  # a unique prefix works
    assert exp.get(rec.id).failed_attempts == 0  # a fresh budget
    again = exp.claim("w")
    # ... but a new attempt number (and lease file): a stale worker of attempt 1 can never
    # touch attempt 2's lease.
    assert again.number == 2 and again.lease_path != att.lease_path
    exp.cancel(rec.id)
    with pytest.raises(InvalidTransition):
        exp.cancel(rec.id)


def test_cancel_running_removes_the_lease_and_drops_the_outcome(exp):
    rec = exp.submit_configs([NOOP]).submitted[0]
    att = exp.claim("w")
    exp.cancel(rec.id)
    assert exp.get(rec.id).status == "cancelled" and not exp.owns(att)
    assert exp.complete(att, {"metrics": {}}) is None
    assert exp.get(rec.id).status == "cancelled"


def test_careful_refresh_refuses_a_lease_taken_over(exp):
    rec = exp.submit_configs([NOOP]).submitted[0]
    att = exp.claim("w", lease_seconds=1)
    assert exp.refresh(att) and exp.refresh(att, careful=True)
    old = time.time() - 10
    os.utime(att.lease_path, (old, old))
    assert exp.recover()[0][0] == rec.id
    assert not exp.refresh(att) and not exp.refresh(att, careful=True)
    new = exp.claim("w2")
    assert new.number == 2 and exp.refresh(new) and not exp.refresh(att)


def test_bad_priority_and_tags_write_nothing(exp):
    with pytest.raises(DrExpError, match="priority"):
        exp.submit_configs([NOOP], priority=1001)
    with pytest.raises(DrExpError, match="tag"):
        exp.submit_configs([NOOP], tags=["a b"])
    assert not exp.store.root.exists()


@pytest.mark.parametrize("bad", [{"x": {1, 2}}, {"x": b"bytes"}, {"x": object()}, {"x": {3: "int key"}}])
def test_python_api_refuses_what_json_cannot_hold(exp, bad):
    with pytest.raises(ConfigError, match="config #0"):
        exp.submit_configs([{**NOOP, **bad}])
    assert not exp.store.root.exists()


def test_experiment_name_cannot_leave_base_or_be_empty(base):
    for bad in ("../x", "/abs", "a/b", ".hidden", "", "name\n", "x" * 200):
        with pytest.raises(StorageError):
            Experiment(base, bad)
