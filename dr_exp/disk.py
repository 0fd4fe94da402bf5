"""What an experiment costs on disk (files and bytes per part), and packing finished runs.

Clusters give users inode quotas (often 0.5-1 million files). The job database itself keeps at
most two files per finished job (its record and the record's previous version); a run directory
holds a dozen small files until `dr_exp pack` puts them into one archive per run.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from dr_exp.api import Experiment
from dr_exp.errors import DrExpError
from dr_exp.state import FINISHED

PARTS = ("jobs", "queue", "claimed", "leases", "index", "summary", "locks", "quarantine", "logs", "sync", "slurm",
         "provenance", "studies", "storage")


@dataclass
class Usage:
    part: str
    files: int = 0
    dirs: int = 0
    bytes: int = 0


def _walk(path: str, usage: Usage, skip: Collection[str] = ()) -> None:
    try:
        entries = list(os.scandir(path))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return
    for entry in entries:
        if entry.name in skip:
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                usage.dirs += 1
                _walk(entry.path, usage)
            else:
                usage.files += 1
                usage.bytes += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue


def usage(exp: Experiment) -> list[Usage]:
    """Files, directories and bytes of each part of the experiment directory."""
    exp.require()
    out = []
    known = set(PARTS)
    for part in PARTS:
        u = Usage(part)
        _walk(str(exp.layout.dir(part)), u)
        if u.files or u.dirs:
            out.append(u)
    other = Usage("other")
    _walk(str(exp.store.root), other, skip=known)
    if other.files or other.dirs:
        out.append(other)
    return out


def pack_runs(exp: Experiment, job_ids: Iterable[str]) -> tuple[int, int]:
    """Pack the run directories of these finished jobs; returns (runs packed, files removed)."""
    runs = files = 0
    for job_id in job_ids:
        rec = exp.get(job_id)
        if rec.status not in FINISHED:
            raise DrExpError(f"job {rec.id} is {rec.status}; only finished runs are packed (they are not written to)")
        n = exp.run_dir(rec).pack()
        if n:
            runs += 1
            files += n - 1
    return runs, files
