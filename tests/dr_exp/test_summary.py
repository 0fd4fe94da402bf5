"""The job summary that status, list and results read: it agrees with the records, folds into
snapshots, rebuilds when damaged, and stays right while workers race a reader."""

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from dr_exp.errors import CorruptRecord
from dr_exp.results import sort_rows, summary_rows, top_summary_rows
from dr_exp.state import Ending
from dr_exp.summary import Summary
from tests.conftest import NOOP, REPO, cli_env, run_cli

pytestmark = pytest.mark.timeout(240)


def by_id(exp):
    return {row["id"]: (row["status"], row["rev"]) for row in exp.summaries()}


def truth(exp):
    return {rec.id: (rec.status, rec.rev) for rec in exp.list()}


def test_the_summary_follows_every_change(exp):
    ids = [r.id for r in exp.submit_configs([{**NOOP, "i": i} for i in range(8)], max_attempts=1).submitted]
    exp.complete(exp.claim("w"), {"metrics": {"acc": 0.9}})
    exp.fail(exp.claim("w"), {"type": "E", "message": "m"}, Ending.ERROR)
    exp.hand_back(exp.claim("w"), None)
    exp.cancel(ids[5])
    exp.retry(ids[5])
    exp.set_priority(ids[6], 999)
    exp.claim("w")  # stays running
    assert by_id(exp) == truth(exp)
    row = next(r for r in exp.summaries(status="completed"))
    assert row["metrics"] == {"acc": 0.9} and row["params"] == {} and row["attempts"] == 1
    counts = exp.counts()
    assert Counter(s for s, _ in by_id(exp).values()) == {k: v for k, v in counts.items() if v}
    assert counts["completed"] == 1 and counts["failed"] == 1 and counts["running"] == 1 and sum(counts.values()) == 8
    # A record quarantined as corrupt leaves the summary too.
    path = exp.layout.record(ids[7])
    with open(path, "w") as fh:
        fh.write("{broken")
    old = time.time() - 60
    os.utime(path, (old, old))
    from dr_exp.errors import CorruptRecord

    with pytest.raises(CorruptRecord) as info:
        exp.store.read_record(ids[7], settle=False)
    exp.store.quarantine_if_corrupt(info.value)
    assert ids[7] not in by_id(exp) and sum(exp.counts().values()) == 7


def test_folding_keeps_the_same_answer_and_drops_idle_logs(exp):
    exp.submit_configs([{**NOOP, "i": i} for i in range(50)])
    for _ in range(20):
        exp.complete(exp.claim("w"), {"metrics": {}})
    before = by_id(exp)
    summary = Summary(exp.layout)
    assert summary.compact(force=True)
    assert by_id(exp) == before == truth(exp)
    logs = [p for p in summary.dir.iterdir() if p.name.startswith("log-")]
    old = time.time() - 7200
    for p in logs:
        os.utime(p, (old, old))
    summary.compact(force=True)
    assert not [p for p in summary.dir.iterdir() if p.name.startswith("log-")]  # folded in, idle: removed
    exp.complete(exp.claim("w"), {"metrics": {}})  # the writer's log is gone: it starts a new one
    assert by_id(exp) == truth(exp)


def test_a_damaged_summary_is_noticed_and_rebuilt(base, exp):
    exp.submit_configs([{**NOOP, "i": i} for i in range(30)])
    # A new experiment's summary starts as an empty snapshot plus the logs: never rebuilt.
    assert Summary(exp.layout).damage() is None and exp.fold_summary() is None
    assert by_id(exp) == truth(exp)
    shutil.rmtree(exp.layout.root / "summary")
    problems: list[str] = []
    assert sum(exp.counts(problems).values()) == 30  # counted from the records meanwhile
    report = run_cli("validate", base=base)
    assert report.returncode == 1 and "summary disagrees" in report.stdout
    assert run_cli("validate", "--rebuild-index", base=base).returncode == 0
    assert by_id(exp) == truth(exp)
    exp.complete(exp.claim("w"), {"metrics": {}})
    Summary(exp.layout).compact(force=True)
    log = next(p for p in (exp.layout.root / "summary").iterdir() if p.name.startswith("log-"))
    with open(log, "r+b") as fh:
        fh.truncate(10)
    assert "cut short" in exp.fold_summary()
    assert by_id(exp) == truth(exp)


def test_six_workers_and_a_reader_and_a_deleted_summary(base, exp):
    n = 300
    exp.submit_configs([{**NOOP, "i": i} for i in range(n)])
    go = base / "go"
    env = cli_env(base, "exp", DR_EXP_FOLD_SECONDS="0.5")
    workers = [subprocess.Popen([sys.executable, "-m", "dr_exp", "system", "worker", "--idle-timeout", "2"],
                                env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
               for _ in range(6)]
    watcher = subprocess.Popen([sys.executable, "-m", "tests.dr_exp.summary_watcher", str(base), "exp", str(n),
                                str(go), str(base / "watched.json")], cwd=REPO, env=env)
    go.touch()
    while len(exp.list(status="completed")) < n // 3:
        time.sleep(0.2)
    gone = exp.layout.root / "summary-deleted"
    os.rename(exp.layout.root / "summary", gone)  # deleted mid-run, all at once (rm -rf races the writers)
    shutil.rmtree(gone)
    for w in workers:
        assert w.wait(timeout=200) == 0
    assert watcher.wait(timeout=200) == 0
    seen = json.loads((base / "watched.json").read_text())
    assert seen["bad_totals"] == [] and seen["backwards"] == [] and seen["passes"] >= 2, seen
    assert by_id(exp) == truth(exp)  # rebuilt by a worker, then kept up to date
    assert exp.counts()["completed"] == n
    assert "no problems found" in run_cli("validate", base=base).stdout


def test_status_filters_agree_with_the_records_across_blocks_and_tails(exp, monkeypatch):
    # Blocks of ~300 bytes, so that lines cross block edges; a parameter named "status" whose
    # value is a status; changes before and after a fold (snapshot lines, and newer lines in the
    # logs that move jobs into and out of each status); a stale log line older than the snapshot.
    from dr_exp import summary as summary_module
    from tests.conftest import EXP_CONFIGS

    monkeypatch.setattr(summary_module, "_BLOCK", 300)
    exp.sweep(str(EXP_CONFIGS / "noop.yaml"), "+status=failed,completed +i=range(0,15)", max_attempts=1)
    before = {json.loads(line)["id"]: line for line in exp.summary_lines("pending")}  # every job, pending
    for acc in (0.5, 0.7, None, 0.5, 0.9, 0.1, 0.7, 0.5):  # ties, and a job without the metric
        exp.complete(exp.claim("w"), {"metrics": {} if acc is None else {"acc": acc}})
    for _ in range(4):
        exp.fail(exp.claim("w"), {"type": "E", "message": "m"}, Ending.ERROR)
    summary = Summary(exp.layout)
    assert summary.compact(force=True)
    for acc in (0.7, None, 0.95):
        exp.complete(exp.claim("w"), {"metrics": {} if acc is None else {"acc": acc}})
    exp.retry(exp.list(status="failed")[0].id)  # failed -> pending: out of one filter, into another
    exp.cancel(exp.list(status="pending")[-1].id)
    done_before_fold = exp.list(status="completed")[0].id
    with open(summary.dir / "log-stale.jsonl", "wb") as fh:  # a late line from a slow writer, older than the snapshot
        fh.write(before[done_before_fold])

    gone = exp.list(status="completed")[1]  # a record that became unreadable and was moved aside
    Path(exp.layout.record(gone.id)).write_text("{garbled")
    os.utime(exp.layout.record(gone.id), (time.time() - 3600, time.time() - 3600))
    assert exp.store.quarantine_if_corrupt(CorruptRecord(Path(exp.layout.record(gone.id)), "garbled"))

    for statuses in (None, "pending", "failed", "completed", "cancelled", "completed,failed", "running"):
        got = [json.loads(line)["id"] for line in exp.summary_lines(statuses)]
        want = {r.id for r in exp.list() if statuses is None or r.status in statuses.split(",")}
        assert len(got) == len(set(got)) and set(got) == want, statuses
    problems = []
    counts = exp.counts(problems=problems)
    assert {s: n for s, n in counts.items() if n} == Counter(r.status for r in exp.list()) and problems == []
    assert sum(counts.values()) == 29 and gone.id not in by_id(exp)
    assert by_id(exp) == truth(exp)

    # `results --sort acc --limit N` finds each line's metric by regex over whole blocks: it
    # agrees with sorting every row, ties in summary order, rows without the metric last.
    rows = list(summary_rows(exp.summaries()))
    assert sorted(r["acc"] for r in rows if "acc" in r) == sorted(
        (r.result or {}).get("metrics", {})["acc"] for r in exp.list() if "acc" in ((r.result or {}).get("metrics") or {}))
    for reverse in (False, True):
        for limit in (1, 2, 3, 9, 40):
            got = top_summary_rows(lambda: exp.summary_blocks(), "acc", reverse, limit)
            want = sort_rows(list(rows), "acc", reverse, limit)
            assert [r["job_id"] for r in got] == [r["job_id"] for r in want], (reverse, limit)
        got = top_summary_rows(lambda: exp.summary_blocks("completed"), "acc", reverse, 40)
        assert [r["job_id"] for r in got] == [r["job_id"] for r in sort_rows(
            [r for r in rows if r["status"] == "completed"], "acc", reverse)]
