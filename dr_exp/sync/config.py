"""Per-experiment sync settings (``sync/settings.json``), overridable by environment variables.

Credentials are never stored: boto3 finds them through its usual chain (environment,
``~/.aws``, instance roles).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass

from dr_exp.errors import SyncError
from dr_exp.fileio import atomic_write
from dr_exp.store import ExperimentStore

CHECKPOINT_CHOICES = ("best", "last", "all", "none")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
ENV = {"s3_uri": "DR_EXP_S3_URI", "endpoint_url": "DR_EXP_S3_ENDPOINT_URL", "region": "DR_EXP_S3_REGION",
       "include_checkpoints": "DR_EXP_S3_INCLUDE_CHECKPOINTS"}


@dataclass
class SyncConfig:
    s3_uri: str
    endpoint_url: str | None = None
    region: str | None = None
    include_checkpoints: str = "all"
    multipart_threshold_mb: int = 8
    max_concurrency: int = 8

    @property
    def bucket(self) -> str:
        return parse_s3_uri(self.s3_uri)[0]

    @property
    def prefix(self) -> str:
        return parse_s3_uri(self.s3_uri)[1]

    def validate(self) -> SyncConfig:
        parse_s3_uri(self.s3_uri)
        if self.include_checkpoints not in CHECKPOINT_CHOICES:
            raise SyncError(f"include_checkpoints={self.include_checkpoints!r}; use one of {', '.join(CHECKPOINT_CHOICES)}")
        if self.endpoint_url and not re.match(r"^https?://[^\s/]+", self.endpoint_url):
            raise SyncError(f"endpoint URL {self.endpoint_url!r} is not an http(s) URL, e.g. http://127.0.0.1:9000")
        return self


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``."""
    m = re.match(r"^s3://([^/]+)/?(.*)$", uri or "")
    if not m or not _BUCKET_RE.match(m.group(1)) or ".." in m.group(1):
        raise SyncError(f"invalid S3 URI {uri!r}: expected s3://bucket[/prefix] with a valid bucket name "
                        "(3-63 lowercase letters, digits, '.', '-')")
    return m.group(1), m.group(2).strip("/")


def config_path(store: ExperimentStore) -> str:
    return str(store.layout.sync_settings)


def load_config(store: ExperimentStore) -> SyncConfig | None:
    """The experiment's settings with environment overrides; None if sync is not configured."""
    data: dict = {}
    try:
        with open(config_path(store)) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        pass
    except ValueError as exc:
        raise SyncError(f"{config_path(store)} is not valid JSON ({exc}); run `dr_exp sync configure` again") from None
    for key, var in ENV.items():
        if os.environ.get(var):
            data[key] = os.environ[var]
    if not data.get("s3_uri"):
        return None
    known = SyncConfig.__dataclass_fields__
    return SyncConfig(**{k: v for k, v in data.items() if k in known}).validate()


def save_config(store: ExperimentStore, config: SyncConfig) -> None:
    config.validate()
    store.ensure()
    atomic_write(config_path(store), json.dumps(asdict(config), indent=2) + "\n")
