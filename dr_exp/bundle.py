"""Repro bundles and reruns: everything that produced a run in one zip file, and queueing the
same run again, from its record or from a bundle.

A bundle holds::

    manifest.json               format, version, the job, and every file's size and SHA-256
    record.json                 the job record as it was when bundled
    run/...                     the run directory: config, provenance, metrics, events, result,
                                error, the train log, artifacts (checkpoints with --with-checkpoints)
    provenance/<sha256>.json    the submit capture (git state, packages, host, command line)
    provenance/<sha256>.diff    the uncommitted changes at submit, per repository (git apply)

A rerun queues the record's composed config exactly (same config hash; never skipped as a
duplicate), with its config source, overrides and sweep parameters, tagged ``rerun-of:<job id>``
and with ``rerun_of`` in its provenance. The code it runs is whatever the worker imports now:
:func:`code_notes` says when that differs from the original's commit or diff.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dr_exp import __version__
from dr_exp import provenance as _provenance
from dr_exp.api import Experiment, SubmitResult, parse_tags
from dr_exp.compose import ComposedConfig
from dr_exp.errors import DrExpError
from dr_exp.job import DEFAULT_PRIORITY, JobRecord
from dr_exp.layout import Layout
from dr_exp.rundir import RunDir

FORMAT = "dr_exp-bundle"
VERSION = 1
MANIFEST = "manifest.json"
RECORD = "record.json"
RUN = "run/"
BLOBS = "provenance/"
RERUN_TAG = "rerun-of:"
_CHUNK = 1 << 20


@dataclass
class BundleInfo:
    path: Path
    files: int
    bytes: int


@dataclass
class Bundle:
    """A bundle read back and checked: its record and its provenance blobs."""

    path: Path
    manifest: dict[str, Any]
    record: JobRecord
    blobs: dict[str, bytes]     # "<sha256>.json" / "<sha256>.diff" -> content


def _run_files(run: RunDir, with_checkpoints: bool) -> list[Path]:
    if not run.root.is_dir():
        return []
    out = []
    for path in sorted(run.root.rglob("*")):
        rel = path.relative_to(run.root).as_posix()
        if path.is_file() and not path.is_symlink() and not RunDir.is_private(rel) and path != run.packed \
                and (with_checkpoints or RunDir.checkpoint_kind(rel) is None):
            out.append(path)
    return out


def _packed_members(run: RunDir, on_disk: list[Path]) -> list[tuple[str, bytes]]:
    """The files of a packed run (`dr_exp pack`) that are not on disk, as they were."""
    if not run.packed.exists():
        return []
    with zipfile.ZipFile(run.packed) as zf:
        names = [n for n in zf.namelist() if not RunDir.is_private(n) and run.root / n not in on_disk]
        return [(n, zf.read(n)) for n in names]


def make_bundle(exp: Experiment, job_id: str, out: str | os.PathLike[str] | None = None,
                with_checkpoints: bool = False) -> BundleInfo:
    """Write the bundle of one job to ``out`` (default ``bundle-<id8>.zip``), whole or not at all."""
    rec = exp.get(job_id)
    run = exp.run_dir(rec)
    dest = Path(out if out is not None else f"bundle-{rec.id[:8]}.zip").expanduser()
    if dest.is_dir():
        raise DrExpError(f"--out {dest} is a directory; give a file name such as {dest / f'bundle-{rec.id[:8]}.zip'}")
    if not dest.parent.is_dir():
        raise DrExpError(f"cannot write {dest}: directory {dest.parent} does not exist")
    manifest: dict[str, Any] = {"format": FORMAT, "version": VERSION, "job_id": rec.id, "experiment": rec.experiment,
                                "status": rec.status, "created_at": time.time(), "dr_exp": __version__,
                                "with_checkpoints": with_checkpoints, "files": {}}
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    total = 0
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            def put(name: str, data: bytes) -> None:
                zf.writestr(name, data)
                manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

            put(RECORD, json.dumps(rec.to_dict(), indent=1, default=str).encode())
            files = _run_files(run, with_checkpoints)
            for path in files:
                name = RUN + path.relative_to(run.root).as_posix()
                digest = hashlib.sha256()
                info = zipfile.ZipInfo.from_file(path, name)
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(path, "rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        dst.write(chunk)
                        total += len(chunk)
                manifest["files"][name] = {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}
            for rel, data in _packed_members(run, files):
                put(RUN + rel, data)
                files.append(run.root / rel)
            if run.provenance not in files:  # never ran (or ran before provenance existed): the submit side
                doc = _provenance.run_document(exp.layout, rec.id, rec, rec.config)
                put(RUN + run.relative(run.provenance), json.dumps(doc, indent=1, default=str).encode())
            missing = []
            for sha, kind in _provenance.blob_names(rec.provenance):
                data = _provenance.read_blob(exp.layout, sha, kind)
                if data is None:
                    missing.append(f"{sha[:12]}.{kind}")
                else:
                    put(f"{BLOBS}{sha}.{kind}", data)
            manifest["missing"] = missing
            zf.writestr(MANIFEST, json.dumps(manifest, indent=1))
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return BundleInfo(dest, len(manifest["files"]), dest.stat().st_size)


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read a bundle and check it (format, version, record schema, every checksum)."""
    path = Path(path).expanduser()
    hint = "make one with `dr_exp job bundle ID --out run.zip`"
    if not path.is_file():
        raise DrExpError(f"bundle {path} does not exist; {hint}")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if MANIFEST not in names:
                raise DrExpError(f"{path} is not a dr_exp bundle (it has no {MANIFEST}); {hint}")
            manifest = json.loads(zf.read(MANIFEST))
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise DrExpError(f"{path} is not a dr_exp bundle ({MANIFEST} has no format {FORMAT!r}); {hint}")
            if not isinstance(manifest.get("version"), int) or manifest["version"] > VERSION:
                raise DrExpError(f"bundle {path} has version {manifest.get('version')!r}; this dr_exp reads up to "
                                 f"{VERSION}: upgrade dr_exp")
            files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
            for name, meta in files.items():
                digest = hashlib.sha256()
                with zf.open(name) as fh:
                    while chunk := fh.read(_CHUNK):
                        digest.update(chunk)
                if not isinstance(meta, dict) or digest.hexdigest() != meta.get("sha256"):
                    raise DrExpError(f"bundle {path} is damaged: {name} does not match its checksum; bundle the job again")
            if RECORD not in files:
                raise DrExpError(f"bundle {path} is damaged: it has no {RECORD}; bundle the job again")
            record = JobRecord.from_dict(json.loads(zf.read(RECORD)))
            blobs = {n[len(BLOBS):]: zf.read(n) for n in files if n.startswith(BLOBS)}
    except KeyError as exc:
        raise DrExpError(f"bundle {path} is damaged: {exc.args[0] if exc.args else exc}; bundle the job again") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DrExpError(f"{path} is not a readable dr_exp bundle ({exc}); {hint}") from None
    return Bundle(path, manifest, record, blobs)


# -- reruns --------------------------------------------------------------------------------------
def _composed(rec: JobRecord) -> ComposedConfig:
    config = dict(rec.config)
    if rec.resources:  # what the job needed from its worker (submit took it out of the config)
        config["resources"] = dict(rec.resources)
    return ComposedConfig(rec.config_path or "", rec.config_name or "", list(rec.overrides), config,
                          dict(rec.sweep_params))


def _origin(rec: JobRecord, bundle: str | None = None) -> dict[str, Any]:
    origin: dict[str, Any] = {"job": rec.id, "experiment": rec.experiment, "config_hash": rec.config_hash,
                              "git": list((rec.provenance or {}).get("git", []))}
    if bundle:
        origin["bundle"] = bundle
    return origin


def code_notes(origin_git: list[dict[str, Any]], now_git: list[dict[str, Any]]) -> list[str]:
    """Where the code a rerun will use differs from the code of the run it reruns."""
    notes = []
    for before in origin_git:
        if not before.get("commit"):
            continue
        match = next((g for g in now_git if set(g.get("holds", [])) & set(before.get("holds", []))), None)
        was = f"{before['commit'][:12]}" + (f" + diff provenance/{before['diff'][:12]}….diff" if before.get("diff") else "")
        if match is None or not match.get("commit"):
            notes.append(f"the original ran commit {was} of {before.get('repo')}; the rerun's code is not in a git "
                         "repository here, so it cannot be checked")
        elif match["commit"] != before["commit"] or match.get("diff") != before.get("diff"):
            now = f"{match['commit'][:12]}" + (" + uncommitted changes" if match.get("dirty") else "")
            notes.append(f"the original ran commit {was}; this checkout is {now}: results may differ "
                         f"(`git checkout {before['commit'][:12]}` and `git apply` the diff to run the same code)")
    return notes


def _requeue(exp: Experiment, records: list[JobRecord], origins: list[dict[str, Any]], tags: list[str],
             priority: int, sweep_id: str | None, max_attempts: int | None, timeout: float | None) -> SubmitResult:
    """One batch; unless given, attempts and timeout are the originals' (the same for a batch)."""
    first = records[0]
    return exp.submit_composed([_composed(r) for r in records], origins, priority=priority, tags=tags,
                               max_attempts=max_attempts or first.max_attempts, timeout=timeout or first.timeout,
                               max_worker_losses=first.max_worker_losses, sweep_id=sweep_id)


def _copy_blobs(layout: Layout, blobs: dict[str, bytes]) -> None:
    for name, data in blobs.items():
        sha, _, kind = name.partition(".")
        try:
            _provenance.put_blob(layout, sha, kind, data)
        except ValueError:
            continue  # not a blob name: ignore it


def rerun_jobs(source: Experiment, target: Experiment, job_ids: Iterable[str] = (), sweep_id: str | None = None,
               tags: str | Iterable[str] | None = None, priority: int = DEFAULT_PRIORITY, max_attempts: int | None = None,
               timeout: float | None = None) -> tuple[SubmitResult, list[str]]:
    """Queue jobs of ``source`` again in ``target`` (which may be the same experiment): each job
    given by id on its own, tagged ``rerun-of:<id>``; a whole sweep as one new sweep, tagged
    ``rerun-of-sweep:<id>``. Returns what was queued and notes on code differences."""
    user_tags = parse_tags(tags)
    singles = [source.get(j) for j in job_ids]  # every id is checked before anything is queued
    sweep: list[JobRecord] = []
    if sweep_id:
        sweep = source.list(sweep_id=sweep_id)
        if not sweep:
            raise DrExpError(f"no jobs of sweep {sweep_id!r} in {source.store.root}; `dr_exp job list` shows sweep ids")
        if len({r.sweep_id for r in sweep}) > 1:
            raise DrExpError(f"sweep id prefix {sweep_id!r} matches several sweeps; give more characters")
    if not singles and not sweep:
        raise DrExpError("give job ids to rerun, or --sweep ID")
    result = SubmitResult(sweep_id=None)
    batches = [([r], [RERUN_TAG + r.id], None) for r in singles]
    if sweep:
        batches.append((sweep, [f"rerun-of-sweep:{sweep[0].sweep_id}"], uuid.uuid4().hex[:12]))
    for records, tags_, new_sweep in batches:
        done = _requeue(target, records, [_origin(r) for r in records], [*tags_, *user_tags], priority, new_sweep,
                        max_attempts, timeout)
        result.submitted += done.submitted
        result.sweep_id = done.sweep_id or result.sweep_id
    records = singles + sweep
    if target.store.root != source.store.root:
        _copy_blobs(target.layout, {f"{sha}.{kind}": data for r in records for sha, kind in _provenance.blob_names(r.provenance)
                                    if (data := _provenance.read_blob(source.layout, sha, kind)) is not None})
    return result, _notes(records, result)


def submit_bundle(exp: Experiment, path: str | os.PathLike[str], tags: str | Iterable[str] | None = None,
                  priority: int = DEFAULT_PRIORITY, max_attempts: int | None = None,
                  timeout: float | None = None) -> tuple[SubmitResult, list[str]]:
    """Queue the run a bundle holds, in ``exp`` (``job submit --from-bundle``)."""
    bundle = load_bundle(path)
    rec = bundle.record
    result = _requeue(exp, [rec], [_origin(rec, bundle.path.name)], [RERUN_TAG + rec.id, *parse_tags(tags)],
                      priority, None, max_attempts, timeout)
    _copy_blobs(exp.layout, bundle.blobs)
    return result, _notes([rec], result)


def _notes(records: list[JobRecord], result: SubmitResult) -> list[str]:
    if not result.submitted:
        return []
    now = (result.submitted[0].provenance or {}).get("git", [])
    seen: set[str] = set()
    notes = []
    for rec in records:
        for note in code_notes((rec.provenance or {}).get("git", []), now):
            if note not in seen:
                seen.add(note)
                notes.append(note)
    return notes
