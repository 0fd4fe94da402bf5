"""What the views show, as JSON-ready data: the job table, a job, its curves, a queue's status,
metric queries, and the bundle a static report embeds. The dashboard's page, its HTTP API and
``dr_exp report`` all use these, so the live and the static views show the same thing.

Functions that feed the server return a ``key`` next to the data: equal keys mean equal data, so
the server can answer from a cache (and with ``304 Not Modified``) while nothing changed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dr_exp.dashboard.data import ROW_KEYS, ExperimentReader, Reader
from dr_exp.errors import DrExpError, ViewError
from dr_exp.job import JobRecord
from dr_exp.progress import measure
from dr_exp.results import coerce, params_of
from dr_exp.state import Status

# Columns of every job row, before its parameters and metrics.
JOB_COLUMNS = ("id", "status", "priority", "tags", "sweep_id", "attempts", "created_at", "started_at",
               "finished_at", "duration", "epoch", "worker_id", "host", "error")
MAX_STEP_POINTS = 2000
# The job table may be up to this old (s): a poll's key and the table it then builds, and
# browsers polling together, share one pass over the records.
SCAN_MAX_AGE = 1.0
GROUP_BY = ("epoch", "job")
STATES = frozenset(s.value for s in Status)



def flatten(value: Any, prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Nested dicts as one level with dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    out = {} if out is None else out
    if isinstance(value, dict):
        for key, item in value.items():
            flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value
    return out


def select(records: Iterable[JobRecord], status: str | None = None, tags: str | None = None,
           sweep: str | None = None) -> list[JobRecord]:
    """Records in these states (comma-separated), with all these tags, of this sweep (a prefix)."""
    statuses = {s.strip() for s in status.split(",") if s.strip()} if status else None
    if statuses and not statuses <= STATES:
        raise ViewError(f"unknown status {', '.join(sorted(statuses - STATES))}; use one of {', '.join(sorted(STATES))}")
    want = {t.strip() for t in tags.split(",") if t.strip()} if tags else None
    return [r for r in records
            if (not statuses or r.status in statuses)
            and (not want or want.issubset(r.tags))
            and (not sweep or (r.sweep_id or "").startswith(sweep))]


def check_sweep(records: list[JobRecord], sweep: str | None) -> None:
    if sweep and not any((r.sweep_id or "").startswith(sweep) for r in records):
        known = sorted({r.sweep_id for r in records if r.sweep_id})
        raise ViewError(f"no sweep {sweep!r} in this experiment (sweeps: {', '.join(known) or 'none'}); "
                        "`dr_exp job list` shows each job's sweep")


class Views:
    """The payloads over all experiments of one base path; caches what it computed per job."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self._rows: dict[str, tuple[JobRecord, Any, list[Any], dict[str, Any], dict[str, Any], Any]] = {}
        self._tables: dict[tuple[Any, ...], tuple[Any, dict[str, Any], list[str]]] = {}
        self._layouts: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._encoded: dict[str, tuple[list[Any], Any, list[Any], str]] = {}
        self._sizes: dict[str, int] = {}  # per experiment, its jobs at the last table build
        self._lock = threading.RLock()

    def experiment(self, name: str) -> ExperimentReader:
        return self.reader.experiment(name)

    # -- the job table -------------------------------------------------------------------------
    def _row(self, rec: JobRecord, live: dict[str, Any] | None) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        """A job's fixed columns, parameters and metrics: final ones from its result, or for a
        job without one, ``live``: the last per-epoch values in its metrics file."""
        hit = self._rows.get(rec.id)
        if hit is not None and hit[0] is rec and hit[1] is live:
            return hit[2], hit[3], hit[4]
        metrics = flatten((rec.result or {}).get("metrics") or {})
        epoch = metrics.get("epochs")
        if live:
            epoch = live.get("epoch")
            for key, value in live.items():
                if key != "epoch":
                    metrics.setdefault(key, value)
        params = {k: coerce(v) for k, v in params_of(rec).items()}
        duration = round(rec.finished_at - rec.started_at, 3) if rec.finished_at and rec.started_at else None
        fixed = [rec.id, rec.status, rec.priority, rec.tags, rec.sweep_id, rec.attempts, rec.created_at,
                 rec.started_at, rec.finished_at, duration, epoch, rec.worker_id, rec.host,
                 (rec.error or {}).get("message")]
        self._rows[rec.id] = (rec, live, fixed, params, metrics, (tuple(params), tuple(metrics)))
        return fixed, params, metrics

    def table(self, name: str, status: str | None = None, tags: str | None = None,
              sweep: str | None = None) -> tuple[Any, dict[str, Any]]:
        """The job table: ``columns`` (each with its ``kind``: job, param or metric) and one row
        per job in claim order; counts per state, the sweeps, and the queue's progress."""
        with self._lock:  # one build at a time; a second caller then finds it done
            return self._table(name, status, tags, sweep)

    def _table(self, name: str, status: str | None, tags: str | None, sweep: str | None) -> tuple[Any, dict[str, Any]]:
        scan, records, lives, key = self._selection(name, status, tags, sweep)
        hit = self._tables.get(key[0:1] + key[2:5])
        if hit is not None and hit[0] == key:
            return hit[0], hit[1]
        built = [self._row(rec, live) for rec, live in zip(records, lives, strict=True)]
        param_keys: dict[str, None] = {}
        metric_keys: dict[str, None] = {}
        rows_cache = self._rows
        for shape in dict.fromkeys(rows_cache[rec.id][5] for rec in records):  # jobs share a few shapes
            param_keys.update(dict.fromkeys(shape[0]))
            metric_keys.update(dict.fromkeys(shape[1]))
        layout = (tuple(param_keys), tuple(metric_keys))
        if layout == self._layouts.get(name):
            layout = self._layouts[name]  # the same object, so rows can check it by identity
        self._layouts[name] = layout
        pk, mk = layout
        rows, encoded = [], []
        for rec, (fixed, params, metrics) in zip(records, built, strict=True):
            # Each row is laid out and JSON-encoded once, until its job or the columns change:
            # a table of 10,000 jobs of which one changed costs one row's work, not 10,000.
            hit = self._encoded.get(rec.id)
            if hit is None or hit[0] is not fixed or hit[1] is not layout:
                row = fixed + [params.get(k) for k in pk] + [metrics.get(k) for k in mk]
                hit = (fixed, layout, row, json.dumps(row, separators=(",", ":"), default=str))
                self._encoded[rec.id] = hit
            rows.append(hit[2])
            encoded.append(hit[3])
        columns = ([{"key": c, "kind": "job"} for c in JOB_COLUMNS] + [{"key": k, "kind": "param"} for k in pk]
                   + [{"key": k, "kind": "metric"} for k in mk])
        sweeps: dict[str, dict[str, Any]] = {}
        for rec in scan.records:
            if rec.sweep_id is not None:
                s = sweeps.get(rec.sweep_id)
                if s is None:
                    s = sweeps[rec.sweep_id] = {"id": rec.sweep_id, "jobs": 0, "params": {}, "studies": {},
                                                "created_at": rec.created_at}
                s["jobs"] += 1
                if rec.study:
                    s["studies"][rec.study["name"]] = None
                s["params"].update(dict.fromkeys(rec.sweep_params))
                s["created_at"] = min(s["created_at"], rec.created_at)
        progress = measure(scan.records).to_dict()
        payload = {
            "experiment": name, "columns": columns, "rows": rows, "total": len(scan.records),
            "counts": {k: progress[k] for k in ("pending", "running", "completed", "failed", "cancelled", "total")},
            "progress": progress, "problems": scan.problems[:20],
            "sweeps": sorted(({**s, "params": list(s["params"]), "studies": sorted(s["studies"])} for s in sweeps.values()),
                             key=lambda s: -s["created_at"]),
        }
        self._tables[key[0:1] + key[2:5]] = (key, payload, encoded)
        self._sizes[name] = len(scan.records)
        if len(self._rows) > 2 * sum(self._sizes.values()) + 100:  # forget removed jobs
            known = {r.id for n in self._sizes for r in self.experiment(n).scan(max_age=3600).records}
            for cache in (self._rows, self._encoded):
                for job_id in [k for k in cache if k not in known]:
                    del cache[job_id]
        return key, payload

    def _selection(self, name: str, status: str | None, tags: str | None,
                   sweep: str | None) -> tuple[Any, list[JobRecord], list[dict[str, Any] | None], Any]:
        """The scan, the selected records, the live metrics of those without a result, and the
        table's key: the scan's signature, the filters and which live metrics were read."""
        er = self.experiment(name)
        scan = er.scan(max_age=SCAN_MAX_AGE)
        records = select(scan.records, status, tags, sweep)
        lives = [None if rec.status == "completed" and rec.result else er.latest(rec) for rec in records]
        key = (name, scan.signature, status, tags, sweep, tuple(id(live) for live in lives if live is not None))
        return scan, records, lives, key

    def table_key(self, name: str, status: str | None = None, tags: str | None = None,
                  sweep: str | None = None) -> Any:
        """What :meth:`table` would return as its key, without building the table."""
        return self._selection(name, status, tags, sweep)[3]

    def table_json(self, name: str, status: str | None = None, tags: str | None = None,
                   sweep: str | None = None) -> tuple[Any, bytes]:
        """:meth:`table` as JSON bytes, put together from the rows' cached encodings."""
        with self._lock:
            key, payload = self.table(name, status, tags, sweep)
            encoded = self._tables[key[0:1] + key[2:5]][2]
        head = json.dumps({k: v for k, v in payload.items() if k != "rows"}, separators=(",", ":"), default=str)
        return key, f'{head[:-1]},"rows":[{",".join(encoded)}]}}'.encode()

    def experiments(self) -> list[dict[str, Any]]:
        out = []
        for name in self.reader.names():
            try:
                scan = self.experiment(name).scan()
            except ViewError:
                continue
            state = measure(scan.records)
            out.append({"name": name, **state.to_dict(),
                        "updated_at": max((r.updated_at for r in scan.records), default=None)})
        return out

    # -- one job -------------------------------------------------------------------------------
    def job(self, name: str, job_id: str) -> dict[str, Any]:
        """A job's record, parameters, error, checkpoints, recent events and metric names."""
        er = self.experiment(name)
        rec = er.record(job_id)
        log = er.metrics(rec)
        names: dict[str, None] = {}
        for row in log.rows:
            names.update(dict.fromkeys(k for k in row if k not in ROW_KEYS))
        return {
            "experiment": name, "id": rec.id, "record": rec.to_dict(),
            "params": {k: coerce(v) for k, v in params_of(rec).items()},
            "run_dir": _relative(er.run_dir(rec).root, er.root),
            "error_text": er.error_text(rec), "checkpoints": er.checkpoints(rec), "events": er.events(rec, 50),
            "metrics": list(names), "problems": log.problems[:20],
        }

    def curves(self, name: str, job_id: str) -> tuple[Any, dict[str, Any]]:
        """Every metric of a job: ``epoch`` series (x = epoch) from per-epoch rows and ``step``
        series (x = step) from per-batch rows, each as ``[xs, ys]``; stages of a multi-stage run
        are laid end to end (``stages`` says where each begins)."""
        er = self.experiment(name)
        rec = er.record(job_id)
        log = er.metrics(rec)
        return (name, job_id, log.ino, log.version), {"job_id": job_id, **series_of(log.rows)}

    def study(self, name: str, study: str) -> dict[str, Any]:
        """One study of an adaptive sweep, as ``dr_exp study show --format json`` prints it."""
        from dr_exp.study import load_study

        er = self.experiment(name)
        try:
            return {"experiment": name, **load_study(er.exp, study).to_dict()}
        except DrExpError as exc:  # no such study, Optuna not installed, a journal cut short
            raise ViewError(str(exc)) from None

    def log(self, name: str, job_id: str, offset: int | None) -> dict[str, Any]:
        er = self.experiment(name)
        rec = er.record(job_id)
        return {"job_id": job_id, "status": rec.status, **er.log_chunk(rec, offset)}

    # -- the guide's API -----------------------------------------------------------------------
    def status(self, name: str) -> dict[str, Any]:
        """Counts per state, jobs/minute and time to drain, and what is running now."""
        er = self.experiment(name)
        records = er.scan().records
        running = [{"job_id": r.id, "worker_id": r.worker_id, "host": r.host, "started_at": r.started_at,
                    "epoch": er.latest(r).get("epoch")} for r in records if r.status == "running"]
        return {"experiment": name, **measure(records).to_dict(), "running_jobs": running, "time": time.time()}

    def query(self, body: Any) -> dict[str, Any]:
        """``{"experiment", "metrics": [...], "group_by": "epoch"|"job"}`` (optional ``status``,
        ``tags``, ``sweep``, ``jobs``): one row per job and epoch, or one per job with final
        values. Metric names are as logged (``val/acc``); ``val_acc`` finds ``val/acc`` too."""
        if not isinstance(body, dict):
            raise ViewError('the query must be a JSON object such as {"experiment": "cifar10", "metrics": ["val/acc"]}')
        name = body.get("experiment")
        metrics = body.get("metrics")
        group_by = body.get("group_by", "epoch")
        if not isinstance(name, str):
            raise ViewError('"experiment" is required: the name of an experiment under the base path')
        if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
            raise ViewError('"metrics" must be a non-empty list of metric names, e.g. ["val/acc", "train/loss"]')
        if group_by not in GROUP_BY:
            raise ViewError(f'"group_by" must be one of {", ".join(GROUP_BY)}, not {group_by!r}')
        er = self.experiment(name)
        scan = er.scan()
        filters = {k: body.get(k) for k in ("status", "tags", "sweep")}
        for key, value in filters.items():
            if value is not None and not isinstance(value, str):
                raise ViewError(f'"{key}" must be a comma-separated string')
        check_sweep(scan.records, filters["sweep"])
        records = select(scan.records, **filters)
        if body.get("jobs") is not None:
            wanted = body["jobs"]
            if not isinstance(wanted, list):
                raise ViewError('"jobs" must be a list of job ids')
            records = [r for r in records if r.id in set(wanted)]
        per_job = {rec.id: series_of(er.metrics(rec).rows)["epoch"] for rec in records}
        finals = {rec.id: flatten((rec.result or {}).get("metrics") or {}) for rec in records}
        known = {m for s in per_job.values() for m in s} | {m for f in finals.values() for m in f}
        resolved = {m: resolve_metric(m, known) for m in metrics}
        out_rows: list[dict[str, Any]] = []
        for rec in records:
            base = {"job_id": rec.id, "status": rec.status, **{k: coerce(v) for k, v in params_of(rec).items()}}
            series = per_job[rec.id]
            if group_by == "job":
                row = dict(base)
                for asked, metric in resolved.items():
                    value = finals[rec.id].get(metric)
                    if value is None and metric in series and series[metric][1]:
                        value = series[metric][1][-1]
                    row[asked] = value
                out_rows.append(row)
                continue
            epochs: dict[int, dict[str, Any]] = {}
            for asked, metric in resolved.items():
                if metric in series:
                    for x, y in zip(*series[metric], strict=True):
                        epochs.setdefault(x, {})[asked] = y
            out_rows.extend({**base, "epoch": x, **values} for x, values in sorted(epochs.items()))
        return {"experiment": name, "group_by": group_by, "metrics": resolved, "jobs": len(records), "rows": out_rows}

    # -- the static report ---------------------------------------------------------------------
    def bundle(self, name: str, status: str | None = None, tags: str | None = None,
               sweep: str | None = None, log_lines: int = 200) -> dict[str, Any]:
        """Everything the report's views need, for the selected jobs: the table, and per job its
        details, curves and the end of its log; and the studies the selected trials belong to."""
        er = self.experiment(name)
        check_sweep(er.scan().records, sweep)
        _, table = self.table(name, status, tags, sweep)
        jobs, curves, logs, study_names = {}, {}, {}, {}
        for row in table["rows"]:
            job_id = row[0]
            jobs[job_id] = self.job(name, job_id)
            curves[job_id] = self.curves(name, job_id)[1]
            rec = er.record(job_id)
            text = er.log_chunk(rec)["text"]
            logs[job_id] = {"text": "\n".join(text.splitlines()[-log_lines:]), "offset": 0, "exists": bool(text)}
            if rec.study and isinstance(rec.study.get("name"), str):
                study_names[rec.study["name"]] = None
        studies = {}
        for study in study_names:
            try:
                studies[study] = self.study(name, study)
            except ViewError:
                pass  # the page says it is not in the report
        return {"experiment": name, "generated_at": time.time(), "table": table, "jobs": jobs,
                "curves": curves, "logs": logs, "studies": studies,
                "selection": {"status": status, "tags": tags, "sweep": sweep},
                "experiments": [{"name": name, **table["progress"]}]}


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def resolve_metric(name: str, known: set[str]) -> str:
    """``name`` if some job logged it; else ``val_acc`` style for ``val/acc``; else an error."""
    if name in known:
        return name
    for candidate in known:
        if candidate.replace("/", "_") == name:
            return candidate
    raise ViewError(f"no job logged metric {name!r}; metrics: {', '.join(sorted(known)) or 'none yet'}")


def series_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-epoch and per-step series of every metric in metrics rows (see :meth:`Views.curves`).

    An epoch logged twice (a resumed run) keeps its last value, as ``dr_exp curves`` does."""
    by_epoch: dict[str, dict[tuple[str, int], float]] = {}
    by_step: dict[str, dict[tuple[str, int], float]] = {}
    stage_order: dict[str, None] = {}
    last_epoch: dict[str, int] = {}
    last_step: dict[str, int] = {}
    for row in rows:
        stage = str(row.get("stage", ""))
        stage_order[stage] = None
        phase = row.get("phase", "epoch")
        epoch, step = row.get("epoch"), row.get("step")
        if isinstance(epoch, int):
            last_epoch[stage] = max(last_epoch.get(stage, 0), epoch)
        if isinstance(step, int):
            last_step[stage] = max(last_step.get(stage, 0), step)
        if phase == "epoch" and isinstance(epoch, int):
            target, x = by_epoch, epoch
        elif phase == "train_batch" and isinstance(step, int):
            target, x = by_step, step
        else:
            continue
        for key, value in row.items():
            if key not in ROW_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
                target.setdefault(key, {})[(stage, x)] = float(value)
    epoch_base: dict[str, int] = {}
    step_base: dict[str, int] = {}
    e = s = 0
    stages = []
    for stage in stage_order:
        epoch_base[stage], step_base[stage] = e, s
        stages.append({"name": stage, "epoch": e, "step": s})
        e += last_epoch.get(stage, -1) + 1
        s += last_step.get(stage, -1) + 1

    def lay(points: dict[tuple[str, int], float], base: dict[str, int], limit: int | None) -> list[list[float]]:
        pairs = sorted((base[stage] + x, y) for (stage, x), y in points.items())
        if limit and len(pairs) > limit:
            stride = -(-len(pairs) // limit)
            pairs = pairs[::stride] + ([pairs[-1]] if (len(pairs) - 1) % stride else [])
        return [[p[0] for p in pairs], [p[1] for p in pairs]]

    return {"epoch": {k: lay(v, epoch_base, None) for k, v in by_epoch.items()},
            "step": {k: lay(v, step_base, MAX_STEP_POINTS) for k, v in by_step.items()},
            "stages": stages if len(stages) > 1 else []}
