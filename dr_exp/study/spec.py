"""A study's files and its settings.

One study lives in ``<experiment>/studies/<name>/``:

- ``study.json``: its settings (:class:`StudySpec`), written once when the sweep is submitted:
  the job config and fixed overrides, the search space, sampler, pruner, seed, budget, metric
  and the queueing options of its jobs;
- ``journal.log``: Optuna's journal file storage, one JSON operation a line, appended under
  Optuna's own NFS-safe lock (``journal.log.lock``, created with ``O_EXCL``): the trials, their
  parameters, intermediate values and results. Optuna and optuna-dashboard open it directly;
- ``lock``: a ``flock`` held only while the study is advanced (told how trials ended, asked for
  new ones), so one process at a time does that; the kernel drops it if that process dies.

Nothing here imports Optuna at module level: a job that is not a trial never pays for it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dr_exp.errors import DrExpError, StorageError
from dr_exp.fileio import atomic_write, read_bytes
from dr_exp.layout import Layout, validate_name

if TYPE_CHECKING:
    from dr_exp.study.space import Param

SPEC_VERSION = 1
# Optuna forcibly takes over its journal lock when the lock file has not changed for this long;
# the lock is held only for one append (milliseconds), so this only matters after a crash.
JOURNAL_LOCK_GRACE = 10


class StudyError(DrExpError):
    """Bad input to an adaptive sweep, or a study whose files are unusable."""


def import_optuna() -> Any:
    """Optuna, quiet, or a clear error if it is not installed."""
    try:
        import optuna
    except ImportError:
        raise StudyError("adaptive sweeps need Optuna: pip install 'dr_exp[study]' (or pip install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass(frozen=True)
class StudyFiles:
    """The directory of one study and the name of every file in it."""

    root: Path

    @classmethod
    def of(cls, layout: Layout, name: str) -> StudyFiles:
        return cls(layout.studies_dir / validate_name(name, "study name"))

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def spec(self) -> Path:
        return self.root / "study.json"

    @property
    def journal(self) -> Path:
        return self.root / "journal.log"

    @property
    def lock(self) -> Path:
        return self.root / "lock"


@dataclass
class StudySpec:
    """What a study searches and how its trials run; fixed when the sweep is submitted."""

    name: str
    sweep_id: str
    config_path: str                 # the job config's directory (absolute)
    config_name: str
    overrides: list[str]             # fixed for every trial: --overrides, the grid point, fixed --search items
    grid_params: dict[str, str]      # the grid point of --params this study runs at ({} without --params)
    search: str                      # --search as given
    space: list[dict[str, Any]]      # the searched parameters (see :class:`dr_exp.study.space.Param`)
    sampler: str
    pruner: str
    seed: int
    trials: int
    parallel: int
    metric: str
    mode: str                        # "min" or "max"
    queueing: dict[str, Any] = field(default_factory=dict)  # priority, tags, max_attempts, timeout, ...
    searchpath: list[str] = field(default_factory=list)
    created_at: float = 0.0
    version: int = SPEC_VERSION

    @property
    def direction(self) -> str:
        return "maximize" if self.mode == "max" else "minimize"

    def params(self) -> list[Param]:
        from dr_exp.study.space import Param

        return [Param.from_dict(p) for p in self.space]

    def save(self, files: StudyFiles) -> None:
        atomic_write(files.spec, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, files: StudyFiles) -> StudySpec:
        try:
            data = json.loads(read_bytes(files.spec))
        except FileNotFoundError:
            raise StudyError(f"no study {files.name!r} ({files.spec} is missing); "
                             "`dr_exp study list` shows the studies") from None
        except (OSError, ValueError) as exc:
            raise StudyError(f"study settings {files.spec} are unreadable ({exc})") from None
        if not isinstance(data, dict) or data.get("version", 0) > SPEC_VERSION:
            raise StudyError(f"study settings {files.spec} are not a study of this dr_exp version")
        try:
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except TypeError as exc:
            raise StudyError(f"study settings {files.spec} are incomplete ({exc})") from None


_storages: dict[str, Any] = {}


def open_storage(files: StudyFiles) -> Any:
    """The study's Optuna journal storage (one per process and study: it reads the journal
    incrementally, so later calls cost only the lines appended since)."""
    key = str(files.journal)
    storage = _storages.get(key)
    if storage is None:
        optuna = import_optuna()
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        if not files.journal.is_file():
            raise StudyError(f"study {files.name!r} has no journal at {files.journal}")
        lock = JournalFileOpenLock(key, grace_period=JOURNAL_LOCK_GRACE)
        storage = optuna.storages.JournalStorage(JournalFileBackend(key, lock_obj=lock))
        _storages[key] = storage
    return storage


def study_names(layout: Layout) -> list[str]:
    """Names of the studies of an experiment, oldest first."""
    try:
        entries = list(os.scandir(layout.studies_dir))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StorageError(f"cannot list {layout.studies_dir}: {exc.strerror}") from None
    found = []
    for entry in entries:
        spec = Path(entry.path) / "study.json"
        try:
            found.append((spec.stat().st_mtime, entry.name))
        except OSError:
            continue
    return [name for _, name in sorted(found)]
