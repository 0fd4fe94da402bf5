"""Generic file I/O with the guarantees the job database relies on.

- Whole-file writes: a temp file in the same directory, flush (+ fsync), ``os.replace``. A
  reader sees the old file or the new one, never half of one.
- Batches of whole-file writes made durable with one filesystem sync instead of one per file.
- Append-only JSONL: one JSON object per line, each appended by a single ``write`` on an
  ``O_APPEND`` descriptor; readers skip a torn last line (no newline yet) but never silently
  skip a damaged line in the middle.
- The in-place tricks that keep hot paths from creating or freeing files: :func:`overwrite`,
  :func:`replace_with` and :func:`exchange`.

Nothing here knows about jobs; :mod:`dr_exp.store` builds the job database from these.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import sys
import tempfile
from collections.abc import Iterable
from typing import Any

from dr_exp.errors import CorruptFile

PathLike = str | os.PathLike[str]


def atomic_write(path: PathLike, data: str | bytes, durable: bool = True) -> None:
    """Write ``path`` whole or not at all: temp file in the same directory, fsync, rename."""
    path = os.fspath(path)
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def write_new_files(items: Iterable[tuple[str, bytes]]) -> list[str]:
    """Stage a batch of whole files: each is written to a temp file next to its final path (not
    yet visible under that name). Returns the temp paths in order; nothing is left behind if any
    write fails. Make them durable with :func:`sync_filesystem`, then :func:`publish` them."""
    temps: list[str] = []
    try:
        for path, data in items:
            directory, name = os.path.split(path)
            tmp = os.path.join(directory, f".{name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            temps.append(tmp)
            try:
                if data and os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, f"short write to {tmp}")
            finally:
                os.close(fd)
    except BaseException:
        for tmp in temps:
            _unlink_quietly(tmp)
        raise
    return temps


def publish(temps: list[str], paths: list[str]) -> None:
    """Rename staged temp files to their final names (each rename is atomic)."""
    for tmp, path in zip(temps, paths, strict=True):
        os.replace(tmp, path)


_syncfs: Any = None  # resolved on first use; False where the C library lacks it


def sync_filesystem(*directories: PathLike) -> None:
    """Make everything written so far to the filesystems of ``directories`` durable, with one
    ``syncfs`` per filesystem (Linux) instead of an fsync per file; elsewhere fsync each
    directory and fall back to ``os.sync``."""
    global _syncfs
    if _syncfs is None:
        _syncfs = False
        if sys.platform.startswith("linux"):
            try:
                fn = ctypes.CDLL(None, use_errno=True).syncfs
                fn.argtypes = [ctypes.c_int]
                fn.restype = ctypes.c_int
                _syncfs = fn
            except (OSError, AttributeError):
                pass
    seen: set[int] = set()
    for directory in directories:
        fd = os.open(directory, os.O_RDONLY)
        try:
            dev = os.fstat(fd).st_dev
            if dev in seen:
                continue
            seen.add(dev)
            if _syncfs:
                if _syncfs(fd) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err), os.fspath(directory))
            else:
                os.fsync(fd)
                os.sync()
        finally:
            os.close(fd)


def fsync_dir(directory: PathLike) -> None:
    """Make renames and creates in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_with(spare: PathLike, path: PathLike, data: str | bytes, durable: bool = True,
                 keep_old: bool = False) -> bool:
    """Like :func:`atomic_write`, but uses an existing private file ``spare`` as the temp file
    (overwritten in place, then renamed over ``path``). Returns False if ``spare`` does not
    exist, or, with ``keep_old``, if it is not empty.

    Creating a file and freeing a file's blocks are the slowest steps of a record update on many
    disks (on a disk mounted with ``discard`` every freed block is trimmed); renaming is cheap. So
    the spare is overwritten in place (:func:`overwrite`). Nobody may depend on reading the spare
    while it is rewritten: it is private, or a lease, whose readers treat unreadable content as
    none.

    ``keep_old`` swaps the two names instead of renaming (:func:`exchange`), so the old ``path``
    is kept at ``spare`` rather than freed. Such a file has been public (a reader may still hold
    it open), so it is never written again: ``keep_old`` only uses an empty spare.
    """
    try:
        fd = os.open(spare, os.O_WRONLY)
    except FileNotFoundError:
        return False
    try:
        if not overwrite(fd, data.encode() if isinstance(data, str) else data, spare, empty_only=keep_old):
            return False
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    if not (keep_old and exchange(spare, path)):
        os.replace(spare, path)
    return True


def overwrite(fd: int, payload: bytes, path: PathLike, empty_only: bool = False) -> bool:
    """Make an open file hold exactly ``payload``, keeping its blocks: write from offset 0 and
    cut any longer old content. Not O_TRUNC: truncating frees the blocks, and on ext4 truncating
    to zero also makes close() start writeback. With ``empty_only``, does nothing and returns
    False unless the file is empty."""
    size = os.fstat(fd).st_size
    if empty_only and size:
        return False
    if os.pwrite(fd, payload, 0) != len(payload):
        raise OSError(errno.ENOSPC, f"short write to {os.fspath(path)}")
    if size > len(payload):
        os.ftruncate(fd, len(payload))
    return True


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2: Any = None  # resolved on first use; False where the C library lacks it


def exchange(a: PathLike, b: PathLike) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``). Returns False
    where the system or the filesystem cannot (e.g. NFS, or not Linux); the caller renames
    instead. Other errors (a missing path) raise as :func:`os.rename` would."""
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        if sys.platform.startswith("linux"):
            try:
                fn = ctypes.CDLL(None, use_errno=True).renameat2
            except (OSError, AttributeError):
                pass
            else:
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                fn.restype = ctypes.c_int
                _renameat2 = fn
    if not _renameat2:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


def read_bytes(path: PathLike) -> bytes:
    """A whole small file, read with bare system calls (no buffered file object). Each call
    opens the file afresh, which on NFS also revalidates its cached attributes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            chunks.append(chunk)
            if len(chunk) < 65536:  # a short read of a regular file is its end
                return b"".join(chunks)
    finally:
        os.close(fd)


def append_line(path: PathLike, obj: dict[str, Any]) -> None:
    """Append one JSON object as one whole line (a single write on an O_APPEND descriptor)."""
    line = (json.dumps(obj, default=str, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def parse_jsonl(data: bytes, where: str, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """The objects of a JSONL byte string. A last line without its newline is a write in
    progress (or a writer that crashed) and is skipped. A damaged line before it is real damage:
    it raises :class:`CorruptFile`, or, when ``problems`` is given, is described there and
    skipped, so a viewer can still show the rest."""
    out: list[dict[str, Any]] = []
    lines = data.split(b"\n")
    # The element after the last newline is empty for a complete file, a torn line otherwise.
    for number, raw in enumerate(lines[:-1], start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            message = f"{where}: line {number} is not a JSON object ({raw[:60]!r})"
            if problems is None:
                raise CorruptFile(where, message)
            problems.append(message)
            continue
        out.append(obj)
    return out


def read_jsonl(path: PathLike, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """Read a JSONL file (see :func:`parse_jsonl`); a missing file reads as empty."""
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        return []
    return parse_jsonl(data, os.fspath(path), problems)


def list_dir(directory: PathLike) -> list[str]:
    """Names in ``directory``; a missing directory lists as empty."""
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def _unlink_quietly(path: PathLike) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
