"""Plots as files (PNG, SVG, PDF) with matplotlib, on any node, without a display.

- :func:`curve_plot`: a metric per epoch, one line per job labelled by the parameters that differ
  between the jobs (stages of multi-stage runs laid end to end); or, grouped (``group_by`` some
  parameters, or ``average_over`` e.g. the seed), one mean line with a ± std band per group.
- :func:`param_plot`: one value per job (final, best, max or min of a metric) against a
  parameter, with the mean per value; a log axis when the values span a decade or more.

Figures are drawn with ``matplotlib.figure.Figure`` and the Agg canvas directly, so neither
pyplot nor a GUI backend is ever loaded. Data comes from :mod:`dr_exp.dashboard.data`.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dr_exp.dashboard.data import ExperimentReader
from dr_exp.dashboard.payload import check_sweep, coerce, flatten, select, series_of
from dr_exp.errors import ViewError
from dr_exp.job import JobRecord
from dr_exp.results import params_of

FORMATS = (".png", ".svg", ".pdf")
VALUES = ("final", "best", "max", "min")
LEGEND_MAX = 24


@dataclass
class Plotted:
    """What a plot shows: where it was written, how many lines (or points) and jobs."""

    path: Path
    lines: int
    jobs: int


def lower_is_better(metric: str) -> bool:
    """``best`` means the minimum for losses and errors, the maximum otherwise."""
    name = metric.lower()
    return any(word in name for word in ("loss", "err", "perplexity"))


def check_out(out: str | os.PathLike[str], formats: Sequence[str] = FORMATS) -> Path:
    """An output path that can be written, checked before any work is done."""
    path = Path(out).expanduser()
    if path.suffix.lower() not in formats:
        raise ViewError(f"--out {out}: use a file name ending in {', '.join(formats)}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ViewError(f"cannot write {out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ViewError(f"cannot write {out}: permission denied; choose another --out")
    if path.is_dir():
        raise ViewError(f"cannot write {out}: it is a directory; give a file name")
    return path


def write_output(path: Path, write: Callable[[str], None]) -> None:
    """Write an output file whole or not at all: ``write(temp_path)``, then rename. The file gets
    the usual permissions for a new file (0666 less the umask), not the temp file's 0600."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as exc:
        raise ViewError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _save(fig: Any, path: Path) -> None:
    write_output(path, lambda tmp: fig.savefig(tmp, format=path.suffix[1:].lower(), bbox_inches="tight"))


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ViewError("dr_exp plot needs matplotlib: pip install 'dr_exp[view]' (or pip install matplotlib); "
                        "the dashboard and dr_exp report work without it") from None
    return matplotlib


def _colors(n: int) -> list[Any]:
    matplotlib = _matplotlib()

    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(n)]
    cmap = matplotlib.colormaps["turbo"]
    return [cmap(0.05 + 0.9 * i / (n - 1)) for i in range(n)]


def _labels(records: list[JobRecord], keys: Sequence[str] | None = None) -> dict[str, str]:
    """Per job, the parameters that differ between the jobs (``lr=0.1 seed=2``)."""
    params = {r.id: params_of(r) for r in records}
    if keys is None:
        all_keys = list(dict.fromkeys(k for p in params.values() for k in p))
        keys = [k for k in all_keys if len({p.get(k) for p in params.values()}) > 1]
    out = {}
    for rec in records:
        p = params[rec.id]
        shown = [k for k in keys if k in p]
        out[rec.id] = " ".join(f"{k}={p[k]}" for k in shown) if shown else rec.id[:8]
    return out


def _figure(wide: bool) -> tuple[Any, Any]:
    _matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11 if wide else 8, 5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    ax.grid(True, color="#e5e7eb", linewidth=0.8)
    ax.set_axisbelow(True)
    return fig, ax


def _legend(ax: Any, n: int) -> None:
    if 0 < n <= LEGEND_MAX:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _selected(er: ExperimentReader, sweep: str | None, tags: str | None, status: str | None) -> list[JobRecord]:
    records = er.scan().records
    check_sweep(records, sweep)
    chosen = select(records, status, tags, sweep)
    if not chosen:
        raise ViewError(f"no jobs match in experiment {er.name} (status={status or 'any'}, tags={tags or 'any'}, "
                        f"sweep={sweep or 'any'}); `dr_exp job list` shows what is there")
    return chosen


def _unknown_metric(metric: str, known: set[str]) -> ViewError:
    return ViewError(f"no selected job has logged metric {metric!r}; "
                     f"metrics: {', '.join(sorted(known)) or 'none yet'} (see `dr_exp results`)")


def curve_plot(er: ExperimentReader, metric: str, out: str | os.PathLike[str], sweep: str | None = None,
               tags: str | None = None, status: str | None = None, group_by: Sequence[str] = (),
               average_over: Sequence[str] = (), title: str | None = None) -> Plotted:
    """``metric`` per epoch: a line per job, or a mean ± std band per group of jobs."""
    path = check_out(out)
    records = _selected(er, sweep, tags, status)
    series: dict[str, tuple[list[float], list[float]]] = {}
    known: set[str] = set()
    stages: list[list[dict[str, Any]]] = []
    for rec in records:
        curves = series_of(er.metrics(rec).rows)
        known.update(curves["epoch"])
        if metric in curves["epoch"]:
            xs, ys = curves["epoch"][metric]
            series[rec.id] = (xs, ys)
            stages.append(curves["stages"])
    if not series:
        raise _unknown_metric(metric, known)
    plotted = [r for r in records if r.id in series]
    grouping = bool(group_by or average_over)
    fig, ax = _figure(wide=len(plotted) > 1)
    if grouping:
        lines = _grouped(ax, plotted, series, group_by, average_over)
    else:
        labels = _labels(plotted)
        for rec, color in zip(plotted, _colors(len(plotted)), strict=True):
            xs, ys = series[rec.id]
            ax.plot(xs, ys, color=color, linewidth=1.8, label=labels[rec.id], marker="o" if len(xs) == 1 else None)
        lines = len(plotted)
    if stages and all(s == stages[0] for s in stages) and len(stages[0]) > 1:
        for stage in stages[0][1:]:
            ax.axvline(stage["epoch"] - 0.5, color="#a78bfa", linestyle=":", linewidth=1)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} per epoch · {er.name}" + (f" · sweep {sweep}" if sweep else ""), fontsize=11)
    _legend(ax, lines)
    _save(fig, path)
    return Plotted(path, lines, len(plotted))


def _grouped(ax: Any, records: list[JobRecord], series: dict[str, tuple[list[float], list[float]]],
             group_by: Sequence[str], average_over: Sequence[str]) -> int:
    params = {r.id: params_of(r) for r in records}
    every = list(dict.fromkeys(k for p in params.values() for k in p))
    if group_by:
        unknown = [k for k in group_by if k not in every]
        if unknown:
            raise ViewError(f"--group-by {','.join(unknown)}: no such parameter; parameters: {', '.join(every) or 'none'}")
        keys = list(group_by)
    else:
        unknown = [k for k in average_over if k not in every]
        if unknown:
            raise ViewError(f"--average-over {','.join(unknown)}: no such parameter; parameters: {', '.join(every) or 'none'}")
        keys = [k for k in every if k not in average_over and len({p.get(k) for p in params.values()}) > 1]
    groups: dict[tuple[str, ...], list[str]] = {}
    for rec in records:
        groups.setdefault(tuple(params[rec.id].get(k, "-") for k in keys), []).append(rec.id)
    for (values, ids), color in zip(groups.items(), _colors(len(groups)), strict=True):
        by_x: dict[float, list[float]] = {}
        for job_id in ids:
            for x, y in zip(*series[job_id], strict=True):
                by_x.setdefault(x, []).append(y)
        xs = sorted(by_x)
        mean = [sum(by_x[x]) / len(by_x[x]) for x in xs]
        std = [math.sqrt(sum((v - m) ** 2 for v in by_x[x]) / len(by_x[x])) for x, m in zip(xs, mean, strict=True)]
        label = " ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True)) or "all jobs"
        ax.plot(xs, mean, color=color, linewidth=1.8, label=f"{label} (n={len(ids)})")
        ax.fill_between(xs, [m - s for m, s in zip(mean, std, strict=True)], [m + s for m, s in zip(mean, std, strict=True)],
                        color=color, alpha=0.2, linewidth=0)
    return len(groups)


def job_value(er: ExperimentReader, rec: JobRecord, metric: str, value: str) -> float | None:
    """One number per job: its final ``metric`` (the result's, else the last epoch's), or the
    best, max or min over its epochs."""
    if value not in VALUES:
        raise ViewError(f"--value {value!r}: use one of {', '.join(VALUES)}")
    curve = series_of(er.metrics(rec).rows)["epoch"].get(metric)
    ys = [y for y in (curve[1] if curve else []) if not math.isnan(y)]
    if value == "final" or not ys:
        final = flatten((rec.result or {}).get("metrics") or {}).get(metric)
        if isinstance(final, (int, float)) and not isinstance(final, bool):
            return float(final)
        return ys[-1] if ys else None
    if value == "best":
        value = "min" if lower_is_better(metric) else "max"
    return min(ys) if value == "min" else max(ys)


def param_plot(er: ExperimentReader, x: str, y: str, out: str | os.PathLike[str], value: str = "final",
               sweep: str | None = None, tags: str | None = None, status: str | None = None,
               title: str | None = None) -> Plotted:
    """A value of ``y`` per job against the job's parameter ``x``."""
    path = check_out(out)
    if value not in VALUES:
        raise ViewError(f"--value {value!r}: use one of {', '.join(VALUES)}")
    records = _selected(er, sweep, tags, status)
    every = list(dict.fromkeys(k for r in records for k in params_of(r)))
    if x not in every:
        raise ViewError(f"--x {x}: no selected job has this parameter; parameters: {', '.join(every) or 'none'}")
    points: list[tuple[Any, float]] = []
    known: set[str] = set()
    for rec in records:
        p = params_of(rec)
        v = job_value(er, rec, y, value)
        if v is None:
            known.update(series_of(er.metrics(rec).rows)["epoch"])
            known.update(flatten((rec.result or {}).get("metrics") or {}))
            continue
        if x in p:
            points.append((coerce(p[x]), v))
    if not points:
        raise _unknown_metric(y, known)
    numeric = all(isinstance(px, (int, float)) for px, _ in points)
    fig, ax = _figure(wide=False)
    if numeric:
        xs = [float(px) for px, _ in points]
        if min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
    else:
        cats = sorted({str(px) for px, _ in points})
        xs = [float(cats.index(str(px))) for px, _ in points]
        ax.set_xticks(range(len(cats)), cats)
    ys = [v for _, v in points]
    by_x: dict[float, list[float]] = {}
    for px, py in zip(xs, ys, strict=True):
        by_x.setdefault(px, []).append(py)
    mx = sorted(by_x)
    ax.plot(mx, [sum(by_x[v]) / len(by_x[v]) for v in mx], color="#9ca3af", linewidth=1.5, label="mean", zorder=1)
    ax.scatter(xs, ys, s=28, color="#1f77b4", alpha=0.8, label=f"{value} {y} per job", zorder=2)
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} ({value})")
    ax.set_title(title or f"{value} {y} vs {x} · {er.name}" + (f" · sweep {sweep}" if sweep else ""), fontsize=11)
    ax.legend(fontsize=8, frameon=False)
    _save(fig, path)
    return Plotted(path, len(points), len(records))


def study_plot(er: ExperimentReader, name: str, out: str | os.PathLike[str] | None = None,
               title: str | None = None) -> Plotted:
    """An adaptive sweep's study: the objective of each trial against its number (complete
    trials as dots, pruned ones as crosses at their last reported value), the best so far, and
    Optuna's parameter importances beside it once there are enough complete trials."""
    from dr_exp.study import load_study

    view = load_study(er.exp, name)
    path = check_out(out or f"study-{view.name}.png")
    spec, importances = view.spec, view.importances()
    _matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(12 if importances else 8, 5), dpi=120, layout="constrained")
    ax = fig.add_subplot(1, 2, 1) if importances else fig.add_subplot()
    ax.grid(True, color="#e5e7eb", linewidth=0.8)
    ax.set_axisbelow(True)
    done = [t for t in view.trials if t.state == "complete" and t.value is not None and math.isfinite(t.value)]
    pruned = [t for t in view.trials if t.state == "pruned" and t.intermediate]
    if not done and not pruned:
        raise ViewError(f"study {view.name} has no complete or pruned trial yet; `dr_exp study show {view.name}`")
    better = max if spec.mode == "max" else min
    best: list[float] = []
    for t in done:
        best.append(t.value if not best else better(best[-1], t.value))
    ax.scatter([t.number for t in done], [t.value for t in done], s=28, color="#1f77b4", label="complete", zorder=2)
    if pruned:
        ax.scatter([t.number for t in pruned], [list(t.intermediate.values())[-1] for t in pruned], marker="x", s=28,
                   color="#a16207", label="pruned (last reported)", zorder=2)
    if done:
        ax.step([t.number for t in done], best, where="post", color="#dc2626", linewidth=1.8, label=f"best ({spec.mode})")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers, never 0.5
    ax.set_ylabel(spec.metric)
    ax.set_title(title or f"study {view.name} · {spec.sampler}, pruner {spec.pruner} · {er.name}", fontsize=11)
    ax.legend(fontsize=8, frameon=False)
    if importances:
        side = fig.add_subplot(1, 2, 2)
        names = list(importances)[::-1]
        side.barh(names, [importances[k] for k in names], color="#16a34a")
        side.set_xlabel("importance (Optuna, fANOVA)")
        side.set_title("parameter importances", fontsize=11)
    _save(fig, path)
    return Plotted(path, len(done) + len(pruned), len(view.trials))
