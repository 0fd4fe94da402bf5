"""Consistency checks of an experiment directory, and the repairs that are safe to make."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from dr_exp.api import Experiment
from dr_exp.state import Status

STALE_TMP_SECONDS = 3600


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    jobs: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def validate(exp: Experiment, fix: bool = False) -> Report:
    report = Report()
    store = exp.store
    exp.require()
    records = {}
    for rec in store.iter_records(report.problems):
        records[rec.id] = rec
    report.jobs = len(records)
    markers = {}
    for directory in (store.queue_dir, store.claimed_dir):
        for name in store.list_dir(directory):
            if not name.startswith("."):
                markers[name] = directory

    expected = {rec.marker: rec for rec in records.values() if rec.status == Status.PENDING}
    for name, directory in markers.items():
        rec = expected.get(name)
        if rec is None:
            report.problems.append(f"marker {directory.name}/{name} has no pending job")
            if fix:
                with store.lock(name.split("-", 2)[-1]):
                    try:
                        os.unlink(directory / name)
                        report.fixed.append(f"removed stale marker {name}")
                    except FileNotFoundError:
                        pass
    for marker, rec in expected.items():
        if marker not in markers:
            report.problems.append(f"pending job {rec.id} has no queue marker (no worker would claim it)")
            if fix:
                with store.lock(rec.id):
                    fresh = store.read_record(rec.id)
                    if fresh.status == Status.PENDING and not (store.queue_dir / marker).exists() \
                            and not (store.claimed_dir / marker).exists():
                        store.add_marker(fresh)
                        report.fixed.append(f"re-created the queue marker of {rec.id}")

    for name in store.list_dir(store.leases_dir):
        if name.startswith(".") or not name.endswith(".json"):
            continue
        job_id = name[:-5]
        rec = records.get(job_id)
        if rec is None or rec.status != Status.RUNNING:
            report.problems.append(f"orphan lease {name} (job is {rec.status if rec else 'missing'})")
            if fix:
                with store.lock(job_id):
                    fresh = exp.read_or_none(job_id)
                    if fresh is None or fresh.status != Status.RUNNING:
                        store.remove_lease(job_id)
                        report.fixed.append(f"removed orphan lease {name}")
    for rec in records.values():
        if rec.status == Status.RUNNING and not store.lease_path(rec.id).exists():
            report.problems.append(f"running job {rec.id} has no lease (its worker is gone?)")
    if fix:
        for job_id, what in exp.recover(full_scan=True):
            report.fixed.append(f"recovered {job_id}: {what}")

    for name in store.list_dir(store.jobs_dir):
        if name.startswith(".") and name.endswith(".spare"):
            job_id = name[1:-len(".spare")]
            if not store.record_path(job_id).exists():
                report.problems.append(f"spare file {name} of a job that has no record")
                if fix:
                    with store.lock(job_id):
                        if not store.record_path(job_id).exists():
                            (store.jobs_dir / name).unlink(missing_ok=True)
                            report.fixed.append(f"removed {name}")

    now = time.time()
    for directory in (store.jobs_dir, store.index_dir, store.leases_dir):
        for name in store.list_dir(directory):
            if name.startswith(".") and name.endswith(".tmp"):
                path = directory / name
                try:
                    old = now - path.stat().st_mtime > STALE_TMP_SECONDS
                except FileNotFoundError:
                    continue
                if old:
                    report.problems.append(f"leftover temp file {path}")
                    if fix:
                        path.unlink(missing_ok=True)
                        report.fixed.append(f"removed {path}")
    return report
