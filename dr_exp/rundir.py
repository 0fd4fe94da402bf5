"""The run directory of one job, and the name of every file in it.

Nobody else spells these names: code that reads or writes a run's files asks a :class:`RunDir`.
Paths stored in records and results are relative to the run directory (or to the experiment),
so an experiment that was moved, mounted elsewhere or pulled from S3 still finds its files.
"""

from __future__ import annotations

import os
import shutil
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dr_exp.fileio import parse_jsonl

RUN_PREFIX = "run_"


@dataclass(frozen=True)
class RunDir:
    """``storage/run_<job_id>/`` and its files (see the README's "What is on disk")."""

    root: Path

    @classmethod
    def of(cls, storage_dir: str | os.PathLike[str], job_id: str) -> RunDir:
        return cls(Path(storage_dir) / f"{RUN_PREFIX}{job_id}")

    # -- files -----------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        """The exact composed config the run used."""
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def result(self) -> Path:
        """What the trainer returned."""
        return self.root / "result.json"

    @property
    def error(self) -> Path:
        """Type, message and traceback of the last failure."""
        return self.root / "error.txt"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def train_log(self) -> Path:
        """The job's stdout and stderr."""
        return self.logs / "train.log"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def provenance(self) -> Path:
        return self.root / "provenance.json"

    @property
    def packed(self) -> Path:
        """A finished run's small files in one archive (``dr_exp pack``); readers look inside it
        for any file that is not on disk."""
        return self.root / "packed.zip"

    def outcome(self, attempt: int) -> Path:
        """How one attempt ended, written by the job's process for its worker to read."""
        return self.root / f".outcome-{attempt}.json"

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def is_private(rel: str) -> bool:
        """Files of the run that are bookkeeping between a job and its worker (never mirrored)."""
        name = rel.rsplit("/", 1)[-1]
        return name.startswith(".outcome-") or name.endswith(".tmp")

    @staticmethod
    def checkpoint_kind(rel: str) -> str | None:
        """For a path relative to the run directory: ``best``, ``last`` or ``other`` for a
        checkpoint file, None for anything else."""
        if not rel.startswith("checkpoints/"):
            return None
        name = rel.rsplit("/", 1)[-1]
        return {"best.ckpt": "best", "last.ckpt": "last"}.get(name, "other")

    def relative(self, path: str | os.PathLike[str] | None) -> str | None:
        """``path`` relative to the run directory when it lies inside it, else unchanged."""
        if path is None:
            return None
        p = Path(path)
        if not p.is_absolute():
            return str(p)
        try:
            return str(p.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(p)

    def resolve(self, path: str | os.PathLike[str] | None) -> Path | None:
        """A path stored relative to the run directory, made absolute (absolute ones stay)."""
        if path is None or path == "":
            return None
        p = Path(path)
        return p if p.is_absolute() else self.root / p

    def last_checkpoint(self) -> Path | None:
        """``checkpoints/last.ckpt`` if present, else the newest ``last.ckpt`` below
        ``checkpoints/`` (multi-stage runs keep one folder per stage), else the newest file."""
        last = self.checkpoints / "last.ckpt"
        if last.is_file():
            return last
        if not self.checkpoints.is_dir():
            return None
        for pattern in ("**/last.ckpt", "**/*"):
            files = [p for p in self.checkpoints.glob(pattern) if p.is_file() and not p.name.startswith(".")]
            if files:
                return max(files, key=lambda p: p.stat().st_mtime)
        return None

    def read(self, path: Path) -> bytes:
        """A file of the run, from disk or from the run's archive if it was packed.
        FileNotFoundError if it is in neither."""
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        try:
            with zipfile.ZipFile(self.packed) as zf:
                return zf.read(path.relative_to(self.root).as_posix())
        except (FileNotFoundError, KeyError, ValueError, zipfile.BadZipFile):
            raise FileNotFoundError(str(path)) from None

    def read_metrics(self, problems: list[str] | None = None) -> list[dict[str, Any]]:
        return self._jsonl(self.metrics, problems)

    def read_events(self, problems: list[str] | None = None) -> list[dict[str, Any]]:
        return self._jsonl(self.events, problems)

    def _jsonl(self, path: Path, problems: list[str] | None) -> list[dict[str, Any]]:
        try:
            return parse_jsonl(self.read(path), str(path), problems)
        except FileNotFoundError:
            return []

    def tail(self, path: Path | None = None, lines: int = 20) -> str:
        """The last ``lines`` lines of a text file of the run (default: train.log)."""
        path = path or self.train_log
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 8192))
                data = fh.read()
        except (FileNotFoundError, IsADirectoryError):
            try:
                data = self.read(path)[-8192:]
            except FileNotFoundError:
                return ""
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

    # -- packing ---------------------------------------------------------------------------
    def small_files(self) -> list[Path]:
        """What packing puts in the archive: every file but checkpoints and artifacts."""
        keep = {self.checkpoints, self.artifacts}
        out = []
        for path in sorted(self.root.rglob("*")):
            if path == self.packed or any(parent in keep for parent in path.parents) or path in keep:
                continue
            if path.is_file() and not path.is_symlink():
                out.append(path)
        return out

    def pack(self) -> int:
        """Put the run's small files into :attr:`packed` and remove them: a finished run then
        costs a few files instead of a dozen. Returns how many files went in."""
        files = self.small_files()
        if not files:
            return 0
        tmp = self.root / f".packed-{uuid.uuid4().hex[:8]}.tmp"
        try:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
                if self.packed.exists():  # packed before: carry its files over
                    with zipfile.ZipFile(self.packed) as old:
                        for name in old.namelist():
                            if not (self.root / name).exists():
                                zf.writestr(old.getinfo(name), old.read(name))
                for path in files:
                    zf.write(path, path.relative_to(self.root).as_posix())
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.packed)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        for path in files:
            path.unlink(missing_ok=True)
        for directory in sorted({p.parent for p in files}, key=lambda p: len(p.parts), reverse=True):
            if directory != self.root:
                try:
                    directory.rmdir()
                except OSError:
                    pass
        return len(files)

    def unpack(self) -> None:
        """Put a packed run's files back (before the run is written to again, e.g. on retry)."""
        if not self.packed.exists():
            return
        with zipfile.ZipFile(self.packed) as zf:
            for name in zf.namelist():
                dest = self.root / name
                if ".." in Path(name).parts or dest.exists():
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
        self.packed.unlink()
