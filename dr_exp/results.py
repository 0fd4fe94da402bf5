"""The results table: one row per job, swept/overridden parameters and final metrics."""

from __future__ import annotations

import heapq
import itertools
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from dr_exp.job import JobRecord
from dr_exp.layout import Layout
from dr_exp.rundir import RunDir
from dr_exp.summary import block_lines, params_of


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def flags_text(rec: JobRecord) -> str:
    """The sanity flags a trainer put in its result (``flags: [...]``), comma-separated, or ""."""
    flags = (rec.result or {}).get("flags")
    if isinstance(flags, str):
        return flags
    return ",".join(str(f) for f in flags) if isinstance(flags, list) else ""


def coerce(value: Any) -> Any:
    """A parameter's text as the number it spells, if it spells one."""
    if not isinstance(value, str):
        return value
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


BUILTIN_COLUMNS = ("status", "duration", "job_id", "flags")


def result_rows(records: Iterable[JobRecord], metrics: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """One row per job: its parameters, its final metrics, then ``status``, ``duration`` and
    ``job_id``. A parameter named like a built-in column is shown as ``param:NAME``, a metric
    named like a built-in column or a parameter as ``metric:NAME``: nothing is overwritten."""
    wanted = list(metrics) if metrics else None
    return [result_row(params_of(rec), (rec.result or {}).get("metrics"), rec.status, rec.duration, rec.id, wanted,
                       flags_text(rec)) for rec in records]


def summary_rows(rows: Iterable[dict[str, Any]], metrics: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """:func:`result_rows` from summary rows (:mod:`dr_exp.summary`), streamed."""
    wanted = list(metrics) if metrics else None
    for row in rows:
        started, finished = row.get("started"), row.get("finished")
        duration = None if started is None else max(0.0, (finished if finished is not None else time.time()) - started)
        flags = row.get("flags")
        yield result_row(row.get("params") or {}, row.get("metrics"), row["status"], duration, row["id"], wanted,
                         ",".join(map(str, flags)) if isinstance(flags, list) else (flags or ""))


def top_summary_rows(blocks: Callable[[], Iterable[bytes]], key: str, reverse: bool, limit: int,
                     metrics: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """``results --sort KEY --limit N`` over the summary (``blocks()`` streams its lines in
    blocks). For a metric, one regex pass over each block finds the value in every line that
    has it, and only the top N lines are parsed into result rows: a million jobs cost one pass
    and a few N rows of memory. Rows without the key come last, in summary order."""
    def general() -> list[dict[str, Any]]:
        rows = (json.loads(line.decode()) for block in blocks() for line in block_lines(block))
        return sort_rows(summary_rows(rows, metrics), key, reverse, limit)

    if key.startswith("param:") or key in BUILTIN_COLUMNS:
        return general()
    metric = re.escape((key[7:] if key.startswith("metric:") else key).encode())
    # One line per job, whose metrics dict is flat (values are numbers, strings are escaped):
    # the search starts at the literal '"metrics":{' and reads no further than its closing brace.
    pattern = re.compile(rb'"metrics":\{[^}\n]*?"' + metric + rb'":(-?[0-9][0-9.eE+-]*|NaN|-?Infinity)')
    best: list[tuple[Any, int, bytes]] = []
    seen = 0
    for block in blocks():
        values = list(map(float, pattern.findall(block)))
        if not values:
            continue
        pick = sorted((heapq.nlargest if reverse else heapq.nsmallest)(limit, range(len(values)), key=values.__getitem__))
        lines: list[tuple[Any, int, bytes]] = []
        for i, m in enumerate(pattern.finditer(block)):  # the picked lines, and no further
            if i == pick[len(lines)]:
                start = block.rfind(b"\n", 0, m.start()) + 1
                lines.append((values[i], seen + i, block[start:block.index(b"\n", m.start()) + 1]))
                if len(lines) == len(pick):
                    break
        best = _nbest(best + lines, reverse, limit)
        seen += len(values)
    if not best:
        return general()  # not a metric of any job: a parameter, perhaps
    chosen = [line for _, _, line in best]
    if len(chosen) < limit:  # rows without the metric fill the rest, in order
        for block in blocks():
            chosen += itertools.islice((line for line in block_lines(block) if not pattern.search(line)),
                                       limit - len(chosen))
            if len(chosen) >= limit:
                break
    return list(summary_rows((json.loads(line.decode()) for line in chosen), metrics))


def _nbest(items: list[tuple[Any, int, Any]], reverse: bool, limit: int) -> list[tuple[Any, int, Any]]:
    """The first ``limit`` of (value, position, item), given in order of position, sorted by
    value; ties keep their order in either direction, as :func:`sort_rows` keeps them."""
    try:
        items.sort(key=lambda t: t[0], reverse=reverse)
    except TypeError:
        items.sort(key=lambda t: str(t[0]), reverse=reverse)
    return items[:limit]


def result_row(params: dict[str, str], metrics: Any, status: str, duration: float | None, job_id: str,
               wanted: list[str] | None = None, flags: str = "") -> dict[str, Any]:
    row: dict[str, Any] = {}
    for key, value in params.items():
        row[f"param:{key}" if key in BUILTIN_COLUMNS else key] = coerce(value)
    flat: dict[str, Any] = {}
    _flatten("", metrics if isinstance(metrics, dict) else {}, flat)
    for key, value in flat.items():
        if wanted is None or key in wanted:
            row[f"metric:{key}" if key in BUILTIN_COLUMNS or key in row else key] = value
    if flags:
        row["flags"] = flags
    row.update(status=status, duration=round(duration, 3) if duration is not None else None, job_id=job_id)
    return row


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        for key in row:
            if key not in cols:
                cols.append(key)
    return cols


def sort_rows(rows: Iterable[dict[str, Any]], key: str, reverse: bool = False,
              limit: int | None = None) -> list[dict[str, Any]]:
    """Sort by ``key``; rows without it go last whatever the direction. With ``limit``, only the
    first ``limit`` rows are kept, and memory stays within a few times ``limit`` rows."""
    present: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []
    for row in rows:
        if row.get(key) is None:
            if limit is None or len(missing) < limit:
                missing.append(row)
            continue
        present.append(row)
        if limit is not None and len(present) > 4 * limit:
            present = _top(present, key, reverse, limit)
    out = _top(present, key, reverse, limit) + missing
    return out[:limit] if limit else out


def _top(rows: list[dict[str, Any]], key: str, reverse: bool, limit: int | None) -> list[dict[str, Any]]:
    try:
        rows.sort(key=lambda r: r[key], reverse=reverse)
    except TypeError:
        rows.sort(key=lambda r: str(r[key]), reverse=reverse)
    return rows[:limit] if limit else rows


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
