"""The job database on disk: records, queue markers, leases and the dedup index of one
experiment, behind intent-level methods.

Every trick that keeps the hot paths cheap lives inside this class and nowhere else:

- **Create jobs** (:meth:`create_jobs`): all records and markers of a batch are staged as temp
  files (side by side by two threads where creating files is slow), made durable with one
  filesystem sync, then published by renames: a batch is queued whole or not at all, and
  survives a power cut once the call returns.
- **Begin an attempt** (:meth:`begin_attempt`): taking the queue marker is one rename; the
  ``running`` record is written into that marker (an empty private file made at submit, so the
  claim creates no file for it) and swapped with the pending record
  (``renameat2(RENAME_EXCHANGE)``), which stays behind as the job's spare instead of being freed;
  where the filesystem cannot swap (NFS) it renames. The attempt's lease is the one new file.
- **End an attempt** (:meth:`end_attempt`): the final record is written through the lease file
  and renamed into ``jobs/``: one rename, no new file, and it works on a full disk because the
  lease's blocks are already allocated.

A file that has once been a record is never written again, so a reader holding an old record
keeps reading exactly that version. Only :func:`os.rename`, ``O_CREAT|O_EXCL`` and per-record
``flock`` are used for exclusion, all atomic on local disks and on NFS.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dr_exp.errors import CorruptRecord, JobNotFound, StorageError
from dr_exp.fileio import (
    atomic_write,
    exchange,
    list_dir,
    overwrite,
    read_bytes,
    replace_with,
    sync_filesystem,
    write_new_files,
)
from dr_exp.job import Attempt, JobRecord
from dr_exp.layout import (
    JOB_ID_RE,
    LOCK_STRIPES,
    SUBDIRS,
    Layout,
    Marker,
    is_job_id,
    parse_class,
    parse_lease_name,
    parse_marker,
)
from dr_exp.lock import RecordLock
from dr_exp.rundir import RunDir
from dr_exp.summary import Summary, SummaryWriter, removed_line, summary_line

log = logging.getLogger(__name__)

# A record that fails to parse is read again a few times, for about DR_EXP_SETTLE_SECONDS in
# all (default 0.5 s), before it counts as corrupt: on shared filesystems that cache attributes,
# a record another node just replaced can read back cut short for a moment. Read-only listings,
# which never act on what they cannot read, wait a tenth of that.
_PAUSE_SHARES = (0.02, 0.1, 0.3, 0.58)
SETTLE_ENV = "DR_EXP_SETTLE_SECONDS"
# A corrupt record is quarantined only once it has been left alone this long (seconds, by the
# file server's clock); younger ones may still be a stale view of a fresh write.
QUARANTINE_AGE = 10.0
_JOB_PREFIX_CHARS = frozenset("0123456789abcdef-")
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)
# A submit times the staging of its first PARALLEL_STAGING records; if a create took longer than
# SLOW_CREATE_SECONDS, the rest of its records and its queue markers are staged side by side.
PARALLEL_STAGING = 64
SLOW_CREATE_SECONDS = 50e-6


@dataclass(frozen=True)
class LeaseInfo:
    """A lease file as found on disk: whose attempt, its heartbeat and its declared length."""

    job_id: str
    attempt: int
    path: str
    mtime: float
    content: dict[str, Any] | None  # None: unreadable or of the wrong shape

    def lease_seconds(self, default: float) -> float:
        value = (self.content or {}).get("lease_seconds")
        return float(value) if type(value) in (int, float) and value > 0 else default


# The fields a lease holds and their types (see ExperimentStore._write_lease); a field of another
# type makes the lease malformed: judged by its mtime alone, and reported by `validate`.
_LEASE_FIELDS: dict[str, tuple[type, ...]] = {
    "job_id": (str,), "attempt": (int,), "worker_id": (str, type(None)), "host": (str,), "pid": (int,),
    "lease_seconds": (int, float), "created_at": (int, float)}


def _lease_shape_ok(content: dict[str, Any]) -> bool:
    for key, types in _LEASE_FIELDS.items():
        value = content.get(key)
        if key in content and (type(value) not in types or (key == "lease_seconds" and not value > 0)):
            return False
    return True


class ExperimentStore:
    """The files of one experiment directory (see :class:`dr_exp.layout.Layout`)."""

    def __init__(self, base_path: str | os.PathLike[str], experiment: str) -> None:
        self.layout = Layout(base_path, experiment)
        self.base_path = self.layout.base_path
        self.experiment = self.layout.experiment
        self.root = self.layout.root
        try:
            settle = float(os.environ.get(SETTLE_ENV) or 0.5)
        except ValueError:
            raise StorageError(f"{SETTLE_ENV}={os.environ[SETTLE_ENV]!r} is not a number of seconds") from None
        self._pauses = tuple(max(0.0, settle) * share for share in _PAUSE_SHARES)
        self.summary = SummaryWriter(self.layout)

    # -- setup ---------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.layout.jobs_dir.is_dir()

    def ensure(self) -> None:
        """Create the experiment directory tree (idempotent)."""
        probe = self.base_path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise StorageError(f"base path {self.base_path} is not usable: {probe} is not a directory; "
                               "pass a directory with --base-path or DR_EXP_BASE_PATH")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise StorageError(f"base path {self.base_path} is not writable ({probe} denies it); "
                               "pass a writable --base-path or set DR_EXP_BASE_PATH")
        locks = self.layout.locks
        try:
            fresh = not os.path.isdir(self.layout.jobs)
            for sub in SUBDIRS:
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            if fresh:  # every job of a new experiment is in the summary's logs: nothing to rebuild
                Summary(self.layout).start_empty()
            self.class_dir(0)
            if not os.path.exists(f"{locks}/ff.lock"):
                # All lock stripes up front, so that no claim pays for creating one.
                for stripe in range(LOCK_STRIPES):
                    os.close(os.open(f"{locks}/{stripe:02x}.lock", os.O_WRONLY | os.O_CREAT, 0o644))
        except OSError as exc:
            if exc.errno in NO_SPACE:
                raise storage_error(exc, f"cannot create the experiment directory {self.root}") from None
            raise StorageError(f"base path {self.base_path} is not writable: cannot create {self.root} "
                               f"({exc.strerror}); pass a writable --base-path") from None

    def lock(self, job_id: str, timeout: float = 60.0) -> RecordLock:
        """The lock guarding ``job_id``'s record, held only around a read-modify-write."""
        return RecordLock(self.layout.lock_file(job_id), timeout)

    def run_dir(self, job_id: str) -> RunDir:
        return self.layout.run_dir(job_id)

    # -- job ids -------------------------------------------------------------------------
    def resolve_job_id(self, job_id: str) -> str:
        """Accept a full job id or a unique prefix of one (as git does with hashes)."""
        job_id = job_id.strip().lower()
        if is_job_id(job_id):
            if os.path.exists(self.layout.record(job_id)):
                return job_id
            raise JobNotFound(job_id, str(self.root))
        if not (4 <= len(job_id) <= 36) or not set(job_id) <= _JOB_PREFIX_CHARS:
            raise StorageError(f"invalid job id {job_id!r}: job ids are UUIDs such as 3f2b9c1e-...; "
                               "run `dr_exp job list` to see them")
        matches = [n[:-5] for n in list_dir(self.layout.jobs) if n.startswith(job_id) and n.endswith(".json")]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise JobNotFound(job_id, str(self.root))
        raise StorageError(f"job id prefix {job_id!r} is ambiguous ({len(matches)} jobs); give more characters")

    # -- records -------------------------------------------------------------------------
    def read_record(self, job_id: str, settle: bool = True, quick: bool = False) -> JobRecord:
        """The record of ``job_id``. One that does not parse, or parses into the wrong shape, is
        read again a few times first (``settle``; briefly when ``quick``), and only then raises
        :class:`CorruptRecord`."""
        path = self.layout.record(job_id)
        pauses = self._pauses if settle else ()
        brief = 2 if quick else len(pauses)
        reason = ""
        before = None
        for tries, pause in enumerate((*pauses, None)):
            try:
                raw = read_bytes(path)
            except FileNotFoundError:
                raise JobNotFound(job_id, str(self.root)) from None
            except IsADirectoryError:
                raise CorruptRecord(path, "is a directory, not a record") from None
            try:
                record = JobRecord.from_dict(json.loads(raw))
            except (ValueError, TypeError, RecursionError) as exc:
                reason = str(exc) or type(exc).__name__
            else:
                if record.id != job_id:
                    raise CorruptRecord(path, f"holds the record of job {record.id}")
                return record
            # A quick read gives up early unless the bytes keep changing: a record rewritten
            # while it is read (each new version may read back cut short for a moment) is alive.
            if pause is None or (tries >= brief and raw == before):
                break
            before = raw
            time.sleep(pause)
        raise CorruptRecord(path, reason)

    def write_record(self, record: JobRecord, durable: bool = True) -> None:
        """Replace the record (callers hold its lock); each write bumps ``rev``."""
        record.rev += 1
        atomic_write(self.layout.record(record.id), record.to_json(), durable=durable)
        self.summary.append([summary_line(record)])

    def record_ids(self) -> list[str]:
        """Ids of all records (from the directory listing; nothing is read)."""
        return [n[:-5] for n in list_dir(self.layout.jobs) if n.endswith(".json") and not n.startswith(".")]

    def count_records(self) -> int:
        """How many records exist: names ``<id>.json`` in one directory listing, counted in bulk
        (hidden files, such as spares and temporary files, are not records)."""
        names = "\0" + "\0".join(list_dir(self.layout.jobs)) + "\0"
        hidden = re.findall(r"\0\.[^\0]*\.json(?=\0)", names) if "\0." in names else ()
        return names.count(".json\0") - len(hidden)

    def iter_records(self, problems: list[str] | None = None) -> Iterator[JobRecord]:
        """All readable records. One that cannot be read is skipped and described in
        ``problems``; nothing is moved or changed (only :meth:`quarantine_if_corrupt` does)."""
        for job_id in self.record_ids():
            try:
                yield self.read_record(job_id, quick=True)
            except JobNotFound:
                continue  # removed since the listing
            except CorruptRecord as exc:
                if problems is not None:
                    problems.append(f"unreadable record {exc.path}: {exc.reason} (run `dr_exp validate`)")

    def quarantine_if_corrupt(self, exc: CorruptRecord) -> Path | None:
        """Move a record that still fails to parse aside, if it has been left alone for a while
        (a fresh one may be a stale view of another node's write). Returns where it went."""
        try:
            age = self.server_now() - os.stat(exc.path).st_mtime
        except FileNotFoundError:
            return None
        if age < QUARANTINE_AGE:
            return None
        dest = self.quarantine(exc.path, exc.reason)
        name = os.path.basename(exc.path)
        if name.endswith(".json") and is_job_id(name[:-5]):
            try:  # the record's spare goes with it
                os.unlink(self.layout.spare(name[:-5]))
            except FileNotFoundError:
                pass
            self.summary.append([removed_line(name[:-5])])
        return dest

    def quarantine(self, path: str | os.PathLike[str], reason: str) -> Path:
        """Move an unreadable file aside (with its reason) so it never blocks a worker or a listing."""
        path = Path(path)
        self.layout.quarantine_dir.mkdir(parents=True, exist_ok=True)
        dest = self.layout.quarantine_dir / f"{path.parent.name}-{path.name}.{time.time_ns()}"
        try:
            os.rename(path, dest)
        except FileNotFoundError:
            return dest
        atomic_write(f"{dest}.reason", reason + "\n")
        log.warning("quarantined %s -> %s: %s", path, dest, reason)
        return dest

    # -- creating jobs ---------------------------------------------------------------------
    def create_jobs(self, records: list[JobRecord]) -> None:
        """Write a batch of new pending jobs: all of them, durably, or none.

        Records and their (empty) queue markers are staged under hidden names; one filesystem
        sync makes them durable; renames publish the records, then the markers (only a marker
        makes a job claimable), and a second sync makes the names durable. If anything fails,
        what was written is removed again and the error is raised.

        Creating files is the slow step of a big submit (on a busy disk, hundreds of
        microseconds each), and a file system creates files in one directory one at a time, but
        in two directories side by side: so the markers of a big batch are staged by a second
        thread while this one stages the records.
        """
        if not records:
            return
        lay = self.layout
        for rec in records:
            rec.rev = 1
        paths = [lay.record(r.id) for r in records]
        markers = [lay.queued(r.marker, r.gpus) for r in records]
        classes = {rec.gpus for rec in records}
        staged: dict[str, list[str]] = {"records": [], "markers": []}
        published = queued = 0
        try:
            for gpus in classes:
                self.class_dir(gpus)
            payloads = [r.to_json().encode() for r in records]  # before any thread: they contend for the GIL
            self._stage(staged, list(zip(paths, payloads, strict=True)), markers)
            self._index_add(records)
            sync_filesystem(lay.jobs)
            for tmp, path in zip(staged["records"], paths, strict=True):
                os.replace(tmp, path)
                published += 1
            self.summary.append(summary_line(r) for r in records)
            for tmp, marker in zip(staged["markers"], markers, strict=True):
                os.rename(tmp, marker)
                queued += 1
            sync_filesystem(lay.jobs)
            for gpus in classes:
                self._signal_added(gpus)
        except BaseException:
            kept: set[int] = set()
            for i, marker in enumerate(markers[:queued]):
                try:  # withdraw it; a worker that took it already keeps its job
                    os.unlink(marker)
                except OSError:
                    kept.add(i)
            for tmp in staged["markers"][queued:]:
                _discard(tmp)
            for i, tmp in enumerate(staged["records"]):
                if i not in kept:
                    _discard(tmp)
                    if i < published:
                        _discard(paths[i])
            raise

    @staticmethod
    def _stage(staged: dict[str, list[str]], records: list[tuple[str, bytes]], markers: list[str]) -> None:
        """Stage the records and the empty markers (see :func:`write_new_files`) into
        ``staged``. The first records of a big batch are timed: where creating a file is slow
        (a busy disk), the markers are staged by a second thread meanwhile; where it is fast,
        the threads would mostly wait for each other (for Python's GIL), so one does it all."""
        head = records[:PARALLEL_STAGING]
        started = time.perf_counter()
        staged["records"] = write_new_files(head)
        slow = (time.perf_counter() - started) / len(head) > SLOW_CREATE_SECONDS
        if len(records) <= len(head) or not slow:
            staged["records"] += write_new_files(records[len(head):])
            staged["markers"] = write_new_files((m, b"") for m in markers)
            return
        failed: list[BaseException] = []

        def stage_markers() -> None:
            try:
                staged["markers"] = write_new_files((m, b"") for m in markers)
            except BaseException as exc:  # noqa: BLE001 -- re-raised by the caller's thread
                failed.append(exc)

        helper = threading.Thread(target=stage_markers, name="dr_exp-stage-markers", daemon=True)
        helper.start()
        try:
            staged["records"] += write_new_files(records[len(head):])
        finally:
            helper.join()
        if failed:
            raise failed[0]

    # -- dedup index -----------------------------------------------------------------------
    def _index_file(self, config_hash: str) -> str:
        return f"{self._index_root}/{config_hash[:2]}.jsonl"

    @functools.cached_property
    def _index_root(self) -> str:
        return str(self.layout.index_dir)

    def _index_add(self, records: Iterable[JobRecord]) -> None:
        """One appended line per job (``[hash, id]``), grouped per shard file."""
        shards: dict[str, list[str]] = {}
        for rec in records:
            shards.setdefault(self._index_file(rec.config_hash), []).append(
                f'["{rec.config_hash}", "{rec.id}"]\n')  # hex and a uuid: JSON without escaping
        for path, lines in shards.items():
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                data = "".join(lines).encode()
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, f"short write to {path}")
            finally:
                os.close(fd)

    def index_lookup(self, hashes: Iterable[str]) -> dict[str, list[str]]:
        """Job ids submitted with each of ``hashes`` (oldest first)."""
        wanted = set(hashes)
        out: dict[str, list[str]] = {}
        for shard in {self._index_file(h) for h in wanted}:
            try:
                data = read_bytes(shard)
            except FileNotFoundError:
                continue
            for line in data.split(b"\n"):
                try:
                    config_hash, job_id = json.loads(line)
                except (ValueError, TypeError):
                    continue  # a torn last line, or an empty one
                if config_hash in wanted:
                    out.setdefault(config_hash, []).append(job_id)
        return out

    # -- the queue -------------------------------------------------------------------------
    # One directory per resource class (``queue/g<N>/``: jobs needing N GPUs). A queue entry is
    # named ``g<N>/<marker>`` below ``queue/``; marker names sort in claim order.
    def classes(self) -> list[int]:
        """Resource classes that have a queue directory."""
        return sorted(c for c in map(parse_class, list_dir(self.layout.queue)) if c is not None)

    def list_markers(self, max_gpus: int | None = None) -> list[str]:
        """Queue entries (``g<N>/<marker>``) of the classes up to ``max_gpus`` GPUs (all when
        None), in claim order: priority, then submit order, across classes. Anything else in
        ``queue/`` is ignored here and reported by ``validate``."""
        entries = []
        for gpus in self.classes():
            if max_gpus is not None and gpus > max_gpus:
                continue
            entries.extend((n, gpus) for n in list_dir(self.layout.queue_class(gpus))
                           if n[0] != "." and parse_marker(n) is not None)
        entries.sort()
        return [f"g{gpus}/{name}" for name, gpus in entries]

    def added_state(self, max_gpus: int | None = None) -> tuple[int, ...]:
        """A fingerprint of the "job added" signals of the classes a worker serves; it changes
        whenever a job was added to one of them. Each signal is opened, which on NFS revalidates
        its cached attributes, so a change is seen at once."""
        out = []
        for gpus in self.classes():
            if max_gpus is not None and gpus > max_gpus:
                continue
            try:
                fd = os.open(self.layout.added_signal(gpus), os.O_RDONLY)
            except FileNotFoundError:
                out.append(0)
                continue
            try:
                out.append(os.fstat(fd).st_mtime_ns)
            finally:
                os.close(fd)
        return tuple(out)

    def _signal_added(self, gpus: int) -> None:
        path = self.layout.added_signal(gpus)
        try:
            os.utime(path)
        except FileNotFoundError:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))

    def class_dir(self, gpus: int) -> str:
        path = self.layout.queue_class(gpus)
        os.makedirs(path, exist_ok=True)
        return path

    def strays(self) -> list[tuple[str, str]]:
        """Entries of ``queue/`` and ``claimed/`` that are not markers: (path, why)."""
        out = []
        for name in list_dir(self.layout.queue):
            path = f"{self.layout.queue}/{name}"
            if parse_class(name) is None:
                why = "a queue marker outside its class directory" if parse_marker(name) else "not a queue marker name"
                out.append((path, why))
            elif os.path.islink(path) or not os.path.isdir(path):
                out.append((path, "not a queue directory"))
        directories = [self.layout.queue_class(g) for g in self.classes()] + [self.layout.claimed]
        for directory in directories:
            for name in list_dir(directory):
                path = f"{directory}/{name}"
                if name.startswith("."):
                    continue
                if parse_marker(name) is None:
                    out.append((path, "not a queue marker name"))
                elif os.path.islink(path) or not os.path.isfile(path):
                    out.append((path, "not a plain file"))
        return out

    def take(self, entry: str) -> bool:
        """Move a queue entry (``g<N>/<marker>``) to claimed/. Exactly one caller wins.

        Workers list the same queue, so many entries in a worker's batch are taken by others
        before it reaches them. They are looked up first: a failed rename costs more than a
        lookup, as the kernel serialises cross-directory renames per filesystem."""
        src = f"{self.layout.queue}/{entry}"
        if not os.path.lexists(src):
            return False
        try:
            os.rename(src, self.layout.claimed_marker(entry.rpartition("/")[2]))
            return True
        except FileNotFoundError:
            return False

    def release(self, marker: str, gpus: int) -> bool:
        """Put a claimed marker back in its class's queue (its job is still pending)."""
        try:
            os.rename(self.layout.claimed_marker(marker), f"{self.class_dir(gpus)}/{marker}")
        except FileNotFoundError:
            return False
        self._signal_added(gpus)
        return True

    def discard_claimed(self, marker: str) -> None:
        """Drop a claimed marker whose job is no longer pending (or a stray in its place)."""
        path = self.layout.claimed_marker(marker)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            self.quarantine(path, "a directory in place of a queue marker")

    def enqueue(self, record: JobRecord) -> None:
        """Make a pending job claimable (again)."""
        try:
            path = f"{self.class_dir(record.gpus)}/{record.marker}"
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return
        self._signal_added(record.gpus)

    def dequeue(self, record: JobRecord) -> None:
        """Withdraw a pending job's marker, wherever it is."""
        for path in (self.layout.queued(record.marker, record.gpus), self.layout.claimed_marker(record.marker)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def marker_state(self, record: JobRecord) -> str | None:
        """``queue`` or ``claimed`` for where the job's marker is, or None."""
        if os.path.lexists(self.layout.queued(record.marker, record.gpus)):
            return "queue"
        if os.path.lexists(self.layout.claimed_marker(record.marker)):
            return "claimed"
        return None

    def claimed_markers(self) -> list[tuple[Marker, float]]:
        """Markers taken from the queue whose claim has not finished, with their ctime."""
        out = []
        for name in list_dir(self.layout.claimed):
            marker = parse_marker(name)
            if marker is None:
                continue
            try:
                out.append((marker, os.stat(self.layout.claimed_marker(name)).st_ctime))
            except FileNotFoundError:
                continue
        return out

    # -- attempts --------------------------------------------------------------------------
    def begin_attempt(self, marker: str, record: JobRecord, lease_seconds: float) -> Attempt:
        """Start the attempt ``record.attempts`` that ``record`` (already ``running``) describes:
        its lease is created, then the record is written. Callers hold the lock.

        The record is written into the claimed marker (an empty private file) and swapped with
        the pending record, which then stays as the job's spare (``jobs/.<id>.spare``) instead
        of being freed. If anything fails, the job is left pending and its marker queued."""
        number = record.attempts
        lay = self.layout
        lease = lay.lease(record.id, number)
        claimed = lay.claimed_marker(marker)
        record.rev += 1
        data = record.to_json().encode()
        try:
            self._write_lease(lease, record, lease_seconds)
            # No fsync: the write is still atomic (readers on any node see the old or the new
            # record), and if a power loss drops it the job reads as pending with a lease that
            # will expire -- exactly a claimer that died, which recovery re-queues.
            fd = os.open(claimed, os.O_WRONLY)
            try:
                overwrite(fd, data, claimed)
            finally:
                os.close(fd)
            if exchange(claimed, lay.record(record.id)):
                os.rename(claimed, lay.spare(record.id))
            else:
                os.rename(claimed, lay.record(record.id))
        except OSError:
            self._undo_begin(marker, lease, record.gpus)
            raise
        self.summary.append([summary_line(record)])
        return Attempt(record.id, number, record.worker_id or "", lease, lease_seconds, record)

    def _undo_begin(self, marker: str, lease: str, gpus: int) -> None:
        try:
            os.unlink(lease)
        except OSError:
            pass
        self.release(marker, gpus)

    def _write_lease(self, path: str, record: JobRecord, lease_seconds: float) -> None:
        # A lease is a heartbeat, not a durable fact: losing it in a crash only makes the job
        # look expired sooner, so it is written in place without fsync (its mtime is what
        # counts, and this write sets it to now).
        lease = {"job_id": record.id, "attempt": record.attempts, "worker_id": record.worker_id,
                 "host": self.layout.host, "pid": os.getpid(), "lease_seconds": lease_seconds,
                 "created_at": time.time()}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            payload = json.dumps(lease).encode()
            if os.write(fd, payload) != len(payload):
                raise OSError(errno.ENOSPC, f"short write to {path}")
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)

    def end_attempt(self, attempt: Attempt, record: JobRecord) -> None:
        """Record the end of ``attempt`` (``record`` is its new state; callers hold the lock):
        the record is written through the attempt's lease, which thereby disappears, and a job
        that is pending again goes back in the queue."""
        record.rev += 1
        try:
            via_lease = replace_with(attempt.lease_path, self.layout.record(record.id), record.to_json())
        except IsADirectoryError:
            self.quarantine(attempt.lease_path, "a directory in place of a lease")
            via_lease = False
        if not via_lease:
            atomic_write(self.layout.record(record.id), record.to_json())
        self.summary.append([summary_line(record)])
        if record.status == "pending":
            self.enqueue(record)

    def refresh_lease(self, attempt: Attempt) -> bool:
        """Heartbeat: set the lease's mtime to now. False if it is gone (the attempt was taken
        away); a lease that replaced it has another name and is never touched."""
        try:
            os.utime(attempt.lease_path)
            return True
        except FileNotFoundError:
            return False

    def lease_alive(self, attempt: Attempt) -> bool:
        return os.path.lexists(attempt.lease_path)

    def remove_lease(self, job_id: str, number: int) -> None:
        path = self.layout.lease(job_id, number)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            self.quarantine(path, "a directory in place of a lease")

    def leases(self, problems: list[str] | None = None) -> list[LeaseInfo]:
        """Every lease on disk, judged on fresh attributes (each one is opened, which on NFS
        revalidates cached attributes). Entries that are not leases are reported, not raised."""
        out = []
        for name in list_dir(self.layout.leases):
            if name.startswith("."):
                continue
            parsed = parse_lease_name(name)
            path = f"{self.layout.leases}/{name}"
            if parsed is None:
                if problems is not None:
                    problems.append(f"{path}: not a lease file name")
                continue
            info = self.read_lease(*parsed)
            if info is None:
                continue
            if info.content is None and problems is not None:
                problems.append(f"{path}: unreadable or malformed lease (judged by its mtime only)")
            out.append(info)
        return out

    def read_lease(self, job_id: str, number: int) -> LeaseInfo | None:
        path = self.layout.lease(job_id, number)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            mtime = os.fstat(fd).st_mtime
            try:
                raw = os.read(fd, 65536)
                content = json.loads(raw)
            except (OSError, ValueError):
                content = None
        finally:
            os.close(fd)
        if not isinstance(content, dict) or not _lease_shape_ok(content):
            content = None
        return LeaseInfo(job_id, number, path, mtime, content)

    def server_now(self) -> float:
        """The file server's idea of now: the mtime of a file we just wrote.

        Lease expiry compares file mtimes with this, never with this node's wall clock, so
        nodes whose clocks disagree still agree on which leases expired. One probe file per host,
        rewritten in place."""
        probe = self.layout.clock_probe()
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, b"x", 0)
            return os.fstat(fd).st_mtime
        finally:
            os.close(fd)


def _discard(path: str) -> None:
    """Remove what a failed batch wrote, ignoring what cannot be removed (the original error
    is the one to report)."""
    try:
        os.unlink(path)
    except OSError:
        pass


def storage_error(exc: OSError, doing: str) -> StorageError:
    """One line for an I/O error a user can act on (full disk, quota, read-only, I/O error)."""
    where = exc.filename or ""
    if exc.errno == errno.ENOSPC:
        hint = "the disk is full; free space there (or use another --base-path) and try again"
    elif exc.errno == errno.EDQUOT:
        hint = "your disk quota is exhausted; free space or files there (`dr_exp du` shows what uses it)"
    elif exc.errno == errno.EROFS:
        hint = "the filesystem is read-only; use a writable --base-path"
    elif exc.errno == errno.EACCES:
        hint = "permission denied; use a writable --base-path"
    else:
        hint = f"{exc.strerror or exc}"
    return StorageError(f"{doing}: {hint}" + (f" ({where})" if where else ""))


__all__ = ["JOB_ID_RE", "NO_SPACE", "ExperimentStore", "LeaseInfo", "storage_error"]
