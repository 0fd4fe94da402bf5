"""The files of one experiment on disk, and the atomic primitives over them.

Layout (``<base>/<experiment>/``)::

    jobs/<id>.json      the canonical record
    jobs/.<id>.spare    empty until the first claim, then the record as it was before it
    queue/<marker>      one empty file per claimable job; names sort in claim order
    claimed/<marker>    a marker a worker has taken, until the record says ``running``
    leases/<id>.json    heartbeat of a running job; its mtime is the heartbeat
    locks/<xx>.lock     flock for read-modify-write of a record (256 stripes by id prefix)
    index/<hash>        config hash -> job id, for dedup
    quarantine/         records that would not parse
    storage/run_<id>/   run directories
    logs/               one log per worker
    sync/               the durable S3 sync queue

Only :func:`os.rename`, ``O_CREAT|O_EXCL`` and per-record ``flock`` are used for exclusion, all
of which are atomic on local disks and on NFS.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dr_exp.errors import CorruptRecord, JobNotFound, StorageError
from dr_exp.fileio import append_line, atomic_write, exchange, overwrite, read_bytes, read_jsonl, replace_with  # noqa: F401
from dr_exp.job import JobRecord
from dr_exp.layout import Layout, validate_name
from dr_exp.lock import RecordLock

log = logging.getLogger(__name__)

SUBDIRS = ("jobs", "queue", "claimed", "leases", "locks", "index", "quarantine", "storage", "logs", "sync")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_JOB_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_JOB_PREFIX_RE = re.compile(r"^[0-9a-f-]{4,36}$")


class ExperimentStore:
    """Paths and atomic operations of one experiment directory."""

    def __init__(self, base_path: str | os.PathLike[str], experiment: str) -> None:
        self.base_path = Path(base_path).expanduser().absolute()
        self.experiment = validate_name(experiment)
        self.root = self.base_path / self.experiment
        self.layout = Layout(self.base_path, self.experiment)
        for sub in SUBDIRS:
            setattr(self, f"{sub}_dir", self.root / sub)
        # Plain strings for the claim path, where building Path objects showed up in profiles.
        self._jobs, self._queue, self._claimed, self._leases, self._locks = (
            str(self.root / sub) for sub in ("jobs", "queue", "claimed", "leases", "locks"))
        self._hostname = socket.gethostname()

    # -- setup ---------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.jobs_dir.is_dir()

    def ensure(self) -> None:
        """Create the experiment directory tree (idempotent)."""
        probe = self.base_path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise StorageError(f"base path {self.base_path} is not usable: {probe} is not a directory; "
                               "pass a directory with --base-path or DR_EXP_BASE_PATH")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise StorageError(
                f"base path {self.base_path} is not writable ({probe} denies it); "
                "pass a writable --base-path or set DR_EXP_BASE_PATH"
            )
        try:
            for sub in SUBDIRS:
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            if not os.path.exists(f"{self._locks}/ff.lock"):
                # All lock stripes up front, so that no claim pays for creating one.
                for stripe in range(256):
                    os.close(os.open(f"{self._locks}/{stripe:02x}.lock", os.O_WRONLY | os.O_CREAT, 0o644))
        except OSError as exc:
            raise StorageError(f"base path {self.base_path} is not writable: cannot create {self.root} "
                               f"({exc.strerror}); pass a writable --base-path") from None

    # -- paths -----------------------------------------------------------------------------
    def record_path(self, job_id: str) -> Path:
        return self.jobs_dir / f"{job_id}.json"

    def run_dir(self, job_id: str) -> Path:
        return self.storage_dir / f"run_{job_id}"

    def lease_path(self, job_id: str) -> Path:
        return Path(self.lease_file(job_id))

    def lease_file(self, job_id: str) -> str:
        return f"{self._leases}/{job_id}.json"

    def lock(self, job_id: str, timeout: float = 60.0) -> RecordLock:
        """The lock guarding ``job_id``'s record. Locks are striped over 256 files (by the
        id's first two hex digits): creating a file costs far more than locking one, and
        locks are held for a read-modify-write only, so sharing a stripe costs nothing."""
        return RecordLock(f"{self._locks}/{job_id[:2]}.lock", timeout)

    # -- job ids -----------------------------------------------------------------------------
    def resolve_job_id(self, job_id: str) -> str:
        """Accept a full job id or a unique prefix of one (as git does with hashes)."""
        job_id = job_id.strip().lower()
        if _JOB_ID_RE.match(job_id):
            if self.record_path(job_id).exists():
                return job_id
            raise JobNotFound(job_id, str(self.root))
        if not _JOB_PREFIX_RE.match(job_id):
            raise StorageError(f"invalid job id {job_id!r}: job ids are UUIDs such as 3f2b9c1e-...; "
                               "run `dr_exp job list` to see them")
        matches = [n[:-5] for n in self.list_dir(self.jobs_dir) if n.startswith(job_id) and n.endswith(".json")]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise JobNotFound(job_id, str(self.root))
        raise StorageError(f"job id prefix {job_id!r} is ambiguous ({len(matches)} jobs); give more characters")

    # -- records -------------------------------------------------------------------------------
    def spare_path(self, job_id: str) -> str:
        return f"{self._jobs}/.{job_id}.spare"

    def write_record(self, record: JobRecord, durable: bool = True, via: str | os.PathLike[str] | None = None,
                     keep_old: bool = False) -> bool:
        """Write the record atomically; ``via`` names an existing private file to use as the
        temp file (see :func:`replace_with`), falling back to a fresh one. True if ``via`` was
        used."""
        data = record.to_json()
        path = f"{self._jobs}/{record.id}.json"
        if via is not None and replace_with(via, path, data, durable, keep_old):
            return True
        atomic_write(path, data, durable=durable)
        return False

    def make_spare(self, job_id: str) -> None:
        """An empty private file that the job's first claim writes its record through. The claim
        swaps it with the pending record, which then stays at the spare's name, so claiming
        frees no file (see :func:`replace_with`); later claims write through a fresh file."""
        os.close(os.open(self.spare_path(job_id), os.O_WRONLY | os.O_CREAT, 0o644))

    def read_record(self, job_id: str) -> JobRecord:
        path = f"{self._jobs}/{job_id}.json"
        try:
            raw = read_bytes(path)
        except FileNotFoundError:
            raise JobNotFound(job_id, str(self.root)) from None
        try:
            return JobRecord.from_dict(json.loads(raw))
        except (ValueError, TypeError) as exc:
            raise CorruptRecord(path, str(exc)) from None

    def quarantine(self, path: str | os.PathLike[str], reason: str) -> Path:
        """Move an unreadable file aside so it never blocks a worker or a listing."""
        path = Path(path)
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        dest = self.quarantine_dir / f"{path.name}.{time.time_ns()}"
        try:
            os.rename(path, dest)
        except FileNotFoundError:
            return dest
        atomic_write(f"{dest}.reason", reason + "\n")
        log.warning("quarantined %s -> %s: %s", path, dest, reason)
        return dest

    def iter_records(self, problems: list[str] | None = None) -> Iterator[JobRecord]:
        """All readable records; corrupt ones are quarantined and described in ``problems``."""
        for name in self.list_dir(self.jobs_dir):
            if not name.endswith(".json") or name.startswith("."):
                continue
            job_id = name[:-5]
            try:
                yield self.read_record(job_id)
            except JobNotFound:
                continue  # removed since the listing
            except CorruptRecord as exc:
                dest = self.quarantine(exc.path, exc.reason)
                if problems is not None:
                    problems.append(f"quarantined unreadable record {exc.path} ({exc.reason}) -> {dest}")

    # -- queue markers -------------------------------------------------------------------------
    def add_marker(self, record: JobRecord, exist_ok: bool = False) -> None:
        try:
            fd = os.open(self.queue_dir / record.marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            if not exist_ok:
                raise
            return
        os.close(fd)

    def list_markers(self) -> list[str]:
        return sorted(n for n in self.list_dir(self.queue_dir) if not n.startswith("."))

    def take_marker(self, name: str) -> bool:
        """Move a marker from queue/ to claimed/. Exactly one caller wins.

        Workers list the same queue, so many markers in a worker's batch are taken by others
        before it reaches them. They are looked up first: a failed rename costs more than a
        lookup, as the kernel serialises cross-directory renames per filesystem."""
        src = f"{self._queue}/{name}"
        if not os.path.lexists(src):
            return False
        try:
            os.rename(src, f"{self._claimed}/{name}")
            return True
        except FileNotFoundError:
            return False

    def drop_marker(self, record: JobRecord) -> None:
        for directory in (self.queue_dir, self.claimed_dir):
            try:
                os.unlink(directory / record.marker)
            except FileNotFoundError:
                pass

    def requeue_claimed_marker(self, name: str) -> bool:
        try:
            os.rename(self.claimed_dir / name, self.queue_dir / name)
            return True
        except FileNotFoundError:
            return False

    # -- leases --------------------------------------------------------------------------------
    def write_lease(self, job_id: str, worker_id: str, lease_seconds: float, attempt: int,
                    claimed_marker: str | None = None) -> None:
        """Create the lease of a job being started. A claimed marker, when given, is renamed
        into place rather than creating a new file (creates are the slowest step of a claim)."""
        lease = {
            "job_id": job_id,
            "worker_id": worker_id,
            "host": self._hostname,
            "pid": os.getpid(),
            "lease_seconds": lease_seconds,
            "attempt": attempt,
            "created_at": time.time(),
        }
        path = f"{self._leases}/{job_id}.json"
        if claimed_marker is not None:
            os.rename(f"{self._claimed}/{claimed_marker}", path)
        # A lease is a heartbeat, not a durable fact: losing it in a crash only makes the job
        # look expired sooner, so it is written in place without fsync (readers treat a torn
        # lease as content-less; its mtime is what counts, and this write sets it to now).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            overwrite(fd, json.dumps(lease).encode(), path)
        finally:
            os.close(fd)

    def read_lease(self, job_id: str) -> tuple[dict[str, Any], float] | None:
        """The lease's content and its mtime (stamped by the file server), or None."""
        path = self.lease_file(job_id)
        try:
            mtime = os.stat(path).st_mtime
            content = json.loads(read_bytes(path))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}, mtime
        return (content if isinstance(content, dict) else {}), mtime

    def touch_lease(self, job_id: str) -> bool:
        """Refresh a lease's mtime; False if the lease is gone (the job was taken away)."""
        try:
            os.utime(self.lease_path(job_id))
            return True
        except FileNotFoundError:
            return False

    def remove_lease(self, job_id: str) -> None:
        try:
            os.unlink(self.lease_path(job_id))
        except FileNotFoundError:
            pass

    def server_now(self) -> float:
        """The file server's idea of now: the mtime of a file we just wrote.

        Lease expiry compares file mtimes with this, never with this node's wall clock, so
        nodes whose clocks disagree still agree on which leases expired.
        """
        probe = self.leases_dir / f".clock-{self._hostname}-{os.getpid()}"
        with open(probe, "w") as fh:
            fh.write("x")
        return os.stat(probe).st_mtime

    # -- dedup index ---------------------------------------------------------------------------
    def index_lookup(self, config_hash: str) -> str | None:
        try:
            return (self.index_dir / config_hash).read_text().strip() or None
        except FileNotFoundError:
            return None

    def index_store(self, config_hash: str, job_id: str) -> None:
        atomic_write(self.index_dir / config_hash, job_id, durable=False)

    # -- helpers -------------------------------------------------------------------------------
    @staticmethod
    def list_dir(directory: Path) -> list[str]:
        try:
            return os.listdir(directory)
        except FileNotFoundError:
            return []
