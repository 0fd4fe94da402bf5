"""SyncHandler: mirror ``storage/run_<id>/`` to ``<s3-uri>/<experiment>/run_<id>/``.

Uploads go through boto3's transfer manager (multipart above the threshold, several files at
once). A manifest per run (size, mtime, MD5 per file, in ``sync/manifests/``) makes a re-sync
upload only what changed, and every upload is verified against the server's ETag (the MD5 of
the file, or of its part MD5s for multipart uploads). Multipart uploads become visible only when
complete, so an interrupted sync never leaves a partial object that looks whole.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dr_exp.errors import SyncError
from dr_exp.fileio import atomic_write
from dr_exp.rundir import RunDir
from dr_exp.store import ExperimentStore
from dr_exp.sync.config import SyncConfig

RECORD_KEY = "_dr_exp_record.json"
MiB = 1024 * 1024


class SyncUnavailable(SyncError):
    """The server could not be reached or failed; worth retrying later."""

    exit_code = 1


def _scrub(message: str) -> str:
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if secret:
        message = message.replace(secret, "***")
    return " ".join(message.split())[:500]


def translate(exc: BaseException, config: SyncConfig) -> SyncError:
    """One line a user can act on, never containing a secret."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, PartialCredentialsError

    where = f"s3://{config.bucket}" + (f" at {config.endpoint_url}" if config.endpoint_url else "")
    if isinstance(exc, SyncError):
        return exc
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return SyncError(f"no usable AWS credentials for {where}; set AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY or AWS_PROFILE (they are never stored by dr_exp)")
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchBucket", "404") or (status == 404 and code in ("", "NotFound")):
            return SyncError(f"bucket {config.bucket!r} does not exist ({where}); create it or fix --s3-uri")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken",
                    "ExpiredToken") or status == 403:
            return SyncError(f"{where} refused the credentials ({code or status}); check AWS_ACCESS_KEY_ID/"
                             "AWS_SECRET_ACCESS_KEY or AWS_PROFILE and the bucket policy")
        if status and int(status) >= 500:
            return SyncUnavailable(f"{where} failed ({code} {status}); will retry")
        return SyncError(f"{where} refused the request: {code} {_scrub(str(exc))}")
    if isinstance(exc, FileNotFoundError):
        return SyncUnavailable(f"a file disappeared while it was being synced ({exc.filename}); will retry")
    if isinstance(exc, (EndpointConnectionError, ConnectionError, OSError)) or "Connect" in type(exc).__name__ \
            or "Timeout" in type(exc).__name__ or "Connection" in type(exc).__name__:
        return SyncUnavailable(f"cannot reach {where}: {type(exc).__name__}: {_scrub(str(exc))}; will retry")
    return SyncUnavailable(f"sync to {where} failed: {type(exc).__name__}: {_scrub(str(exc))}")


def make_client(config: SyncConfig) -> Any:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(region_name=config.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    return session.client("s3", endpoint_url=config.endpoint_url,
                          config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5,
                                        read_timeout=60, max_pool_connections=max(10, config.max_concurrency * 2)))


def file_digests(path: Path, part_size: int) -> tuple[str, list[bytes]]:
    """MD5 of the whole file and the MD5s of its ``part_size`` parts (for multipart ETags)."""
    whole = hashlib.md5()
    parts: list[bytes] = []
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(part_size)
            if not chunk:
                break
            whole.update(chunk)
            parts.append(hashlib.md5(chunk).digest())
    return whole.hexdigest(), parts


def expected_etag(md5_hex: str, parts: list[bytes], size: int, threshold: int) -> str:
    if size < threshold:
        return md5_hex
    return f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"


@dataclass
class SyncResult:
    uploaded: int = 0
    unchanged: int = 0
    objects: int = 0
    bytes: int = 0


class SyncHandler:
    def __init__(self, store: ExperimentStore, config: SyncConfig, client: Any = None) -> None:
        from boto3.s3.transfer import TransferConfig

        self.store = store
        self.config = config.validate()
        self.client = client or make_client(config)
        self.part_size = config.multipart_threshold_mb * MiB
        self.transfer_config = TransferConfig(multipart_threshold=self.part_size, multipart_chunksize=self.part_size,
                                              max_concurrency=config.max_concurrency, use_threads=True)
        self.manifests_dir = store.layout.sync_dir / "manifests"

    # -- keys and files --------------------------------------------------------------------
    def run_prefix(self, job_id: str) -> str:
        parts = [p for p in (self.config.prefix, self.store.experiment, f"run_{job_id}") if p]
        return "/".join(parts) + "/"

    def _included(self, rel: str) -> bool:
        if RunDir.is_private(rel):
            return False
        kind = RunDir.checkpoint_kind(rel)
        mode = self.config.include_checkpoints
        return kind is None or mode == "all" or mode == kind

    def local_files(self, job_id: str) -> dict[str, Path]:
        run = self.store.run_dir(job_id).root
        out = {}
        for path in sorted(run.rglob("*")):
            if path.is_file() and not path.is_symlink():
                rel = path.relative_to(run).as_posix()
                if self._included(rel):
                    out[rel] = path
        return out

    def _manifest_path(self, job_id: str) -> Path:
        return self.manifests_dir / f"{job_id}.json"

    def load_manifest(self, job_id: str) -> dict[str, dict[str, Any]]:
        try:
            return json.loads(self._manifest_path(job_id).read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _save_manifest(self, job_id: str, manifest: dict[str, dict[str, Any]]) -> None:
        self.manifests_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self._manifest_path(job_id), json.dumps(manifest, sort_keys=True))

    # -- operations ------------------------------------------------------------------------
    def check_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.config.bucket)
        except Exception as exc:  # noqa: BLE001 - translated into one line
            raise translate(exc, self.config) from None

    def sync_job(self, job_id: str) -> SyncResult:
        """Upload what changed in the run directory (and the job record); verify each upload."""
        from s3transfer.manager import TransferManager

        manifest = self.load_manifest(job_id)
        result = SyncResult()
        todo: list[tuple[str, Path | bytes, dict[str, Any]]] = []
        files = self.local_files(job_id)
        for rel, path in files.items():
            st = path.stat()
            entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
            old = manifest.get(rel)
            if old and old["size"] == st.st_size and old["mtime_ns"] == st.st_mtime_ns:
                result.unchanged += 1
                continue
            md5_hex, parts = file_digests(path, self.part_size)
            if old and old.get("md5") == md5_hex and old["size"] == st.st_size:
                manifest[rel] = {**old, **entry}  # touched, not changed
                result.unchanged += 1
                continue
            entry["md5"] = md5_hex
            entry["etag"] = expected_etag(md5_hex, parts, st.st_size, self.part_size)
            todo.append((rel, path, entry))
        record = self._record_copy(job_id)
        if record is not None and manifest.get(RECORD_KEY, {}).get("md5") != hashlib.md5(record).hexdigest():
            md5_hex = hashlib.md5(record).hexdigest()
            todo.append((RECORD_KEY, record, {"size": len(record), "mtime_ns": 0, "md5": md5_hex, "etag": md5_hex}))
        prefix = self.run_prefix(job_id)
        errors: list[BaseException] = []
        if todo:
            with TransferManager(self.client, self.transfer_config) as manager:
                futures = [(rel, entry, manager.upload(io.BytesIO(src) if isinstance(src, bytes) else str(src),
                                                       self.config.bucket, prefix + rel))
                           for rel, src, entry in todo]
                for rel, entry, future in futures:
                    try:
                        future.result()
                        self._verify(prefix + rel, entry)
                        manifest[rel] = entry
                        result.uploaded += 1
                        result.bytes += entry["size"]
                    except BaseException as exc:  # noqa: BLE001 - collected, the rest still finish
                        errors.append(exc)
        self._save_manifest(job_id, manifest)
        result.objects = len(manifest)
        if errors:
            raise translate(errors[0], self.config)
        return result

    def _record_copy(self, job_id: str) -> bytes | None:
        """The job record as stored next to the run (so `sync pull` can restore it), without its
        sync state, which changes with every sync and would otherwise re-upload it each time."""
        try:
            data = json.loads(Path(self.store.layout.record(job_id)).read_text())
        except (FileNotFoundError, ValueError):
            return None
        data.pop("sync", None)
        data.pop("rev", None)
        return (json.dumps(data) + "\n").encode()

    def _verify(self, key: str, entry: dict[str, Any]) -> None:
        head = self.client.head_object(Bucket=self.config.bucket, Key=key)
        etag = head.get("ETag", "").strip('"')
        if head.get("ContentLength") != entry["size"] or etag != entry["etag"]:
            raise SyncUnavailable(f"s3://{self.config.bucket}/{key} does not match the local file "
                                  f"(size {head.get('ContentLength')} vs {entry['size']}, ETag {etag} vs {entry['etag']}); "
                                  "it will be uploaded again")

    def list_runs(self) -> list[str]:
        """Job ids with a run directory in the bucket for this experiment."""
        prefix = "/".join(p for p in (self.config.prefix, self.store.experiment) if p) + "/"
        ids = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.config.bucket, Prefix=prefix, Delimiter="/"):
                for cp in page.get("CommonPrefixes", []):
                    name = cp["Prefix"][len(prefix):].strip("/")
                    if name.startswith("run_"):
                        ids.append(name[4:])
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, self.config) from None
        return ids

    def fetch_record(self, job_id: str) -> dict[str, Any] | None:
        try:
            body = self.client.get_object(Bucket=self.config.bucket, Key=self.run_prefix(job_id) + RECORD_KEY)["Body"]
            return json.loads(body.read())
        except Exception:  # noqa: BLE001 - a run without a record copy
            return None

    def pull(self, job_id: str) -> int:
        """Download a run directory (and its record, if missing locally). Returns files written."""
        prefix = self.run_prefix(job_id)
        run = self.store.run_dir(job_id).root
        count = 0
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.config.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(prefix):]
                    if not rel or ".." in rel.split("/"):
                        continue
                    if rel == RECORD_KEY:
                        dest = Path(self.store.layout.record(job_id))
                        if dest.exists():
                            continue
                    else:
                        dest = run / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    tmp = dest.with_name(f".{dest.name}.pull.tmp")
                    self.client.download_file(self.config.bucket, obj["Key"], str(tmp), Config=self.transfer_config)
                    os.replace(tmp, dest)
                    count += 1
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, self.config) from None
        if count == 0:
            raise SyncError(f"nothing under s3://{self.config.bucket}/{prefix}; check the job id and --experiment")
        return count
