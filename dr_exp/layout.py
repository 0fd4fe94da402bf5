"""Where everything of one experiment lives: ``<base>/<experiment>/`` and the names inside.

Only this module (and :class:`dr_exp.rundir.RunDir` for a run's own files) spells a path of
the experiment directory; subsystems that keep files (sync, slurm, studies) ask it for their
directory.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from dr_exp.errors import StorageError
from dr_exp.rundir import RUN_PREFIX, RunDir

MIN_PRIORITY, MAX_PRIORITY = 0, 1000

# Directories every experiment has (created by ExperimentStore.ensure).
SUBDIRS = ("jobs", "queue", "claimed", "leases", "locks", "index", "quarantine", "storage", "logs", "sync")
LOCK_STRIPES = 256

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
JOB_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CLASS_RE = re.compile(r"g(\d{1,3})")
_MARKER_RE = re.compile(r"(\d{4})-(\d{20})-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


def validate_name(name: str, what: str = "experiment name") -> str:
    """A name that is safe as one path component (``fullmatch``: no trailing newline either)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise StorageError(
            f"invalid {what} {name!r}: use 1-128 letters, digits, '.', '_' and '-' "
            "(no '/', no '..', not starting with '.')"
        )
    return name


def is_job_id(text: str) -> bool:
    return bool(JOB_ID_RE.fullmatch(text))


@dataclass(frozen=True)
class Marker:
    """A queue entry: its name sorts in claim order (higher priority first, then FIFO)."""

    priority: int
    seq: int
    job_id: str

    @property
    def name(self) -> str:
        return marker_name(self.priority, self.seq, self.job_id)


def marker_name(priority: int, seq: int, job_id: str) -> str:
    return f"{MAX_PRIORITY - priority:04d}-{seq:020d}-{job_id}"


def parse_marker(name: str) -> Marker | None:
    """The marker a queue file name stands for, or None for a name that is not one."""
    m = _MARKER_RE.fullmatch(name)
    if m is None:
        return None
    priority = MAX_PRIORITY - int(m.group(1))
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        return None
    return Marker(priority, int(m.group(2)), m.group(3))


class Layout:
    """The paths of one experiment directory. Paths on the claim path are plain strings."""

    def __init__(self, base_path: str | os.PathLike[str], experiment: str) -> None:
        self.base_path = Path(base_path).expanduser().absolute()
        self.experiment = validate_name(experiment)
        self.root = self.base_path / self.experiment
        root = str(self.root)
        self.jobs, self.queue, self.claimed, self.leases, self.locks = (
            f"{root}/{sub}" for sub in ("jobs", "queue", "claimed", "leases", "locks"))
        self.host = socket.gethostname()

    # -- directories -------------------------------------------------------------------------
    def dir(self, name: str) -> Path:
        """A directory of the experiment by name (``jobs``, ``sync``, ``slurm``, ``studies``...)."""
        return self.root / name

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    @property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    @property
    def claimed_dir(self) -> Path:
        return self.root / "claimed"

    @property
    def leases_dir(self) -> Path:
        return self.root / "leases"

    @property
    def locks_dir(self) -> Path:
        return self.root / "locks"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    @property
    def storage_dir(self) -> Path:
        return self.root / "storage"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def sync_dir(self) -> Path:
        return self.root / "sync"

    @property
    def slurm_dir(self) -> Path:
        return self.root / "slurm"

    @property
    def provenance_dir(self) -> Path:
        """Submit captures and uncommitted diffs, each stored once under its SHA-256."""
        return self.root / "provenance"

    @property
    def studies_dir(self) -> Path:
        """Adaptive sweeps: one directory per study (see :mod:`dr_exp.study`)."""
        return self.root / "studies"

    @property
    def sync_settings(self) -> Path:
        """The experiment's S3 sync settings (never credentials)."""
        return self.sync_dir / "settings.json"

    # -- files -------------------------------------------------------------------------------
    def record(self, job_id: str) -> str:
        return f"{self.jobs}/{job_id}.json"

    def spare(self, job_id: str) -> str:
        return f"{self.jobs}/.{job_id}.spare"

    def lease(self, job_id: str, attempt: int) -> str:
        """One lease file per attempt: a worker whose attempt was taken away can never touch
        (refresh, complete) the lease of the attempt that replaced it."""
        return f"{self.leases}/{job_id}.{attempt}.json"

    def lock_file(self, job_id: str) -> str:
        """Locks are striped over 256 files by the id's first two hex digits."""
        return f"{self.locks}/{job_id[:2]}.lock"

    def queue_class(self, gpus: int) -> str:
        """One queue per resource class (GPUs a job needs): a worker lists only those it serves."""
        return f"{self.queue}/g{gpus}"

    def queued(self, marker: str, gpus: int) -> str:
        return f"{self.queue}/g{gpus}/{marker}"

    def added_signal(self, gpus: int) -> str:
        """Touched whenever a job is added to a class's queue: workers re-list only when it changed."""
        return f"{self.queue}/g{gpus}/.added"

    def claimed_marker(self, marker: str) -> str:
        return f"{self.claimed}/{marker}"

    def clock_probe(self) -> str:
        """A file whose mtime tells the file server's time (one per host, rewritten in place)."""
        return f"{self.leases}/.clock-{self.host}"

    def run_dir(self, job_id: str) -> RunDir:
        return RunDir.of(self.storage_dir, job_id)

    @classmethod
    def of_run_dir(cls, run_root: str | os.PathLike[str]) -> Layout:
        """The experiment a run directory (``<base>/<experiment>/storage/run_<id>``) belongs to."""
        experiment_root = Path(run_root).absolute().parent.parent
        return cls(experiment_root.parent, experiment_root.name)

    def provenance_file(self, sha256: str, kind: str) -> Path:
        """``provenance/<sha256>.diff`` (an uncommitted diff) or ``.json`` (a submit capture)."""
        if kind not in ("diff", "json") or len(sha256) != 64 or not set(sha256) <= set("0123456789abcdef"):
            raise ValueError(f"not a provenance blob: {sha256!r}.{kind}")
        return self.provenance_dir / f"{sha256}.{kind}"

    @staticmethod
    def run_dir_relative(job_id: str) -> str:
        """What a record stores as its run directory: relative to the experiment directory."""
        return f"storage/{RUN_PREFIX}{job_id}"

    def worker_log(self, worker_id: str) -> Path:
        return self.logs_dir / f"{worker_id}.log"

    def worker_env(self, worker_id: str) -> Path:
        return self.logs_dir / f"{worker_id}.env.json"

    def launcher_log(self, launcher_id: str) -> Path:
        return self.logs_dir / f"launcher-{launcher_id}.log"


def parse_class(name: str) -> int | None:
    """``g2`` (a resource-class directory of ``queue/``) -> 2, or None."""
    m = _CLASS_RE.fullmatch(name)
    return int(m.group(1)) if m else None


def parse_lease_name(name: str) -> tuple[str, int] | None:
    """``<job_id>.<attempt>.json`` -> (job_id, attempt), or None for any other name."""
    parts = name.split(".")
    if len(parts) != 3 or parts[2] != "json" or not is_job_id(parts[0]) or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])
