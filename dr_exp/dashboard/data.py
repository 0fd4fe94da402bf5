"""The one read layer of the views (dashboard, report, plots, progress) over experiment files.

Views read what workers write -- records, ``metrics.jsonl``, ``train.log`` -- never a copy, and
never change anything (an unreadable record is reported, not quarantined). Everything they read
comes through here, so this module alone would change if the views moved to a summary index.

Parsed files are cached per path and reused while the file's (inode, mtime, size) is unchanged:
re-reading an unchanged experiment costs one ``stat`` per record. Append-only JSONL files are read
incrementally: a file that only grew is read from where the last read stopped, and a torn last
line is left for the next read.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dr_exp.api import Experiment
from dr_exp.errors import StorageError, ViewError
from dr_exp.fileio import parse_jsonl, read_bytes
from dr_exp.job import JobRecord
from dr_exp.layout import Layout, is_job_id, validate_name
from dr_exp.rundir import RunDir

Stamp = tuple[int, int, int]  # (inode, mtime_ns, size)

# Keys of a metrics row that are coordinates, not metrics.
ROW_KEYS = frozenset({"time", "epoch", "step", "phase", "stage"})
TAIL_BYTES = 64 * 1024
NOTHING: dict[str, Any] = {}  # what latest() returns for a run without metrics; never mutated


def _stamp(path: str | os.PathLike[str]) -> Stamp | None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class JsonlLog:
    """The rows of one append-only JSONL file, kept up to date by reading only what was added."""

    __slots__ = ("ino", "offset", "problems", "rows", "version")

    def __init__(self) -> None:
        self.ino = -1
        self.offset = 0
        self.rows: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.version = 0  # changes whenever ``rows`` do

    def refresh(self, path: Path) -> None:
        stamp = _stamp(path)
        if stamp is None:
            if self.rows or self.offset:
                self.__init__()  # type: ignore[misc]  # the file went away: start afresh
            return
        ino, _, size = stamp
        if ino != self.ino or size < self.offset:
            # Replaced (a sync pull, a retried run) or cut short: read it again from the start.
            self.ino, self.offset, self.rows, self.problems = ino, 0, [], []
            self.version += 1
        if size == self.offset:
            return
        try:
            with open(path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read(size - self.offset)
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # a last line without its newline is still being written
        if end == 0:
            return
        self.rows.extend(parse_jsonl(data[:end], str(path), self.problems))
        self.offset += end
        self.version += 1


@dataclass
class Scan:
    """The records of an experiment at one moment, in claim order, with a signature that changes
    whenever any record does."""

    records: list[JobRecord]
    signature: int
    problems: list[str] = field(default_factory=list)


class ExperimentReader:
    """Cached, read-only access to one experiment directory. Safe to share between threads."""

    def __init__(self, base_path: str | os.PathLike[str], name: str) -> None:
        try:
            self.name = validate_name(name)
        except StorageError as exc:
            raise ViewError(str(exc)) from None
        self.exp = Experiment(base_path, name)
        self.layout = Layout(base_path, name)
        self.root = self.layout.root
        self._lock = threading.RLock()
        self._records: dict[str, tuple[Stamp, JobRecord | None, tuple[int, int, str]]] = {}
        self._bad: dict[str, str] = {}
        self._scan: Scan | None = None
        self._scanned_at = 0.0
        self._logs: dict[tuple[str, str], JsonlLog] = {}
        self._tails: dict[str, tuple[Stamp, dict[str, Any]]] = {}

    def exists(self) -> bool:
        return self.layout.jobs_dir.is_dir()

    # -- records -------------------------------------------------------------------------------
    def scan(self, max_age: float = 0.0) -> Scan:
        """Every readable record, re-reading only the files that changed since the last scan.
        With ``max_age``, a scan finished less than that many seconds ago is good enough (several
        views of one request, or several browsers polling, then share one pass over the files)."""
        with self._lock:
            if max_age and self._scan is not None and time.monotonic() - self._scanned_at < max_age:
                return self._scan
        jobs = str(self.layout.jobs_dir)
        try:
            names = os.listdir(jobs)
        except FileNotFoundError:
            names = []
        with self._lock:
            cache = self._records
            fresh: dict[str, tuple[Stamp, JobRecord | None, tuple[int, int, str]]] = {}
            problems: list[str] = []
            signature = len(names)
            stat = os.stat
            for name in names:
                if name[0] == "." or not name.endswith(".json"):
                    continue  # spares and temp files
                path = f"{jobs}/{name}"
                try:
                    st = stat(path)
                except FileNotFoundError:
                    continue  # removed since the listing
                stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
                signature += hash(stamp)  # a sum: the order of the listing does not matter
                hit = cache.get(name)
                if hit is None or hit[0] != stamp:
                    rec = self._read_record(path, name)
                    hit = (stamp, rec, (-rec.priority, rec.seq, name) if rec is not None else (0, 0, name))
                fresh[name] = hit
                if hit[1] is None:
                    problems.append(self._bad.get(name, f"{path}: unreadable record"))
            self._records = fresh
            self._scanned_at = time.monotonic()
            signature &= 0xFFFFFFFFFFFFFFFF
            if self._scan is not None and self._scan.signature == signature:
                return self._scan
            # Claim order (priority, then submission), sorted on keys kept with each record.
            records = [rec for _, rec in sorted((order, rec) for _, rec, order in fresh.values() if rec is not None)]
            self._scan = Scan(records, signature, problems)
            if len(self._logs) + len(self._tails) > 4 * len(records) + 100:  # forget removed jobs
                ids = {rec.id for rec in records}
                self._logs = {k: v for k, v in self._logs.items() if k[0] in ids}
                self._tails = {k: v for k, v in self._tails.items() if k in ids}
            return self._scan

    def _read_record(self, path: str, name: str) -> JobRecord | None:
        try:
            return JobRecord.from_dict(json.loads(read_bytes(path)))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            self._bad[name] = f"{path}: unreadable record ({exc}); `dr_exp validate` moves it aside"
            return None

    def record(self, job_id: str) -> JobRecord:
        """The current record of one job, by its full id."""
        if not is_job_id(job_id):
            raise ViewError(f"invalid job id {job_id!r}: give the full id (a UUID)")
        name = f"{job_id}.json"
        path = f"{self.layout.jobs_dir}/{name}"
        stamp = _stamp(path)
        with self._lock:
            hit = self._records.get(name)
            if stamp is not None and (hit is None or hit[0] != stamp):
                rec = self._read_record(path, name)
                hit = (stamp, rec, (-rec.priority, rec.seq, name) if rec is not None else (0, 0, name))
                self._records[name] = hit
        if stamp is None or hit is None or hit[1] is None:
            raise ViewError(f"no job {job_id} in experiment {self.name}")
        return hit[1]

    def run_dir(self, rec: JobRecord) -> RunDir:
        return self.exp.run_dir(rec)

    # -- run directory -------------------------------------------------------------------------
    def _log(self, rec: JobRecord, kind: str) -> JsonlLog:
        rd = self.run_dir(rec)
        path = rd.metrics if kind == "metrics" else rd.events
        if not path.exists() and rd.packed.exists():  # a finished run packed by `dr_exp pack`
            log = JsonlLog()
            try:
                log.rows = parse_jsonl(rd.read(path), str(path), log.problems)
            except FileNotFoundError:
                pass
            return log
        with self._lock:
            log = self._logs.get((rec.id, kind))
            if log is None:
                log = self._logs[(rec.id, kind)] = JsonlLog()
            log.refresh(path)
            return log

    def metrics(self, rec: JobRecord) -> JsonlLog:
        """All rows of the job's ``metrics.jsonl`` (empty if it has none yet)."""
        return self._log(rec, "metrics")

    def events(self, rec: JobRecord, limit: int = 100) -> list[dict[str, Any]]:
        return self._log(rec, "events").rows[-limit:]

    def latest(self, rec: JobRecord) -> dict[str, Any]:
        """The last per-epoch metric values of a run, read from the end of its metrics file
        alone (for the table's rows of runs that have no result yet)."""
        path = self.run_dir(rec).metrics
        stamp = _stamp(path)
        if stamp is None:
            return NOTHING
        with self._lock:
            hit = self._tails.get(rec.id)
            if hit is not None and hit[0] == stamp:
                return hit[1]
        try:
            with open(path, "rb") as fh:
                fh.seek(max(0, stamp[2] - TAIL_BYTES))
                data = fh.read(TAIL_BYTES)
        except FileNotFoundError:
            return NOTHING
        if stamp[2] > TAIL_BYTES:
            data = data[data.find(b"\n") + 1:]  # the first line may be cut
        rows = parse_jsonl(data[: data.rfind(b"\n") + 1], str(path), [])
        out = NOTHING
        for row in reversed(rows):
            if row.get("phase", "epoch") == "epoch":
                out = {k: v for k, v in row.items() if k not in ROW_KEYS and isinstance(v, (int, float))}
                out["epoch"] = row.get("epoch")
                break
        with self._lock:
            self._tails[rec.id] = (stamp, out)
        return out

    def log_chunk(self, rec: JobRecord, offset: int | None = None, limit: int = TAIL_BYTES) -> dict[str, Any]:
        """``train.log`` from byte ``offset`` on (or its last ``limit`` bytes when ``offset`` is None,
        beyond the end, or further back than ``limit``), and the offset to continue from."""
        path = self.run_dir(rec).train_log
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                skipped = offset is None or offset > size or size - offset > limit
                start = max(0, size - limit) if skipped else offset
                fh.seek(start)
                data = fh.read(size - start)
        except (FileNotFoundError, IsADirectoryError):
            try:  # a packed run: its whole log is in the archive
                data = self.run_dir(rec).read(path)[-limit:]
            except FileNotFoundError:
                return {"text": "", "offset": 0, "exists": False, "cut": False}
            return {"text": data.decode(errors="replace"), "offset": 0, "exists": True, "cut": False}
        size = start + len(data)
        if skipped and start:
            data = data[data.find(b"\n") + 1:]  # begin at a whole line
        return {"text": data.decode(errors="replace"), "offset": size, "exists": True, "cut": bool(skipped and start)}

    def error_text(self, rec: JobRecord, limit: int = TAIL_BYTES) -> str:
        """The job's ``error.txt`` (type, message, traceback), its end if it is long."""
        try:
            data = self.run_dir(rec).read(self.run_dir(rec).error)
        except (FileNotFoundError, IsADirectoryError):
            return ""
        return data[-limit:].decode(errors="replace")

    def checkpoints(self, rec: JobRecord, limit: int = 200) -> list[dict[str, Any]]:
        """Checkpoint files of the run (stages keep their own folders), newest first."""
        root = self.run_dir(rec).checkpoints
        out = []
        for dirpath, _, files in os.walk(root):
            for name in files:
                if name.startswith("."):
                    continue
                path = Path(dirpath) / name
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                out.append({"path": str(path.relative_to(root)), "size": st.st_size, "mtime": st.st_mtime})
        out.sort(key=lambda c: -c["mtime"])
        return out[:limit]


class Reader:
    """The experiments under one base path (subdirectories that have a ``jobs/`` directory)."""

    def __init__(self, base_path: str | os.PathLike[str]) -> None:
        self.base_path = Path(base_path).expanduser().absolute()
        self._experiments: dict[str, ExperimentReader] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        try:
            entries = sorted(os.listdir(self.base_path))
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for name in entries:
            try:
                validate_name(name)
            except StorageError:
                continue
            if (self.base_path / name / "jobs").is_dir():
                out.append(name)
        return out

    def experiment(self, name: str) -> ExperimentReader:
        with self._lock:
            reader = self._experiments.get(name)
            if reader is None:
                reader = ExperimentReader(self.base_path, name)
                if not reader.exists():
                    known = ", ".join(self.names()) or "none yet"
                    raise ViewError(f"no experiment {name!r} under {self.base_path} (experiments: {known}); "
                                    "check --base-path/--experiment")
                self._experiments[name] = reader
            return reader
