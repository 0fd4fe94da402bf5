"""The results table: one row per job, swept/overridden parameters and final metrics."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dr_exp.job import JobRecord
from dr_exp.layout import Layout
from dr_exp.rundir import RunDir


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def params_of(rec: JobRecord) -> dict[str, str]:
    """The parameters a user chose for this run: its overrides (sweep points included)."""
    params: dict[str, str] = {}
    for item in rec.overrides:
        key, sep, value = item.partition("=")
        if sep:
            params[key.lstrip("+~")] = value
    params.update(rec.sweep_params)
    return params


def flags_text(rec: JobRecord) -> str:
    """The sanity flags a trainer put in its result (``flags: [...]``), comma-separated, or ""."""
    flags = (rec.result or {}).get("flags")
    if isinstance(flags, str):
        return flags
    return ",".join(str(f) for f in flags) if isinstance(flags, list) else ""


def _coerce(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def result_rows(records: Iterable[JobRecord], metrics: Iterable[str] | None = None) -> list[dict[str, Any]]:
    wanted = list(metrics) if metrics else None
    rows = []
    for rec in records:
        row: dict[str, Any] = {key: _coerce(value) for key, value in params_of(rec).items()}
        flat: dict[str, Any] = {}
        _flatten("", (rec.result or {}).get("metrics", {}), flat)
        for key, value in flat.items():
            if wanted is None or key in wanted:
                row[key] = value
        if flags_text(rec):
            row["flags"] = flags_text(rec)
        row.update(status=rec.status, duration=round(rec.duration, 3) if rec.duration is not None else None,
                   job_id=rec.id)
        rows.append(row)
    return rows


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        for key in row:
            if key not in cols:
                cols.append(key)
    return cols


def sort_rows(rows: list[dict[str, Any]], key: str, reverse: bool = False) -> list[dict[str, Any]]:
    """Sort by ``key``; rows without it go last whatever the direction."""
    present = [r for r in rows if r.get(key) is not None]
    missing = [r for r in rows if r.get(key) is None]
    try:
        present.sort(key=lambda r: r[key], reverse=reverse)
    except TypeError:
        present.sort(key=lambda r: str(r[key]), reverse=reverse)
    return present + missing


def to_dataframe(rows: list[dict[str, Any]]) -> Any:
    """A pandas DataFrame of the rows (pandas is optional)."""
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError("to_dataframe needs pandas: pip install pandas") from exc
    return pd.DataFrame(rows, columns=columns_of(rows))


def curves(records: Iterable[JobRecord], metric: str, root: str | os.PathLike[str],
           phase: str = "epoch", problems: list[str] | None = None) -> dict[str, list[tuple[int, float]]]:
    """Per job, the ``(epoch, value)`` points of ``metric`` from its ``metrics.jsonl`` (run
    directories are found below the experiment directory ``root``).

    Rows are keyed by epoch (and stage, for multi-stage runs): a resumed run that logged an
    epoch again keeps the last value, so every epoch appears once.
    """
    out: dict[str, list[tuple[int, float]]] = {}
    for rec in records:
        points: dict[tuple[str, int], float] = {}
        run = RunDir(Path(root) / (rec.storage_path or Layout.run_dir_relative(rec.id)))
        for row in run.read_metrics(problems if problems is not None else []):
            if row.get("phase", phase) != phase or metric not in row or "epoch" not in row:
                continue
            try:
                points[(str(row.get("stage", "")), int(row["epoch"]))] = float(row[metric])
            except (TypeError, ValueError):
                continue
        # Stages restart their epoch count; lay them end to end.
        series: list[tuple[int, float]] = []
        base = 0
        for stage in dict.fromkeys(s for s, _ in points):
            epochs = sorted(e for s, e in points if s == stage)
            series.extend((base + e, points[(stage, e)]) for e in epochs)
            base += (max(epochs) + 1) if epochs else 0
        if series:
            out[rec.id] = series
    return out
