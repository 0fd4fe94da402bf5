"""The job record: one versioned JSON object per job, at ``jobs/<job_id>.json``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from dr_exp.state import Status

RECORD_VERSION = 1
MIN_PRIORITY, MAX_PRIORITY = 0, 1000
DEFAULT_PRIORITY = 100
DEFAULT_MAX_ATTEMPTS = 3

# Keys that change how a run is scheduled or resumed, not what it computes; they do not
# take part in the config hash that identifies a run.
RUNTIME_KEYS = frozenset({"resume_from", "timeout", "max_attempts", "job_id", "worker_id", "storage_path"})


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the composed config, runtime keys excluded, key order irrelevant."""
    payload = {k: v for k, v in config.items() if k not in RUNTIME_KEYS}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def queue_marker_name(priority: int, seq: int, job_id: str) -> str:
    """Marker names sort in claim order: higher priority first, then FIFO by submit time."""
    return f"{MAX_PRIORITY - priority:04d}-{seq:020d}-{job_id}"


@dataclass
class JobRecord:
    id: str
    experiment: str
    config: dict[str, Any]
    status: str = Status.PENDING.value
    priority: int = DEFAULT_PRIORITY
    tags: list[str] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    updated_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    # Submit order among equal priorities; a monotonic-ish nanosecond stamp.
    seq: int = field(default_factory=time.time_ns)
    config_path: str | None = None
    config_name: str | None = None
    overrides: list[str] = field(default_factory=list)
    config_hash: str = ""
    sweep_id: str | None = None
    sweep_params: dict[str, str] = field(default_factory=dict)
    attempts: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    preemptions: int = 0
    timeout: float | None = None
    worker_id: str | None = None
    host: str | None = None
    storage_path: str = ""
    resume_from: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    sync: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    version: int = RECORD_VERSION

    def __post_init__(self) -> None:
        if not self.updated_at:
            self.updated_at = self.created_at
        if not self.config_hash:
            self.config_hash = config_hash(self.config)

    @property
    def marker(self) -> str:
        return queue_marker_name(self.priority, self.seq, self.id)

    @property
    def failed_attempts(self) -> int:
        """Attempts that count against ``max_attempts`` (pre-emptions do not)."""
        return self.attempts - self.preemptions

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else time.time()
        return max(0.0, end - self.started_at)

    def to_dict(self) -> dict[str, Any]:
        # Shallow on purpose: the values are JSON data already, and dataclasses.asdict's deep
        # copy dominated the cost of a claim.
        return {name: getattr(self, name) for name in _FIELD_NAMES}

    def to_json(self) -> str:
        # Compact on purpose: json's C encoder is used only without indent, and records are
        # rewritten on every state change. `jq . jobs/<id>.json` pretty-prints one.
        return json.dumps(self.to_dict(), default=str) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        if not isinstance(data, dict):
            raise ValueError("record is not a JSON object")
        version = data.get("version", RECORD_VERSION)
        if version > RECORD_VERSION:
            raise ValueError(f"record version {version} is newer than this dr_exp ({RECORD_VERSION}); upgrade dr_exp")
        missing = _REQUIRED_FIELDS - data.keys()
        if missing:
            raise ValueError(f"record lacks {', '.join(sorted(missing))}")
        if data.get("status") not in _STATUS_VALUES:
            raise ValueError(f"unknown status {data.get('status')!r}")
        return cls(**{k: v for k, v in data.items() if k in _FIELD_SET})


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(JobRecord))
_FIELD_SET = frozenset(_FIELD_NAMES)
_REQUIRED_FIELDS = frozenset({"id", "experiment", "config"})
_STATUS_VALUES = frozenset(s.value for s in Status)
