"""The job database's files: what a claim and a completion do on disk, batches that are queued
whole or not at all, and reads that tell a passing stale view from a corrupt record."""

import json
import os
import threading
from pathlib import Path

import pytest

from dr_exp import fileio
from dr_exp import store as store_module
from dr_exp.errors import CorruptRecord
from dr_exp.job import JobRecord
from dr_exp.state import Status
from tests.conftest import NOOP


def _spare_bytes(exp, job_id):
    path = Path(exp.layout.spare(job_id))
    return path.read_bytes() if path.exists() else None


def test_a_record_that_was_public_is_never_rewritten(exp):
    """Claims write the new record into the taken (empty) queue marker and swap it in; the old
    version is kept as the job's spare, never written again: a reader holding it keeps reading
    exactly what it opened, through claims, re-queues and completion."""
    rec = exp.submit_configs([NOOP]).submitted[0]
    assert _spare_bytes(exp, rec.id) is None  # submitting writes one record file and one marker
    path = exp.layout.record(rec.id)
    with open(path, "rb") as reader:
        pending = Path(path).read_bytes()
        first = exp.claim("w1")
        assert exp.get(rec.id).status == "running"
        assert _spare_bytes(exp, rec.id) in (pending, None)  # kept where the filesystem can swap
        exp.hand_back(first, None, "pre-empted")
        pending_again = Path(path).read_bytes()
        again = exp.claim("w2")
        assert again.job_id == rec.id and again.number == 2 and exp.get(rec.id).worker_id == "w2"
        assert _spare_bytes(exp, rec.id) in (pending_again, None)
        exp.complete(again, {"metrics": {"m": 1}})
        assert reader.read() == pending
    assert exp.get(rec.id).status == "completed"
    assert [n for n in os.listdir(exp.layout.leases_dir) if not n.startswith(".")] == []
    assert [p for p in os.listdir(exp.layout.jobs) if p.endswith(".tmp")] == []
    assert os.listdir(exp.layout.claimed_dir) == [] and exp.store.list_markers() == []


def test_exchange_swaps_and_falls_back(exp, tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("A")
    b.write_text("B")
    if fileio.exchange(a, b):  # Linux on a local filesystem
        assert (a.read_text(), b.read_text()) == ("B", "A")
        with pytest.raises(FileNotFoundError):
            fileio.exchange(a, tmp_path / "missing")
    # Where the system cannot swap (NFS, not Linux) a claim renames and frees the old record.
    monkeypatch.setattr(fileio, "_renameat2", False)
    assert fileio.exchange(a, b) is False
    rec = exp.submit_configs([NOOP]).submitted[0]
    att = exp.claim("w")
    assert att.job_id == rec.id and exp.get(rec.id).status == "running"
    assert not os.path.exists(exp.layout.spare(rec.id))
    assert exp.complete(att, {}).status == "completed"


@pytest.mark.parametrize(("size", "threads"), [(5, 1), (100, 1), (100, 2)])
@pytest.mark.parametrize("obstacle", ["record temp", "marker temp", "marker"])
def test_a_batch_is_queued_whole_or_not_at_all(exp, monkeypatch, size, threads, obstacle):
    """Whatever step of a batch fails (staging a record, staging a marker, publishing a marker),
    with records and markers staged by one thread or side by side by two (as on a slow disk),
    nothing of it is left: no record, no marker, no temp file."""
    monkeypatch.setattr(store_module, "SLOW_CREATE_SECONDS", 0.0 if threads == 2 else float("inf"))
    started = []
    real_thread = threading.Thread
    monkeypatch.setattr(threading, "Thread", lambda *a, **kw: started.append(1) or real_thread(*a, **kw))
    exp.store.ensure()
    records = [JobRecord(id=f"00000000-0000-4000-8000-{i:012d}", experiment="exp", config=dict(NOOP, i=i))
               for i in range(size)]
    victim = records[size * 3 // 4]
    marker = exp.layout.queued(victim.marker, 0)
    blocked = {"record temp": f"{exp.layout.jobs}/.{victim.id}.json.tmp",
               "marker temp": f"{os.path.dirname(marker)}/.{victim.marker}.tmp", "marker": marker}[obstacle]
    os.makedirs(blocked)  # a directory holds the name that step needs
    with pytest.raises(OSError):
        exp.store.create_jobs(records)
    os.rmdir(blocked)
    assert len(started) == (threads == 2)  # the obstacle lies past the records timed first
    assert exp.store.record_ids() == [] and exp.store.list_markers() == []
    assert os.listdir(exp.layout.jobs) == [] and os.listdir(os.path.dirname(marker)) == []
    exp.store.create_jobs(records)
    assert len(exp.store.list_markers()) == size and len(exp.list()) == size
    assert all(os.path.getsize(exp.layout.queued(r.marker, 0)) == 0 for r in records)


def test_a_passing_short_read_is_not_corruption(exp, monkeypatch):
    from dr_exp import store as store_mod

    rec = exp.submit_configs([NOOP]).submitted[0]
    real = store_mod.read_bytes
    calls = {"n": 0}

    def cut_first_two(path):
        calls["n"] += 1
        data = real(path)
        return data[: len(data) // 2] if calls["n"] <= 2 else data

    monkeypatch.setattr(store_mod, "read_bytes", cut_first_two)
    assert exp.store.read_record(rec.id).id == rec.id and calls["n"] == 3
    monkeypatch.setattr(store_mod, "read_bytes", lambda path: real(path)[:10])  # truly cut short
    with pytest.raises(CorruptRecord):
        exp.store.read_record(rec.id)


def test_read_only_listing_never_moves_a_corrupt_record(exp):
    good, bad = exp.submit_configs([{**NOOP, "i": 1}, {**NOOP, "i": 2}]).submitted
    path = exp.layout.record(bad.id)
    Path(path).write_text(Path(path).read_text()[:40])
    problems: list[str] = []
    assert [r.id for r in exp.list(problems=problems)] == [good.id]
    assert "unreadable record" in problems[0] and os.path.exists(path)
    assert not os.listdir(exp.layout.quarantine_dir)


@pytest.mark.parametrize(("field", "value"), [("priority", "abc"), ("history", None), ("config", "oops"),
                                         ("attempts", -1), ("tags", [1]), ("status", "weird"), ("id", "x"),
                                         ("timeout", "soon"), ("result", [1])])
def test_records_of_the_wrong_shape_are_unreadable(exp, field, value):
    rec = exp.submit_configs([NOOP]).submitted[0]
    data = json.loads(Path(exp.layout.record(rec.id)).read_text())
    data[field] = value
    Path(exp.layout.record(rec.id)).write_text(json.dumps(data))
    with pytest.raises(CorruptRecord, match=field if field != "id" else "id"):
        exp.store.read_record(rec.id, settle=False)


def test_dedup_index_is_a_few_shard_files(exp):
    exp.submit_configs([{**NOOP, "i": i} for i in range(300)])
    shards = os.listdir(exp.layout.index_dir)
    assert 100 < len(shards) <= 256 and all(s.endswith(".jsonl") for s in shards)
    assert len(exp.submit_configs([{**NOOP, "i": i} for i in range(300)]).skipped) == 300
    assert Status.PENDING in {r.status for r in exp.list()}
