"""The job record: one versioned JSON object per job, at ``jobs/<job_id>.json``, checked against
its schema whenever it is read (a record that parses but has fields of the wrong type is as
unreadable as one that does not parse)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from dr_exp.errors import StorageError
from dr_exp.layout import MAX_PRIORITY, MIN_PRIORITY, is_job_id, marker_name, validate_name
from dr_exp.state import Status

RECORD_VERSION = 1
DEFAULT_PRIORITY = 100
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_MAX_WORKER_LOSSES = 10

# Keys that change how a run is scheduled or resumed, not what it computes: they never reach a
# trainer (submit moves ``timeout``/``max_attempts`` into record fields) and do not take part in
# the config hash that identifies a run.
RUNTIME_KEYS = frozenset({"resume_from", "timeout", "max_attempts", "resources", "job_id", "worker_id", "storage_path"})


def canonical_json(config: dict[str, Any], shared: dict[Any, Any] | None = None) -> str:
    """The config as sorted, compact JSON without runtime keys: what identifies a run. Raises
    TypeError for a value JSON cannot hold.

    ``shared`` (see :func:`dr_exp.compose.plain_config`) holds the sections that the configs of
    one batch share (the same objects, by id): each is encoded once, and the result is the same
    text as encoding the whole config."""
    if shared is None:
        payload = {k: v for k, v in config.items() if k not in RUNTIME_KEYS}
        return json.dumps(payload, sort_keys=True, separators=(",", ":"))
    parts = []
    for key in sorted(config):
        if key in RUNTIME_KEYS:
            continue
        value = config[key]
        if type(value) in (dict, list, tuple) and id(value) in shared:
            encoded = shared.get(("json", id(value)))
            if encoded is None:
                encoded = shared[("json", id(value))] = _compact(value)
        else:
            encoded = _compact(value)
        parts.append(f"{_compact(key)}:{encoded}")
    return "{" + ",".join(parts) + "}"


_compact = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
# json.dumps(value, default=str) without building an encoder on every call.
_record_json = json.JSONEncoder(default=str).encode


def config_hash(config: dict[str, Any], canonical: str | None = None) -> str:
    """sha256 of the composed config, runtime keys excluded, key order irrelevant."""
    if canonical is None:
        try:
            canonical = canonical_json(config)
        except TypeError:
            payload = {k: v for k, v in config.items() if k not in RUNTIME_KEYS}
            canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


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
    study: dict[str, Any] | None = None  # a trial of an adaptive sweep: {"name": study, "trial": number}
    attempts: int = 0                # claims so far; each attempt has its own number and lease
    attempt_base: int = 0            # ``attempts`` when the job was last retried by a user
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    preemptions: int = 0             # attempts handed back (pre-empted, worker could not write)
    worker_losses: int = 0           # attempts whose worker was lost (lease expired)
    max_worker_losses: int = DEFAULT_MAX_WORKER_LOSSES
    timeout: float | None = None
    resources: dict[str, int] = field(default_factory=dict)  # {"gpus": N}: what a worker must have
    worker_id: str | None = None
    host: str | None = None
    storage_path: str = ""           # the run directory, relative to the experiment directory
    resume_from: str | None = None   # a checkpoint, relative to the run directory
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    sync: dict[str, Any] | None = None
    # What submitted it (commit, branch, dirty, diff digest, command line; see dr_exp.provenance):
    # small, the rest is stored once per submit under provenance/ in the experiment.
    provenance: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    rev: int = 0                     # bumped by every write; readers keep the highest they saw
    version: int = RECORD_VERSION

    def __post_init__(self) -> None:
        if not self.updated_at:
            self.updated_at = self.created_at
        if not self.config_hash:
            self.config_hash = config_hash(self.config)

    @property
    def marker(self) -> str:
        return marker_name(self.priority, self.seq, self.id)

    @property
    def gpus(self) -> int:
        """GPUs the job needs (its resource class): only a worker holding that many claims it."""
        return int(self.resources.get("gpus", 0))

    @property
    def failed_attempts(self) -> int:
        """Attempts since the last retry that count against ``max_attempts`` (hand-backs and
        lost workers do not)."""
        return self.attempts - self.attempt_base - self.preemptions - self.worker_losses

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else time.time()
        return max(0.0, end - self.started_at)

    def to_dict(self) -> dict[str, Any]:
        # Shallow on purpose: the values are JSON data already, and dataclasses.asdict's deep
        # copy dominated the cost of a claim.
        return {name: getattr(self, name) for name in FIELD_NAMES}

    def to_json(self) -> str:
        # Compact on purpose: json's C encoder is used only without indent, and records are
        # rewritten on every state change. `jq . jobs/<id>.json` pretty-prints one.
        config_json = self.__dict__.get("_config_json")
        if config_json is None:
            return _record_json(self.to_dict()) + "\n"
        rest = self.to_dict()
        del rest["config"]
        return '{"config":' + config_json + "," + _record_json(rest)[1:] + "\n"

    def reuse_config_json(self, canonical: str) -> None:
        """Serialise the config as ``canonical`` (its :func:`canonical_json`, already computed)
        instead of encoding it again; a big sweep writes thousands of records at once."""
        if RUNTIME_KEYS.isdisjoint(self.config):
            self.__dict__["_config_json"] = canonical

    @classmethod
    def from_dict(cls, data: Any) -> JobRecord:
        """A record from parsed JSON; ValueError names the first field that breaks the schema."""
        if not isinstance(data, dict):
            raise ValueError("record is not a JSON object")
        version = data.get("version", RECORD_VERSION)
        if type(version) is not int:
            raise ValueError(f"field 'version' is {version!r}, not an integer")
        if version > RECORD_VERSION:
            raise ValueError(f"record version {version} is newer than this dr_exp ({RECORD_VERSION}); upgrade dr_exp")
        missing = _REQUIRED_FIELDS - data.keys()
        if missing:
            raise ValueError(f"record lacks {', '.join(sorted(missing))}")
        for name, value in data.items():
            check = _CHECKS.get(name)
            if check is not None and not check(value):
                raise ValueError(f"field {name!r} has the wrong type or value: {_short(value)}")
        return cls(**{k: v for k, v in data.items() if k in _FIELD_SET})


@dataclass(frozen=True)
class Attempt:
    """One attempt of one job, owned by one worker: what the lifecycle operations take.

    The lease file is per attempt, so whoever holds an ``Attempt`` can only ever refresh, end
    or lose its own attempt, never the one that replaced it."""

    job_id: str
    number: int
    worker_id: str
    lease_path: str
    lease_seconds: float
    record: JobRecord = field(compare=False, repr=False)

    @property
    def id(self) -> str:
        return self.job_id

    @property
    def config(self) -> dict[str, Any]:
        """The composed config the attempt runs."""
        return self.record.config


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_num(v: Any) -> bool:
    return type(v) in (int, float)


def _opt(check: Any) -> Any:
    return lambda v: v is None or check(v)


def _is_str(v: Any) -> bool:
    return type(v) is str


def _str_list(v: Any) -> bool:
    return type(v) is list and all(type(x) is str for x in v)


def _provenance(v: Any) -> bool:
    return (type(v) is dict and type(v.get("capture", "")) is str and type(v.get("command", "")) is str
            and type(v.get("git", [])) is list and all(type(g) is dict for g in v.get("git", []))
            and type(v.get("rerun_of", {})) is dict)


def _study(v: Any) -> bool:
    if type(v) is not dict or not {"name", "trial"} <= v.keys() or type(v["trial"]) is not int or v["trial"] < 0:
        return False
    try:
        validate_name(v["name"], "study name")
    except StorageError:
        return False
    return True


def _history(v: Any) -> bool:
    return type(v) is list and all(type(h) is dict and type(h.get("to")) is str for h in v)


_STATUS_VALUES = frozenset(s.value for s in Status)
_CHECKS: dict[str, Any] = {
    "id": lambda v: type(v) is str and is_job_id(v),
    "experiment": _is_str,
    "config": lambda v: type(v) is dict,
    "status": lambda v: v in _STATUS_VALUES,
    "priority": lambda v: type(v) is int and MIN_PRIORITY <= v <= MAX_PRIORITY,
    "tags": _str_list,
    "created_at": _is_num,
    "updated_at": _is_num,
    "started_at": _opt(_is_num),
    "finished_at": _opt(_is_num),
    "seq": lambda v: type(v) is int and v >= 0,
    "config_path": _opt(_is_str),
    "config_name": _opt(_is_str),
    "overrides": _str_list,
    "config_hash": _is_str,
    "sweep_id": _opt(_is_str),
    "sweep_params": lambda v: type(v) is dict and all(type(x) is str for x in v.values()),
    "study": _opt(_study),
    "attempts": lambda v: _is_int(v) and v >= 0,
    "attempt_base": lambda v: _is_int(v) and v >= 0,
    "max_attempts": lambda v: _is_int(v) and v >= 1,
    "preemptions": lambda v: _is_int(v) and v >= 0,
    "worker_losses": lambda v: _is_int(v) and v >= 0,
    "max_worker_losses": lambda v: _is_int(v) and v >= 1,
    "timeout": _opt(lambda v: _is_num(v) and v > 0),
    "resources": lambda v: type(v) is dict and all(type(x) is int and x >= 0 for x in v.values()),
    "worker_id": _opt(_is_str),
    "host": _opt(_is_str),
    "storage_path": _is_str,
    "resume_from": _opt(_is_str),
    "result": _opt(lambda v: type(v) is dict),
    "error": _opt(lambda v: type(v) is dict),
    "sync": _opt(lambda v: type(v) is dict),
    "provenance": _opt(_provenance),
    "history": _history,
    "rev": lambda v: _is_int(v) and v >= 0,
}
FIELD_NAMES = tuple(f.name for f in dataclasses.fields(JobRecord))
_FIELD_SET = frozenset(FIELD_NAMES)
_REQUIRED_FIELDS = frozenset({"id", "experiment", "config", "status", "seq"})  # seq names its marker
