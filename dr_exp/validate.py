"""Consistency checks of an experiment directory, and the repairs that are safe to make.

Every file the job database reads is checked against its shape here: records (JSON and field
types), queue markers (names, plain files), leases (names, content), spares and leftovers.
``validate`` only reports; ``validate --fix`` repairs what is safe and quarantines what is broken.
Nothing found here ever raises: one bad file must not hide the others.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from dr_exp.api import Experiment
from dr_exp.errors import CorruptRecord, JobNotFound
from dr_exp.fileio import list_dir, read_bytes
from dr_exp.job import FIELD_NAMES, JobRecord
from dr_exp.layout import is_job_id, parse_marker
from dr_exp.state import Status
from dr_exp.summary import Summary, SummaryDamaged

STALE_TMP_SECONDS = 3600


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    jobs: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def validate(exp: Experiment, fix: bool = False, rebuild_index: bool = False) -> Report:
    exp.require()
    report = Report()
    records = _check_records(exp, fix, report)
    report.jobs = len(records)
    _check_queue(exp, records, fix, report)
    _check_leases(exp, records, fix, report)
    if fix:
        for job_id, what in exp.recover(full_scan=True):
            report.fixed.append(f"recovered {job_id}: {what}")
    _check_leftovers(exp, fix, report)
    _check_summary(exp, fix or rebuild_index, rebuild_index, report)
    return report


def _check_summary(exp: Experiment, fix: bool, force: bool, report: Report) -> None:
    """The summary (what status, list and results read) must agree with the records."""
    summary = Summary(exp.layout)
    damage = summary.damage() if summary.exists() else "it does not exist"
    try:
        seen = {row["id"]: row for row in summary.rows()} if summary.exists() else {}
    except SummaryDamaged as exc:
        damage, seen = str(exc), {}
    disagree = []
    for rec in exp.store.iter_records():
        row = seen.pop(rec.id, None)
        if row is None or row["status"] != rec.status or row.get("rev", 0) < rec.rev:
            disagree.append(rec.id)
    stale = len(disagree) + len(seen)
    if stale:
        report.problems.append(f"the job summary disagrees with the records for {stale} jobs "
                               f"(e.g. {(disagree or list(seen))[0]}); `dr_exp validate --rebuild-index` rebuilds it")
    elif damage and damage != "it has no snapshot yet":
        report.problems.append(f"the job summary is damaged ({damage}); `dr_exp validate --rebuild-index` rebuilds it")
    if (report.problems and (stale or damage) and fix) or force:
        report.fixed.append(f"rebuilt the job summary from {exp.rebuild_summary()} records")


def _check_records(exp: Experiment, fix: bool, report: Report) -> dict[str, JobRecord]:
    store = exp.store
    records: dict[str, JobRecord] = {}
    for name in list_dir(store.layout.jobs):
        path = f"{store.layout.jobs}/{name}"
        if name.startswith("."):
            continue
        job_id = name[:-5] if name.endswith(".json") else ""
        if not is_job_id(job_id):
            report.problems.append(f"{path}: not a job record name")
            if fix:
                report.fixed.append(f"moved {path} to {store.quarantine(path, 'not a job record name')}")
            continue
        try:
            rec = store.read_record(job_id)
        except JobNotFound:
            continue
        except CorruptRecord as exc:
            report.problems.append(f"unreadable record {exc.path}: {exc.reason}")
            if fix:
                dest = store.quarantine_if_corrupt(exc)
                report.fixed.append(f"quarantined {exc.path} -> {dest}" if dest else
                                    f"left {exc.path}: written moments ago, check again shortly")
            continue
        records[job_id] = rec
        missing = _missing_fields(path)
        if missing:
            report.problems.append(f"record {path} lacks {', '.join(missing)} (defaults assumed)")
            if fix and exp.rewrite(job_id) is not None:
                report.fixed.append(f"completed record {path} with defaults")
    return records


def _missing_fields(path: str) -> list[str]:
    try:
        data = json.loads(read_bytes(path))
    except (OSError, ValueError):
        return []
    return [f for f in FIELD_NAMES if f not in data] if isinstance(data, dict) else []


def _check_queue(exp: Experiment, records: dict[str, JobRecord], fix: bool, report: Report) -> None:
    store = exp.store
    lay = store.layout
    for path, why in store.strays():
        report.problems.append(f"{path}: {why}")
        if not fix:
            continue
        marker = parse_marker(os.path.basename(path))
        rec = records.get(marker.job_id) if marker else None
        if why.startswith("a queue marker outside") and rec is not None and rec.status == Status.PENDING:
            os.replace(path, f"{store.class_dir(rec.gpus)}/{marker.name}")  # an old layout's marker
            report.fixed.append(f"moved {path} into queue/g{rec.gpus}/")
        else:
            report.fixed.append(f"moved {path} to {store.quarantine(path, why)}")
    markers: dict[str, str] = {}
    for entry in store.list_markers():
        markers[entry.partition("/")[2]] = f"queue/{entry.partition('/')[0]}"
    for name in list_dir(lay.claimed):
        if parse_marker(name) is not None and os.path.isfile(f"{lay.claimed}/{name}"):
            markers[name] = "claimed"
    expected = {rec.marker: rec for rec in records.values() if rec.status == Status.PENDING}
    for name, where in markers.items():
        rec = expected.get(name)
        if rec is not None and (where == "claimed" or where == f"queue/g{rec.gpus}"):
            continue
        job_id = parse_marker(name).job_id  # type: ignore[union-attr]
        report.problems.append(f"marker {where}/{name} has no pending job (of that resource class)")
        if fix:
            with store.lock(job_id):
                fresh = exp.read_or_none(job_id)
                if where == "claimed":
                    if fresh is None or fresh.status != Status.PENDING or fresh.marker != name:
                        store.discard_claimed(name)
                        report.fixed.append(f"removed stale marker {name}")
                else:
                    _unlink(f"{lay.queue}/{where.partition('/')[2]}/{name}")
                    report.fixed.append(f"removed stale marker {name}")
                    if fresh is not None and fresh.status == Status.PENDING and store.marker_state(fresh) is None:
                        store.enqueue(fresh)
    for marker, rec in expected.items():
        if marker in markers:
            continue
        report.problems.append(f"pending job {rec.id} has no queue marker (no worker would claim it)")
        if fix:
            with store.lock(rec.id):
                fresh = exp.read_or_none(rec.id)
                if fresh is not None and fresh.status == Status.PENDING and store.marker_state(fresh) is None:
                    store.enqueue(fresh)
                    report.fixed.append(f"re-created the queue marker of {rec.id}")


def _check_leases(exp: Experiment, records: dict[str, JobRecord], fix: bool, report: Report) -> None:
    store = exp.store
    problems: list[str] = []
    leases = store.leases(problems)
    for problem in problems:
        report.problems.append(problem)
        path = problem.split(":", 1)[0]
        if fix and "not a lease file name" in problem:
            report.fixed.append(f"moved {path} to {store.quarantine(path, 'not a lease file name')}")
    live = set()
    for info in leases:
        rec = records.get(info.job_id)
        if rec is not None and rec.status == Status.RUNNING and rec.attempts == info.attempt:
            live.add(info.job_id)
            if info.content is None and fix and os.path.isdir(info.path):
                report.fixed.append(f"moved {info.path} to {store.quarantine(info.path, 'a directory in place of a lease')}")
            continue
        what = f"{rec.status} (attempt {rec.attempts})" if rec else "missing"
        report.problems.append(f"orphan lease {info.path} (attempt {info.attempt}; the job is {what})")
        if fix:
            with store.lock(info.job_id):
                fresh = exp.read_or_none(info.job_id)
                if fresh is None or fresh.status != Status.RUNNING or fresh.attempts != info.attempt:
                    store.remove_lease(info.job_id, info.attempt)
                    report.fixed.append(f"removed orphan lease {info.path}")
    for rec in records.values():
        if rec.status == Status.RUNNING and rec.id not in live:
            report.problems.append(f"running job {rec.id} has no lease (its worker is gone?)")


def _check_leftovers(exp: Experiment, fix: bool, report: Report) -> None:
    store = exp.store
    lay = store.layout
    for name in list_dir(lay.jobs):
        if name.startswith(".") and name.endswith(".spare"):
            job_id = name[1:-len(".spare")]
            if not os.path.exists(lay.record(job_id)):
                report.problems.append(f"spare file {name} of a job that has no record")
                if fix:
                    with store.lock(job_id):
                        if not os.path.exists(lay.record(job_id)):
                            _unlink(f"{lay.jobs}/{name}")
                            report.fixed.append(f"removed {name}")
    now = time.time()
    for directory in (lay.jobs, lay.queue, *map(lay.queue_class, store.classes()), lay.leases, str(lay.index_dir)):
        for name in list_dir(directory):
            path = f"{directory}/{name}"
            stale_tmp = name.startswith(".") and name.endswith(".tmp")
            old_probe = directory == lay.leases and name.startswith(".clock-") and f"{lay.leases}/{name}" != lay.clock_probe()
            if not (stale_tmp or old_probe):
                continue
            try:
                old = now - os.stat(path).st_mtime > STALE_TMP_SECONDS
            except FileNotFoundError:
                continue
            if old:
                report.problems.append(f"leftover {'temp' if stale_tmp else 'clock probe'} file {path}")
                if fix:
                    _unlink(path)
                    report.fixed.append(f"removed {path}")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
