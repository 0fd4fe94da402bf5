"""Compare a candidate with a baseline, metric by metric, with a verdict a CI script can read.

**Selectors** name a set of jobs: ``sweep:ID`` (a sweep id or a unique prefix), ``tags:a,b`` (jobs
carrying all these tags), ``jobs:ID,ID`` (job ids or unique prefixes), or the bare value, which is
taken as whichever of the three it matches (an error if none, or more than one). ``EXP/`` in front
(``nightly/sweep:ID``) selects from another experiment in the same base path.

**Matching.** Seeds are aggregated: jobs are grouped by the parameters (overrides and sweep values)
that vary within the baseline or within the candidate, seed keys excluded, and groups with equal
values are compared (mean, sample std, n per side). Parameters that are fixed on each side, such as
the change under test, do not take part.

**Verdicts.** For each metric (``NAME[:max|min]``, default ``max``), the degradation of a group is how
much worse the candidate's mean is than the baseline's (``baseline - candidate`` for ``max``,
``candidate - baseline`` for ``min``): more than the tolerance is ``fail``, more than ``warn`` is
``warn``, else ``ok``; a metric takes its worst group, the comparison its worst metric. A failed job
in the candidate fails the comparison. Thresholds are absolute, or relative to the baseline's
mean with a ``%`` (``1%``). Exit status: 0 for ``ok`` and ``warn``, 1 for ``fail``; bad input is a
:class:`DrExpError` (exit status 2) and nothing is written.
"""

from __future__ import annotations

import math
import os
import re
import statistics
from dataclasses import dataclass
from typing import Any

from dr_exp.api import Experiment
from dr_exp.errors import DrExpError
from dr_exp.job import JobRecord
from dr_exp.layout import validate_name
from dr_exp.provenance import is_seed_key
from dr_exp.results import params_of
from dr_exp.state import Status

KINDS = ("sweep", "tags", "jobs")
VERDICTS = ("ok", "warn", "fail")
EXIT_STATUS = {"ok": 0, "warn": 0, "fail": 1}
DEFAULT_TOLERANCE = "0.01"
DEFAULT_WARN = "0.005"
SYNTAX = "use sweep:ID, tags:a,b or jobs:ID,ID (EXP/ in front for another experiment)"
_SELECTOR_RE = re.compile(r"(?:(?P<exp>[^/:]+)/)?(?:(?P<kind>[a-z]+):)?(?P<value>.*)", re.S)


@dataclass(frozen=True)
class Selector:
    text: str
    experiment: str | None
    kind: str | None  # None: auto-detect
    value: str


def parse_selector(text: str) -> Selector:
    m = _SELECTOR_RE.fullmatch(text.strip())
    if m is None or not m.group("value").strip():
        raise DrExpError(f"selector {text!r} is empty; {SYNTAX}")
    kind = m.group("kind")
    if kind is not None and kind not in KINDS:
        raise DrExpError(f"selector {text!r}: unknown kind {kind!r}; {SYNTAX}")
    experiment = m.group("exp")
    if experiment is not None:
        validate_name(experiment)
    return Selector(text, experiment, kind, m.group("value").strip())


@dataclass
class Selection:
    label: str
    experiment: str
    records: list[JobRecord]


def _items(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def select(base_path: str | os.PathLike[str] | None, experiment: str | None, text: str) -> Selection:
    """The jobs a selector names (read-only; one listing of the experiment)."""
    sel = parse_selector(text)
    exp = Experiment(base_path, sel.experiment or experiment)
    exp.require()
    records = exp.list()
    found: dict[str, list[JobRecord]] = {}
    kinds = [sel.kind] if sel.kind else list(KINDS)
    problems: dict[str, str] = {}
    for kind in kinds:
        if kind == "sweep":
            sweeps = {r.sweep_id for r in records if r.sweep_id and r.sweep_id.startswith(sel.value)}
            if len(sweeps) > 1:
                problems[kind] = f"sweep id prefix {sel.value!r} matches {len(sweeps)} sweeps; give more characters"
            elif sweeps:
                found[kind] = [r for r in records if r.sweep_id in sweeps]
            else:
                problems[kind] = f"no sweep {sel.value!r}"
        elif kind == "tags":
            want = set(_items(sel.value))
            hits = [r for r in records if want <= set(r.tags)]
            if hits:
                found[kind] = hits
            else:
                problems[kind] = f"no job carries the tags {','.join(sorted(want))}"
        else:
            hits, missing = [], []
            for prefix in _items(sel.value):
                match = [r for r in records if r.id.startswith(prefix.lower())]
                if len(match) == 1:
                    hits.append(match[0])
                elif match:
                    problems[kind] = f"job id prefix {prefix!r} is ambiguous ({len(match)} jobs); give more characters"
                else:
                    missing.append(prefix)
            if missing:
                problems[kind] = f"no job {', '.join(missing)}"
            elif kind not in problems:
                found[kind] = list({r.id: r for r in hits}.values())
    where = f"in experiment {exp.name}"
    if sel.kind:
        if sel.kind not in found:
            raise DrExpError(f"selector {text!r}: {problems[sel.kind]} {where}; `dr_exp job list` shows sweeps, tags and ids")
    elif not found:
        raise DrExpError(f"selector {text!r} matches no sweep, tag or job id {where}; {SYNTAX}")
    elif len(found) > 1:
        raise DrExpError(f"selector {text!r} is ambiguous {where}: it matches "
                         f"{' and '.join(f'{k}:{sel.value}' for k in found)}; write one of those")
    kind, hits = next(iter(found.items()))
    return Selection(f"{exp.name}/{kind}:{sel.value}", exp.name, hits)


# -- metrics and thresholds --------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricSpec:
    name: str
    direction: str  # "max": higher is better; "min": lower is better


def parse_metrics(specs: list[str] | tuple[str, ...]) -> list[MetricSpec]:
    if not specs:
        raise DrExpError("give at least one --metric NAME[:max|min], e.g. --metric val/acc:max")
    out: dict[str, MetricSpec] = {}
    for spec in specs:
        name, sep, direction = spec.strip().rpartition(":")
        if not sep:
            name, direction = spec.strip(), "max"
        if not name or direction not in ("max", "min"):
            raise DrExpError(f"--metric {spec!r}: write NAME, NAME:max (higher is better) or NAME:min (lower is better)")
        if name in out and out[name].direction != direction:
            raise DrExpError(f"--metric {name} is given as both :{out[name].direction} and :{direction}; "
                             "a metric has one direction")
        out[name] = MetricSpec(name, direction)
    return list(out.values())


@dataclass(frozen=True)
class Threshold:
    value: float
    relative: bool

    def of(self, baseline: float) -> float:
        return self.value * abs(baseline) if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g}"


def parse_threshold(text: str | float, option: str) -> Threshold:
    raw = str(text).strip()
    relative = raw.endswith("%")
    try:
        value = float(raw[:-1] if relative else raw)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value >= 0):
        raise DrExpError(f"{option} {text!r} must be a number >= 0 (absolute) or a percentage such as 1% "
                         "(of the baseline's mean)")
    return Threshold(value / 100 if relative else value, relative)


# -- the comparison ------------------------------------------------------------------------------
def _metric(rec: JobRecord, name: str) -> float | None:
    metrics = (rec.result or {}).get("metrics") or {}
    value: Any = metrics.get(name)
    if value is None and "." in name:  # nested metrics dicts are addressed with dots
        value = metrics
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    return float(value) if type(value) in (int, float) else None


def _stats(values: list[float], jobs: list[str]) -> dict[str, Any]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 and all(math.isfinite(v) for v in values) else 0.0
    return {"mean": mean, "std": std, "n": len(values), "values": values, "jobs": jobs}


def _side(sel: Selection, what: str) -> dict[str, Any]:
    by_status: dict[str, int] = {}
    for r in sel.records:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    unfinished = by_status.get(Status.PENDING, 0) + by_status.get(Status.RUNNING, 0)
    if unfinished:
        raise DrExpError(f"{unfinished} of the {what}'s {len(sel.records)} jobs ({sel.label}) are not finished; "
                         "compare once they are (e.g. after `dr_exp system worker --idle-timeout 0`)")
    return {"selector": sel.label, "jobs": len(sel.records), "by_status": by_status,
            "flagged": sum(1 for r in sel.records if (r.result or {}).get("flags"))}


def _worst(verdicts: list[str]) -> str:
    return max(verdicts, key=VERDICTS.index) if verdicts else "ok"


def compare(baseline: Selection, candidate: Selection, metrics: list[MetricSpec], tolerance: Threshold,
            warn: Threshold) -> dict[str, Any]:
    """The comparison as a JSON-ready report (see the module docstring for the rules)."""
    if warn.relative == tolerance.relative and warn.value > tolerance.value:
        raise DrExpError(f"--warn {warn} is above --tolerance {tolerance}; warn must be at most the tolerance")
    report: dict[str, Any] = {"baseline": _side(baseline, "baseline"), "candidate": _side(candidate, "candidate"),
                              "tolerance": str(tolerance), "warn": str(warn)}
    sides = {"baseline": [r for r in baseline.records if r.status == Status.COMPLETED],
             "candidate": [r for r in candidate.records if r.status == Status.COMPLETED]}
    params = {side: {r.id: {k: v for k, v in params_of(r).items() if not is_seed_key(k)} for r in recs}
              for side, recs in sides.items()}
    group_by = sorted({k for side in params.values() for p in side.values() for k in p
                       if len({q.get(k) for q in side.values()}) > 1})
    report["group_by"] = group_by

    def key_of(side: str, rec: JobRecord) -> tuple[tuple[str, str | None], ...]:
        return tuple((k, params[side][rec.id].get(k)) for k in group_by)

    groups: dict[str, dict[tuple, list[JobRecord]]] = {side: {} for side in sides}
    for side, recs in sides.items():
        for rec in recs:
            groups[side].setdefault(key_of(side, rec), []).append(rec)
    common = [k for k in groups["baseline"] if k in groups["candidate"]]
    report["unmatched"] = {side: [dict(k) for k in groups[side] if k not in common] for side in sides}
    if not common:
        raise DrExpError(f"no group of jobs matches between the baseline ({baseline.label}) and the candidate "
                         f"({candidate.label}) on {', '.join(group_by) or 'their parameters'}; select comparable sweeps")
    report["metrics"] = {}
    for spec in metrics:
        for side, sel in (("baseline", baseline), ("candidate", candidate)):
            if not any(_metric(r, spec.name) is not None for r in sides[side]):
                have = sorted({k for r in sides[side] for k in ((r.result or {}).get("metrics") or {})})
                raise DrExpError(f"metric {spec.name!r}: no completed job of the {side} ({sel.label}) has it; "
                                 f"it has {', '.join(have[:12]) or 'no metrics'}")
        rows = []
        for key in common:
            row: dict[str, Any] = {"params": dict(key)}
            for side in sides:
                pairs = [(v, r.id) for r in groups[side][key] if (v := _metric(r, spec.name)) is not None]
                row[side] = _stats([v for v, _ in pairs], [j for _, j in pairs]) if pairs else None
            b, c = row["baseline"], row["candidate"]
            if b is None or c is None:
                row["verdict"] = None
                row["note"] = f"no {spec.name} in the {'baseline' if b is None else 'candidate'} for these parameters"
            else:
                delta = c["mean"] - b["mean"]
                worse = -delta if spec.direction == "max" else delta
                row.update(delta=delta, degradation=worse)
                if math.isnan(c["mean"]) and not math.isnan(b["mean"]):
                    row["verdict"] = "fail"
                elif math.isnan(worse):
                    row["verdict"] = "ok"
                else:
                    row["verdict"] = ("fail" if worse > tolerance.of(b["mean"]) else
                                      "warn" if worse > warn.of(b["mean"]) else "ok")
            rows.append(row)
        judged = [r for r in rows if r["verdict"] is not None]
        if not judged:
            raise DrExpError(f"metric {spec.name!r}: no parameter group has it in both the baseline and the candidate")
        worst = max(judged, key=lambda r: (VERDICTS.index(r["verdict"]), r["degradation"]
                                           if not math.isnan(r["degradation"]) else math.inf))
        report["metrics"][spec.name] = {"direction": spec.direction, "verdict": _worst([r["verdict"] for r in judged]),
                                        "worst": {"params": worst["params"], "delta": worst["delta"]}, "groups": rows}
    failed = report["candidate"]["by_status"].get(Status.FAILED, 0)
    verdicts = [m["verdict"] for m in report["metrics"].values()]
    report["failed_candidate_jobs"] = failed
    report["verdict"] = _worst([*verdicts, "fail" if failed else "ok"])
    report["exit_status"] = EXIT_STATUS[report["verdict"]]
    report["summary"] = summary_line(report)
    return report


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v if v is not None else '-'}" for k, v in params.items()) or "(all)"


def summary_line(report: dict[str, Any]) -> str:
    """One line for a CI log: ``compare: FAIL val/acc:max fail (-0.031 at lr=0.1, tolerance 0.01) ...``."""
    parts = []
    for name, m in report["metrics"].items():
        worst = m["worst"]
        where = f" at {_params_text(worst['params'])}" if worst["params"] else ""
        parts.append(f"{name}:{m['direction']} {m['verdict']} ({worst['delta']:+.4g}{where})")
    if report.get("failed_candidate_jobs"):
        parts.append(f"{report['failed_candidate_jobs']} candidate jobs failed")
    b, c = report["baseline"], report["candidate"]
    return (f"compare: {report['verdict'].upper()} {'; '.join(parts)} | tolerance {report['tolerance']}, "
            f"warn {report['warn']} | baseline {b['selector']} ({b['jobs']} jobs) vs candidate {c['selector']} "
            f"({c['jobs']} jobs)")


def table_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    def side(s: dict[str, Any] | None) -> str:
        return "-" if s is None else f"{s['mean']:.4g} ± {s['std']:.2g} (n={s['n']})"

    rows = []
    for name, m in report["metrics"].items():
        for g in m["groups"]:
            rows.append({"metric": f"{name}:{m['direction']}", "params": _params_text(g["params"]),
                         "baseline": side(g["baseline"]), "candidate": side(g["candidate"]),
                         "delta": f"{g['delta']:+.4g}" if "delta" in g else "-", "verdict": g["verdict"] or "-"})
    return rows
