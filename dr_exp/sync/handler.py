"""SyncHandler: mirror ``storage/run_<id>/`` to ``<s3-uri>/<experiment>/run_<id>/``, and the
provenance blobs its record refers to (``provenance/<sha256>.diff|json``, content-addressed) once
per experiment to ``<s3-uri>/<experiment>/provenance/``.

Uploads go through boto3's transfer manager (multipart above the threshold, several files at
once). A manifest per run (size, mtime, SHA-256 per file, in ``sync/manifests/``) makes a re-sync
upload only what changed. Every upload is verified by its size and SHA-256, never by its ETag
(not an MD5 in SSE-KMS buckets and on several S3-compatible stores), in one of two ways:

- ``checksum``: the upload asks the store to keep a SHA-256 checksum (``ChecksumAlgorithm``;
  S3 checks it against the bytes it received) and a HeadObject reads it back: the file's SHA-256,
  or for a multipart upload the SHA-256 of the part checksums with a ``-<parts>`` suffix;
- ``reread``: for stores that keep no checksums (or refuse the headers), the object is read back
  (ranged GETs by the transfer manager) and hashed; slower, correct on any store.

The first upload to a bucket finds out which one works; the answer is kept per endpoint and
bucket in ``sync/verify.json``, so later uploads do not ask again. A mismatch, or a local file
that changed while it was uploaded, leaves the run queued to be uploaded again. Multipart
uploads become visible only when complete, so an interrupted sync never leaves a partial object
that looks whole.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dr_exp.errors import SyncError
from dr_exp.fileio import atomic_write
from dr_exp.rundir import RunDir
from dr_exp.store import ExperimentStore
from dr_exp.summary import summary_line
from dr_exp.sync.config import SyncConfig

RECORD_KEY = "_dr_exp_record.json"
BLOB_ENTRY = "@provenance/"  # a run manifest's entries for the experiment's provenance blobs
MiB = 1024 * 1024
CHECKSUM, REREAD = "checksum", "reread"
# The store received other bytes than were sent: worth uploading again.
_DAMAGED_CODES = ("BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch")
# How stores without checksum support answer a request that carries checksum headers.
_REFUSED_CODES = ("InvalidArgument", "InvalidRequest", "NotImplemented", "BadRequest")


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
        if code in _DAMAGED_CODES:
            return SyncUnavailable(f"{where} received other bytes than were sent ({code}); will retry")
        if status and int(status) >= 500:
            return SyncUnavailable(f"{where} failed ({code} {status}); will retry")
        return SyncError(f"{where} refused the request: {code} {_scrub(str(exc))}")
    if isinstance(exc, FileNotFoundError):
        return SyncUnavailable(f"a file disappeared while it was being synced ({exc.filename}); will retry")
    if isinstance(exc, (EndpointConnectionError, ConnectionError, OSError)) or "Connect" in type(exc).__name__ \
            or "Timeout" in type(exc).__name__ or "Connection" in type(exc).__name__:
        return SyncUnavailable(f"cannot reach {where}: {type(exc).__name__}: {_scrub(str(exc))}; will retry")
    return SyncUnavailable(f"sync to {where} failed: {type(exc).__name__}: {_scrub(str(exc))}")


def _status(exc: BaseException) -> int | None:
    """The HTTP status of a store's error answer (None for anything else)."""
    response = getattr(exc, "response", None)
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(response, dict) else None
    return int(status) if status else None


def _refuses_checksums(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status == 501 or (status == 400 and exc.response.get("Error", {}).get("Code") in _REFUSED_CODES)


def make_client(config: SyncConfig) -> Any:
    import boto3
    from botocore.config import Config

    options: dict[str, Any] = {}
    if "request_checksum_calculation" in Config.OPTION_DEFAULTS:
        # Checksum headers only where SyncHandler asks for them: stores that refuse them still work.
        options["request_checksum_calculation"] = "when_required"
    session = boto3.session.Session(region_name=config.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    return session.client("s3", endpoint_url=config.endpoint_url,
                          config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5,
                                        read_timeout=60, max_pool_connections=max(10, config.max_concurrency * 2),
                                        **options))


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


@dataclass(frozen=True)
class Digest:
    """SHA-256 of the bytes uploaded: of the whole, and of each part of a multipart upload."""

    size: int
    sha256: bytes
    parts: tuple[bytes, ...] = ()

    @property
    def hex(self) -> str:
        return self.sha256.hex()

    def checksum(self) -> str:
        """What S3 reports as ``ChecksumSHA256``: the object's SHA-256, or for a multipart upload the
        SHA-256 of the part checksums followed by ``-<parts>`` (a composite checksum); base64."""
        if not self.parts:
            return _b64(self.sha256)
        return f"{_b64(hashlib.sha256(b''.join(self.parts)).digest())}-{len(self.parts)}"

    def matches(self, reported: str) -> bool:
        """Some stores leave out the ``-<parts>`` suffix, some report a whole-object checksum for
        multipart uploads; each of those is a SHA-256 of the same bytes."""
        expected = self.checksum()
        return reported in (expected, expected.split("-")[0], _b64(self.sha256))


def digest_of(source: Path | bytes, size: int, part_size: int | None) -> Digest:
    """SHA-256 of the first ``size`` bytes (what is uploaded: the size is fixed when the upload is
    queued), and of each ``part_size`` part when it goes up in parts."""
    whole, parts, left = hashlib.sha256(), [], size
    with io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as fh:
        while left > 0:
            part = hashlib.sha256() if part_size else None
            todo = min(left, part_size or left)
            while todo > 0:
                block = fh.read(min(todo, 8 * MiB))
                if not block:
                    raise SyncUnavailable(f"{source} shrank while it was being read; will retry")
                whole.update(block)
                if part is not None:
                    part.update(block)
                todo -= len(block)
                left -= len(block)
            if part is not None:
                parts.append(part.digest())
    return Digest(size, whole.digest(), tuple(parts))


class _KnownSize:
    """Transfer-manager subscriber: upload exactly the bytes that were hashed, even if the file grows."""

    def __init__(self, size: int) -> None:
        self.size = size

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        future.meta.provide_transfer_size(self.size)


class _HashSink:
    """A download target that hashes what it is given (the transfer manager writes it in order)."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def seekable(self) -> bool:
        return False


@dataclass
class _Upload:
    rel: str  # its name in the run's manifest
    source: Path | bytes
    digest: Digest
    entry: dict[str, Any]
    key: str = ""  # where it goes in the bucket


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
        self._modes_path = store.layout.sync_dir / "verify.json"
        self._mode_key = f"{config.endpoint_url or 'aws'} {self.config.bucket}"
        self._mode_lock = threading.Lock()
        mode = self._load_modes().get(self._mode_key)
        self.verify_mode: str | None = mode if mode in (CHECKSUM, REREAD) else None  # None: not known yet
        self._blobs_seen: set[str] = set()  # provenance blobs known to be in the bucket

    # -- keys and files --------------------------------------------------------------------
    def run_prefix(self, job_id: str) -> str:
        parts = [p for p in (self.config.prefix, self.store.experiment, f"run_{job_id}") if p]
        return "/".join(parts) + "/"

    def blob_key(self, name: str) -> str:
        """Where a provenance blob (``<sha256>.diff`` / ``.json``) goes: once per experiment,
        ``<s3-uri>/<experiment>/provenance/<name>`` (content-addressed, shared by its runs)."""
        return "/".join(p for p in (self.config.prefix, self.store.experiment, "provenance", name) if p)

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

    def _part_size(self, size: int) -> int | None:
        """The part size the transfer manager will use for ``size`` bytes; None for a single PUT."""
        from s3transfer.utils import ChunksizeAdjuster

        if size < self.transfer_config.multipart_threshold:
            return None
        return ChunksizeAdjuster().adjust_chunksize(self.transfer_config.multipart_chunksize, size)

    # -- how uploads are verified ----------------------------------------------------------
    def _load_modes(self) -> dict[str, str]:
        try:
            data = json.loads(self._modes_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _decide(self, mode: str) -> None:
        """Remember how this bucket verifies. Checksums are trusted only until one upload needed a
        re-read, which then stays (a store may keep checksums for single uploads only)."""
        with self._mode_lock:
            if self.verify_mode == mode or (mode == CHECKSUM and self.verify_mode == REREAD):
                return
            self.verify_mode = mode
            modes = self._load_modes()
            modes[self._mode_key] = mode
            self._modes_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self._modes_path, json.dumps(modes, indent=1, sort_keys=True) + "\n")

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
        todo: list[_Upload] = []
        for rel, path in self.local_files(job_id).items():
            st = path.stat()
            old = manifest.get(rel)
            if old and old["size"] == st.st_size and old["mtime_ns"] == st.st_mtime_ns:
                result.unchanged += 1
                continue
            digest = digest_of(path, st.st_size, self._part_size(st.st_size))
            entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest.hex}
            if old and old.get("sha256") == digest.hex and old["size"] == st.st_size:
                manifest[rel] = {**old, **entry}  # touched, not changed
                result.unchanged += 1
                continue
            todo.append(_Upload(rel, path, digest, entry))
        record = self._record_copy(job_id)
        if record is not None:
            digest = digest_of(record, len(record), self._part_size(len(record)))
            if manifest.get(RECORD_KEY, {}).get("sha256") != digest.hex:
                todo.append(_Upload(RECORD_KEY, record, digest, {"size": len(record), "mtime_ns": 0, "sha256": digest.hex}))
            todo += self._blobs_to_upload(json.loads(record).get("provenance"), manifest, result)
        prefix = self.run_prefix(job_id)
        errors: list[BaseException] = []
        if todo:
            with TransferManager(self.client, self.transfer_config) as manager, \
                    ThreadPoolExecutor(self.config.max_concurrency) as pool:
                futures = [(item, pool.submit(self._put, manager, item.key or prefix + item.rel, item)) for item in todo]
                for item, future in futures:
                    try:
                        manifest[item.rel] = {**item.entry, "verified": future.result()}
                        result.uploaded += 1
                        result.bytes += item.digest.size
                    except BaseException as exc:  # noqa: BLE001 - collected, the rest still finish
                        errors.append(exc)
        self._save_manifest(job_id, manifest)
        result.objects = len(manifest)
        if errors:
            raise translate(errors[0], self.config)
        return result

    def _blobs_to_upload(self, prov: Any, manifest: dict[str, dict[str, Any]], result: SyncResult) -> list[_Upload]:
        """The provenance blobs a record refers to (the submit capture, uncommitted diffs) that
        the bucket lacks: each is uploaded once per experiment, whichever run gets there first."""
        from dr_exp.provenance import blob_names

        out = []
        for sha, kind in blob_names(prov):
            name = f"{sha}.{kind}"
            rel = BLOB_ENTRY + name
            if rel in manifest:
                continue  # content-addressed: never changes
            path = self.store.layout.provenance_file(sha, kind)
            try:
                size = path.stat().st_size
            except (OSError, ValueError):
                continue  # not here (a run pulled without it)
            digest = digest_of(path, size, self._part_size(size))
            entry = {"size": size, "mtime_ns": 0, "sha256": digest.hex}
            if self._blob_in_bucket(name, size):
                manifest[rel] = {**entry, "verified": "present"}
                result.unchanged += 1
            else:
                out.append(_Upload(rel, path, digest, entry, key=self.blob_key(name)))
        return out

    def _blob_in_bucket(self, name: str, size: int) -> bool:
        if name in self._blobs_seen:
            return True
        try:
            head = self.client.head_object(Bucket=self.config.bucket, Key=self.blob_key(name))
        except Exception as exc:  # noqa: BLE001 - a missing object is the common answer
            if _status(exc) == 404:
                return False
            raise translate(exc, self.config) from None
        if head.get("ContentLength") != size:
            return False
        self._blobs_seen.add(name)
        return True

    def _put(self, manager: Any, key: str, item: _Upload) -> str:
        """Upload one file and verify it; returns how it was verified."""
        with_checksum = self.verify_mode != REREAD
        try:
            self._upload(manager, key, item, with_checksum)
        except Exception as exc:
            if not (with_checksum and _refuses_checksums(exc)):
                raise
            self._upload(manager, key, item, with_checksum=False)  # a store that refuses checksum headers
            with_checksum = False
        how = self._verify(manager, key, item.digest, with_checksum)
        if item.rel.startswith(BLOB_ENTRY):
            self._blobs_seen.add(item.rel[len(BLOB_ENTRY):])  # content-addressed: the digest was checked
        elif isinstance(item.source, Path):
            st = item.source.stat()
            if (st.st_size, st.st_mtime_ns) != (item.entry["size"], item.entry["mtime_ns"]):
                raise SyncUnavailable(f"{item.source} changed while it was being uploaded; it will be uploaded again")
        return how

    def _upload(self, manager: Any, key: str, item: _Upload, with_checksum: bool) -> None:
        source = io.BytesIO(item.source) if isinstance(item.source, bytes) else str(item.source)
        extra = {"ChecksumAlgorithm": "SHA256"} if with_checksum else {}
        manager.upload(source, self.config.bucket, key, extra_args=extra,
                       subscribers=[_KnownSize(item.digest.size)]).result()

    def _verify(self, manager: Any, key: str, digest: Digest, with_checksum: bool) -> str:
        if with_checksum:
            head = self.client.head_object(Bucket=self.config.bucket, Key=key, ChecksumMode="ENABLED")
            if head.get("ContentLength") != digest.size:
                raise self._mismatch(key, f"size {head.get('ContentLength')} vs {digest.size}")
            reported = head.get("ChecksumSHA256")
            if reported and digest.matches(reported):
                self._decide(CHECKSUM)
                return CHECKSUM
            # No checksum: the store keeps none. Another one: reading the object back tells a damaged
            # upload from a store that computes its checksums some other way.
        sink = _HashSink()
        manager.download(self.config.bucket, key, sink).result()
        if sink.size != digest.size or sink.sha256.digest() != digest.sha256:
            raise self._mismatch(key, f"read back {sink.size} bytes with SHA-256 {sink.sha256.hexdigest()[:16]}, "
                                      f"expected {digest.size} bytes with {digest.hex[:16]}")
        self._decide(REREAD)
        return REREAD

    def _mismatch(self, key: str, detail: str) -> SyncUnavailable:
        return SyncUnavailable(f"s3://{self.config.bucket}/{key} does not match the local file ({detail}); "
                               "it will be uploaded again")

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
        pulled_record = False
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
                        pulled_record = True
                    else:
                        dest = run / rel
                    self._download(obj["Key"], dest)
                    count += 1
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, self.config) from None
        if count == 0:
            raise SyncError(f"nothing under s3://{self.config.bucket}/{prefix}; check the job id and --experiment")
        if pulled_record:
            # A record that arrives from the bucket is a new job here: listings find jobs
            # through the summary, so it gets its line there like any record the store writes.
            self.store.summary.append([summary_line(self.store.read_record(job_id))])
        return count + self._pull_blobs(job_id)

    def _pull_blobs(self, job_id: str) -> int:
        """The provenance blobs the job's record refers to that are missing here (uploaded by
        an earlier sync; runs synced before blobs were mirrored have none in the bucket)."""
        from dr_exp.provenance import blob_names

        try:
            prov = self.store.read_record(job_id).provenance
        except Exception:  # noqa: BLE001 - no readable record: nothing refers to a blob
            return 0
        count = 0
        for sha, kind in blob_names(prov):
            try:
                dest = self.store.layout.provenance_file(sha, kind)
            except ValueError:
                continue
            if dest.exists():
                continue
            try:
                self._download(self.blob_key(dest.name), dest)
            except Exception as exc:  # noqa: BLE001
                if _status(exc) == 404:
                    continue
                raise translate(exc, self.config) from None
            count += 1
        return count

    def _download(self, key: str, dest: Path) -> None:
        """One object to ``dest``, whole or not at all (through a temp file beside it)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.pull.tmp")
        try:
            self.client.download_file(self.config.bucket, key, str(tmp), Config=self.transfer_config)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
