"""A compact summary of every job, kept up to date as jobs change, so that `status`, `job list`
and `results` do not read every record.

- **Logs.** Every record write also appends one summary line (the fields listings need) to a
  log file of the writing process (``summary/log-<host>-<pid>-<token>.jsonl``): per-writer files,
  because appends from several NFS clients to one file are not atomic. A line is written whole
  by one ``write``; readers skip a torn last line.
- **Snapshots.** Now and then a writer folds the logs into ``summary/snapshot.jsonl`` (the latest
  line of every job) plus ``summary/snapshot.json`` (how far into each log it read), both written
  whole. Logs folded in and idle for an hour are removed.
- **Readers** stream the snapshot and let the logs' tails override it, per job by the record's
  ``rev`` (bumped by every write under the record's lock, so the highest rev is the newest). A
  reader may lag a writer by the time its line takes to become visible (seconds on NFS); it
  never loses or invents a job. Memory stays bounded by the tails, not by the number of jobs.

The summary is never trusted over the records: `validate` compares them and
`validate --rebuild-index` rebuilds it from the records alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from dr_exp.fileio import atomic_write, list_dir, read_bytes
from dr_exp.job import JobRecord
from dr_exp.layout import Layout

SNAPSHOT = "snapshot.jsonl"
META = "snapshot.json"
LOG_PREFIX = "log-"
REMOVED = "removed"
_REMOVED = REMOVED.encode()
# Fold the logs into a new snapshot once their unfolded tails hold this many bytes.
COMPACT_BYTES = 8 * 1024 * 1024
IDLE_LOG_SECONDS = 3600.0
_ID = slice(7, 43)  # every line starts {"id":"<36 characters>","rev":


class SummaryDamaged(Exception):
    """The summary cannot be trusted (a file it relies on is gone or cut short): read the records."""


def params_of(rec: JobRecord) -> dict[str, str]:
    """The parameters a user chose for this run: its overrides (sweep points included)."""
    params: dict[str, str] = {}
    for item in rec.overrides:
        key, sep, value = item.partition("=")
        if sep:
            params[key.lstrip("+~")] = value
    params.update(rec.sweep_params)
    return params


_line_json = json.JSONEncoder(separators=(",", ":"), default=str).encode


def summary_line(rec: JobRecord) -> bytes:
    """One job as listings see it, as a line that starts with its id, rev and status."""
    result = rec.result or {}
    rest = {"priority": rec.priority, "seq": rec.seq, "tags": rec.tags, "sweep": rec.sweep_id,
            "params": params_of(rec), "gpus": rec.gpus, "created": rec.created_at, "updated": rec.updated_at,
            "started": rec.started_at, "finished": rec.finished_at, "attempts": rec.attempts,
            "max_attempts": rec.max_attempts, "worker": rec.worker_id, "host": rec.host,
            "metrics": result.get("metrics") if isinstance(result.get("metrics"), dict) else None,
            "flags": result.get("flags") or None,
            "error": f"{rec.error.get('type')}: {rec.error.get('message')}" if rec.error else None,
            "resume_from": rec.resume_from, "sync": (rec.sync or {}).get("state")}
    head = f'{{"id":"{rec.id}","rev":{rec.rev},"status":"{rec.status}",'
    return (head + _line_json(rest)[1:] + "\n").encode()


def removed_line(job_id: str) -> bytes:
    """A job that is gone (quarantined, deleted): it outranks every rev a record can reach."""
    return f'{{"id":"{job_id}","rev":{2 ** 62},"status":"{REMOVED}"}}\n'.encode()


def _rev(line: bytes) -> int:
    end = line.index(b",", 51)
    return int(line[51:end])


def status_of(line: bytes) -> str:
    return raw_status(line).decode()


def raw_status(line: bytes) -> bytes:
    """The status of a summary line, without parsing the line."""
    start = line.find(b'"status":"', 51) + 10
    return line[start:line.find(b'"', start)]


class SummaryWriter:
    """Appends summary lines for one process (its own log file, created on first use)."""

    def __init__(self, layout: Layout) -> None:
        self.dir = layout.root / "summary"
        self._path: str | None = None

    def append(self, lines: Iterable[bytes]) -> None:
        data = b"".join(lines)
        if not data:
            return
        for _ in range(3):
            if self._path is None:
                self.dir.mkdir(exist_ok=True)
                name = f"{LOG_PREFIX}{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
                self._path = str(self.dir / name)
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL
            else:
                # Never re-created under the same name: a log that was folded in and removed
                # while this process was idle is continued in a new one.
                flags = os.O_WRONLY | os.O_APPEND
            try:
                fd = os.open(self._path, flags, 0o644)
            except FileNotFoundError:
                self._path = None
                continue
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            return


class Summary:
    """Reading (and folding) the summary of one experiment."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.dir = layout.root / "summary"
        self.jobs: int | None = None  # set by a complete pass of lines()

    def exists(self) -> bool:
        return self.dir.is_dir()

    def _meta(self) -> dict[str, Any]:
        try:
            meta = json.loads(read_bytes(self.dir / META))
        except (FileNotFoundError, ValueError):
            return {"offsets": {}}
        return meta if isinstance(meta, dict) and isinstance(meta.get("offsets"), dict) else {"offsets": {}}

    def _meta_bytes(self) -> bytes | None:
        try:
            return read_bytes(self.dir / META)
        except FileNotFoundError:
            return None

    def _logs(self) -> list[str]:
        return sorted(n for n in list_dir(self.dir) if n.startswith(LOG_PREFIX) and n.endswith(".jsonl"))

    def _tails(self, offsets: dict[str, int]) -> tuple[dict[str, bytes], dict[str, int]]:
        """The newest line per job in the logs past ``offsets``, and how far each log was read.
        :class:`SummaryDamaged` if a log the snapshot relies on is gone or was cut short."""
        newest: dict[str, bytes] = {}
        ends: dict[str, int] = {}
        for name in sorted(set(self._logs()) | set(offsets)):
            try:
                data = read_bytes(self.dir / name)
            except FileNotFoundError:
                if name in offsets:
                    raise SummaryDamaged(f"log {name} disappeared") from None
                continue
            start = offsets.get(name, 0)
            if start > len(data):
                raise SummaryDamaged(f"log {name} was cut short")
            end = data.rfind(b"\n") + 1  # a torn last line is a write in progress
            ends[name] = max(end, start)
            for line in data[start:end].splitlines(keepends=True):
                if len(line) < 52 or not line.startswith(b'{"id":"'):
                    continue
                job_id = line[_ID].decode()
                old = newest.get(job_id)
                if old is None or _rev(line) >= _rev(old):
                    newest[job_id] = line
        return newest, ends

    def blocks(self) -> Iterator[bytes]:
        """The newest summary line of every job that exists, streamed in blocks of whole lines
        (a removed job has no line); once exhausted, :attr:`jobs` says how many jobs it saw in
        all. Raises :class:`SummaryDamaged` before yielding anything if the summary cannot be
        trusted. Callers that work on whole blocks (substring and regex searches) spend Python
        work only on the lines they pick."""
        has_meta = (self.dir / META).exists()
        meta = self._meta()
        tails, _ = self._tails(meta["offsets"])
        jobs = 0
        try:
            fh = open(self.dir / SNAPSHOT, "rb")  # noqa: SIM115 - streamed below
        except FileNotFoundError:
            if has_meta:
                raise SummaryDamaged("its snapshot is missing") from None
            fh = None
        with fh or contextlib.nullcontext():
            for block in _blocks(fh) if fh is not None else ():
                if tails:
                    block = _newer_from(block, tails)
                jobs += block.count(b"\n")  # every line of the snapshot is a job's
                yield block
        rest = b"".join(line for line in tails.values() if raw_status(line) != _REMOVED)
        jobs += rest.count(b"\n")
        if rest:
            yield rest
        self.jobs = jobs

    def lines(self, statuses: Collection[bytes] | None = None) -> Iterator[bytes]:
        """:meth:`blocks` line by line (only the lines of ``statuses`` when given: those are
        found by substring searches over each block, so only the lines yielded are touched)."""
        wanted = set(statuses) if statuses is not None else None
        for block in self.blocks():
            yield from block_lines(block, wanted)

    def rows(self) -> Iterator[dict[str, Any]]:
        for line in self.lines():
            yield json.loads(line)


    def damage(self) -> str | None:
        """Why the summary cannot be trusted (cheap checks: no reading of lines), or None: it was
        never folded, its snapshot is missing, or a log it relies on is gone or cut short."""
        meta_path = self.dir / META
        if not meta_path.exists():
            return "it has no snapshot yet"
        if not (self.dir / SNAPSHOT).exists():
            return "its snapshot is missing"
        for name, offset in self._meta()["offsets"].items():
            try:
                if os.stat(self.dir / name).st_size < offset:
                    return f"log {name} was cut short"
            except FileNotFoundError:
                return f"log {name} disappeared"
        return None

    def unfolded_bytes(self) -> int:
        offsets = self._meta()["offsets"]
        total = 0
        for name in self._logs():
            try:
                total += max(0, os.stat(self.dir / name).st_size - offsets.get(name, 0))
            except FileNotFoundError:
                continue
        return total

    def compact(self, force: bool = False) -> bool:
        """Fold the logs into a new snapshot if their tails are big enough (or ``force``), and
        remove logs that were folded in and have been idle for an hour. True if it folded."""
        if not force and self.unfolded_bytes() < COMPACT_BYTES:
            return False
        before = self._meta_bytes()
        meta = self._meta()
        _, ends = self._tails(meta["offsets"])
        # `lines()` re-reads the tails; lines appended in between are folded in too, and only
        # the offsets read first are recorded, so later readers at worst read them again.
        tmp = self.dir / f".{SNAPSHOT}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "wb") as out:
                for line in self.lines():
                    out.write(line)
                out.flush()
                os.fsync(out.fileno())
            if self._meta_bytes() != before:
                # Another process folded or rebuilt meanwhile (or the summary was removed):
                # what was read may be stale, so nothing is written.
                tmp.unlink(missing_ok=True)
                return False
            os.replace(tmp, self.dir / SNAPSHOT)
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            return False
        # Logs folded in completely and idle for an hour go: first out of the offsets (a log the
        # offsets name and that is missing means damage), then from the disk.
        now = time.time()
        idle = []
        for name, end in ends.items():
            try:
                st = os.stat(self.dir / name)
            except FileNotFoundError:
                continue
            if st.st_size <= end and now - st.st_mtime > IDLE_LOG_SECONDS:
                idle.append(name)
        kept = {name: end for name, end in ends.items() if name not in idle}
        atomic_write(self.dir / META, json.dumps({"offsets": kept, "written_at": time.time(),
                                                  "token": uuid.uuid4().hex}))
        for name in idle:
            (self.dir / name).unlink(missing_ok=True)
        return True

    def start_empty(self) -> None:
        """The summary of a new experiment: an empty snapshot that relies on no log, so that
        readers and folds take every job from the logs and nothing is ever rebuilt from the
        records. Never replaces a snapshot or meta file that exists."""
        self.dir.mkdir(exist_ok=True)
        try:
            os.close(os.open(self.dir / SNAPSHOT, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return
        tmp = self.dir / f".{META}.{uuid.uuid4().hex[:8]}.tmp"
        atomic_write(tmp, json.dumps({"offsets": {}, "written_at": time.time(), "token": uuid.uuid4().hex}))
        try:
            os.link(tmp, self.dir / META)  # never over a meta file another process wrote
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)

    def rebuild(self, records: Iterable[JobRecord]) -> int:
        """A new snapshot from the records alone; every log is folded (read to its end) first."""
        self.dir.mkdir(exist_ok=True)
        _, ends = self._tails({})
        tmp = self.dir / f".{SNAPSHOT}.{uuid.uuid4().hex[:8]}.tmp"
        n = 0
        with open(tmp, "wb") as out:
            for rec in records:
                out.write(summary_line(rec))
                n += 1
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.dir / SNAPSHOT)
        atomic_write(self.dir / META, json.dumps({"offsets": ends, "written_at": time.time(), "rebuilt": True,
                                                  "token": uuid.uuid4().hex}))
        return n


def snapshot_path(layout: Layout) -> Path:
    return layout.root / "summary" / SNAPSHOT


_BLOCK = 1 << 22


def _blocks(fh: BinaryIO) -> Iterator[bytes]:
    """A file in blocks of whole lines (a torn last line, a write in progress, is left out).
    Each block is read once and copied at most once: a block's cut-off line is read again
    at the start of the next block."""
    while chunk := fh.read(_BLOCK):
        cut = chunk.rfind(b"\n") + 1
        if cut == 0:
            if len(chunk) < _BLOCK:
                return
            # One line longer than a block: read whole lines until a newline comes.
            while (more := fh.read(_BLOCK)) and b"\n" not in more:
                chunk += more
            chunk += more
            cut = chunk.rfind(b"\n") + 1
            if cut == 0:
                return
        if cut < len(chunk):
            fh.seek(cut - len(chunk), os.SEEK_CUR)
            chunk = chunk[:cut]
        yield chunk


def _newer_from(block: bytes, tails: dict[str, bytes]) -> bytes:
    """``block`` with each line replaced by its job's line in ``tails`` where that one is newer
    (and left out where that one says the job was removed); the tails of jobs the block holds
    are taken out of ``tails``."""
    lines = block.splitlines(keepends=True)
    ids = {job_id.encode() for job_id in tails}
    hits = [i for i, line in enumerate(lines) if line[_ID] in ids and line.startswith(b'{"id":"')]
    changed = False
    for i in hits:
        line = lines[i]
        newer = tails.pop(line[_ID].decode(), None)
        if newer is not None and _rev(newer) > _rev(line):
            lines[i] = b"" if raw_status(newer) == _REMOVED else newer
            changed = True
    return b"".join(lines) if changed else block


# A line's status, and for a pending job the GPUs it needs (the line's own fields: the pattern
# is anchored where a line starts, and no JSON string value can hold '{"id":"' unescaped).
_HEAD = re.compile(rb'\{"id":"[^"\n]{36}","rev":\d+,"status":"(?:pending",[^\n]*?"gpus":(\d+)|([^"\n]*)")')


def count_statuses(block: bytes, counts: dict[bytes, int], pending_by_gpus: dict[int, int]) -> None:
    """Add the jobs of a block of summary lines to ``counts`` (per raw status) and its pending
    jobs to ``pending_by_gpus`` (per GPUs needed), in one regex pass over the whole block."""
    for (gpus, status), n in Counter(_HEAD.findall(block)).items():
        if gpus:
            counts[b"pending"] = counts.get(b"pending", 0) + n
            pending_by_gpus[int(gpus)] = pending_by_gpus.get(int(gpus), 0) + n
        else:
            counts[status] = counts.get(status, 0) + n


def block_lines(block: bytes, wanted: set[bytes] | None = None) -> Iterator[bytes]:
    """The job lines of a block (of a status in ``wanted``, when given), in order."""
    if wanted is None:
        for line in block.splitlines(keepends=True):
            if line.startswith(b'{"id":"'):
                yield line
        return
    found: dict[int, bytes] = {}
    for status in wanted:
        needle = b'"status":"' + status + b'"'
        pos = block.find(needle)
        while pos >= 0:
            start = block.rfind(b"\n", 0, pos) + 1
            end = block.find(b"\n", pos) + 1
            line = block[start:end]
            # The substring may sit in a parameter named "status": the line's own field decides.
            if line.startswith(b'{"id":"') and raw_status(line) == status:
                found[start] = line
            pos = block.find(needle, end)
    for start in sorted(found) if len(wanted) > 1 else found:
        yield found[start]
