"""Advancing a study with no controller process: whoever ends a trial asks for the next one.

:func:`advance` runs under the study's lock and only looks at files (the journal and the job
records), so it does not matter who runs it or how often:

1. **settle**: every trial the study still counts as running whose job has finished is told how
   it ended: ``completed`` -> complete with the job's ``--metric`` (or the last reported value),
   ``pruned`` -> pruned, ``failed``/``cancelled`` -> failed, with the reason in the trial's
   ``fail_reason`` user attribute;
2. **repair**: a trial that was asked for but has no job id (its asker died in between) gets the
   job that was submitted for it, found by the record's ``study`` field, or else a new one;
3. **ask**: while fewer than ``parallel`` trials run and fewer than ``trials`` were asked, ask
   the sampler for a trial, compose its parameters onto the job config, submit it as a job
   (``study: {name, trial}`` in the record), and record the job id in the trial's user attribute
   ``job_id``.

It runs after every finished trial (the API's hook, :func:`trial_ended`, in the process that
recorded the end: a worker, or ``job recover`` for a lost one), from ``dr_exp job recover``
(:func:`repair_studies`), and from the sweep command for the first trials. A process that dies
anywhere in between leaves a state that the next run of the same steps completes: no trial
is lost and none is asked twice, because trials are counted by their state in the journal.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dr_exp.compose import ComposedConfig, compose_many, search_path
from dr_exp.errors import ConfigError, CorruptRecord, JobNotFound
from dr_exp.lock import RecordLock
from dr_exp.state import FINISHED, Status
from dr_exp.study.algorithms import make_pruner, make_sampler
from dr_exp.study.space import override_key
from dr_exp.study.spec import StudyFiles, StudySpec, import_optuna, open_storage, study_names
from dr_exp.targets import one_line

if TYPE_CHECKING:
    from dr_exp.api import Experiment
    from dr_exp.job import JobRecord

log = logging.getLogger("dr_exp.study")

LOCK_SECONDS = 120.0
# Test hook: DR_EXP_STUDY_TEST_CRASH="told:5,asked:9" makes the process die (os._exit) at that
# point for that trial number, so that tests can check that the next process repairs the gap.
CRASH_ENV = "DR_EXP_STUDY_TEST_CRASH"


def _crash_point(point: str, trial: int) -> None:
    wanted = os.environ.get(CRASH_ENV)
    if wanted and f"{point}:{trial}" in wanted.split(","):
        os._exit(70)


@dataclass
class Progress:
    """What one :func:`advance` did."""

    told: list[tuple[int, str]] = field(default_factory=list)     # (trial number, state)
    repaired: list[str] = field(default_factory=list)
    submitted: list[JobRecord] = field(default_factory=list)

    def lines(self, name: str) -> list[str]:
        out = [f"study {name}: trial {n} {state}" for n, state in self.told]
        out += [f"study {name}: {what}" for what in self.repaired]
        out += [f"study {name}: trial {r.study['trial']} submitted as job {r.id}" for r in self.submitted if r.study]
        return out


def advance(exp: Experiment, name: str) -> Progress:
    """Settle, repair and ask (see the module docstring), under the study's lock."""
    files = StudyFiles.of(exp.layout, name)
    spec = StudySpec.load(files)
    with RecordLock(files.lock, timeout=LOCK_SECONDS):
        return _Driver(exp, files, spec).advance()


def trial_ended(exp: Experiment, rec: JobRecord) -> None:
    """The API's hook after a trial's job has finished: advance its study. Never raises: the
    job's end is recorded already, and whatever is left undone here the next advance does."""
    assert rec.study is not None
    _crash_point("ended", rec.study["trial"])
    try:
        progress = advance(exp, rec.study["name"])
    except Exception as exc:
        log.warning("study %s: trial %s ended, but the study could not be advanced (%s); "
                    "the next trial's end or `dr_exp job recover` will", rec.study["name"], rec.study["trial"],
                    one_line(exc), exc_info=not isinstance(exc, (OSError, ConfigError)))
        return
    for line in progress.lines(rec.study["name"]):
        log.info("%s", line)


def repair_studies(exp: Experiment) -> list[str]:
    """Advance every study of the experiment (``dr_exp job recover``): what was done, and one
    line per study that could not be advanced."""
    out = []
    for name in study_names(exp.layout):
        try:
            out += advance(exp, name).lines(name)
        except Exception as exc:  # noqa: BLE001 - one broken study must not stop the others
            out.append(f"study {name}: could not advance: {one_line(exc)}")
    return out


_MAX_CONFIG_FILES = 2000
_composed: dict[tuple[str, ...], tuple[tuple[tuple[str, int], ...], dict[tuple[str, ...], Any]]] = {}


def _bases(spec: StudySpec) -> dict[tuple[str, ...], Any]:
    """Hydra's composition of the study's config, kept in this process across trials while no
    config file changes: composing takes ~0.1 s, applying a trial's values to it ~1 ms, and the
    process that advances a study holds its lock meanwhile."""
    key = (spec.config_path, spec.config_name, *spec.searchpath)
    roots = [Path(spec.config_path)] + [p for p in search_path(Path(spec.config_path), spec.config_name,
                                                               spec.searchpath) if isinstance(p, Path)]
    files: list[tuple[str, int]] = []
    for root in roots:
        for directory, subdirs, names in os.walk(root):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            for n in sorted(names):
                if n.endswith((".yaml", ".yml")):
                    try:
                        files.append((f"{directory}/{n}", os.stat(f"{directory}/{n}").st_mtime_ns))
                    except OSError:
                        files.append((f"{directory}/{n}", -1))
            if len(files) > _MAX_CONFIG_FILES:
                return {}  # not a config tree (a config beside a whole project?): compose afresh
    fingerprint = tuple(files)
    cached = _composed.get(key)
    if cached is None or cached[0] != fingerprint:
        cached = _composed[key] = (fingerprint, {})
    return cached[1]


class _Driver:
    def __init__(self, exp: Experiment, files: StudyFiles, spec: StudySpec) -> None:
        self.optuna = import_optuna()
        self.exp, self.files, self.spec = exp, files, spec
        self.params = spec.params()
        self.storage = open_storage(files)
        self.study = self.optuna.load_study(study_name=spec.name, storage=self.storage,
                                            sampler=make_sampler(spec, self.params, 0), pruner=make_pruner(spec.pruner))
        self.study_id = self.storage.get_study_id_from_name(spec.name)

    def _trials(self) -> list[Any]:
        return self.storage.get_all_trials(self.study_id, deepcopy=False)

    def advance(self) -> Progress:
        progress = Progress()
        running = self.optuna.trial.TrialState.RUNNING
        orphans = []
        for trial in self._trials():
            if trial.state != running:
                continue
            job_id = trial.user_attrs.get("job_id")
            if job_id is None:
                orphans.append(trial)
            else:
                self._settle(trial, job_id, progress)
        if orphans:
            self._repair(orphans, progress)
        trials = self._trials()
        active = sum(t.state == running for t in trials)
        room = min(self.spec.trials - len(trials), self.spec.parallel - active)
        if room > 0:
            self._ask(room, len(trials), progress)
        return progress

    # -- settle ------------------------------------------------------------------------------
    def _settle(self, trial: Any, job_id: str, progress: Progress) -> None:
        try:
            rec = self.exp.store.read_record(job_id)
        except JobNotFound:
            rec = None
        except CorruptRecord:
            return  # validate reports it; perhaps a passing stale read
        if rec is not None and rec.status not in FINISHED:
            return
        state, value, reason = self._outcome(trial, rec, job_id)
        if reason:
            self.storage.set_trial_user_attr(self._trial_id(trial.number), "fail_reason", reason)
        try:
            self.study.tell(trial.number, value, state=state, skip_if_finished=True)
        except RuntimeError as exc:
            # The grid sampler calls study.stop() once the grid is done, which only works inside
            # study.optimize(); tell has stored the trial's state regardless (in its `finally`).
            if "stop" not in str(exc):
                raise
        progress.told.append((trial.number, state.name.lower()))
        _crash_point("told", trial.number)

    def _outcome(self, trial: Any, rec: JobRecord | None, job_id: str) -> tuple[Any, float | None, str | None]:
        states = self.optuna.trial.TrialState
        if rec is None:
            return states.FAIL, None, f"its job {job_id} has no record any more"
        if rec.status == Status.PRUNED:
            return states.PRUNED, None, None
        if rec.status == Status.CANCELLED:
            return states.FAIL, None, "its job was cancelled"
        if rec.status == Status.FAILED:
            error = rec.error or {}
            return states.FAIL, None, " ".join(f"{error.get('type')}: {error.get('message')}".split())[:500]
        metric = self.spec.metric
        metrics = (rec.result or {}).get("metrics") or {}
        value = metrics.get(metric)
        if value is None and trial.intermediate_values:
            value = trial.intermediate_values[max(trial.intermediate_values)]
        if value is None:
            return states.FAIL, None, (f"its job completed without reporting {metric!r} (it reported "
                                       f"{', '.join(sorted(metrics)) or 'nothing'}); check --metric")
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            return states.FAIL, None, f"its job reported {metric}={metrics.get(metric)!r}, not a finite number"
        return states.COMPLETE, value, None

    def _trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    # -- repair ------------------------------------------------------------------------------
    def _repair(self, orphans: list[Any], progress: Progress) -> None:
        # A full scan of the records, but only after a process died between asking for a trial
        # and recording its job id: rare, and the only way to tell whether the job was written.
        wanted = {t.number: t for t in orphans}
        found: dict[int, JobRecord] = {}
        for rec in self.exp.store.iter_records():
            study = rec.study
            if not study or study["name"] != self.spec.name or study["trial"] not in wanted:
                continue
            if study["trial"] not in found or rec.created_at < found[study["trial"]].created_at:
                found[study["trial"]] = rec
        missing = []
        for number, trial in sorted(wanted.items()):
            rec = found.get(number)
            if rec is None:
                missing.append(trial)
                continue
            trial_id = self._trial_id(number)
            self.storage.set_trial_user_attr(trial_id, "job_id", rec.id)
            progress.repaired.append(f"trial {number}: recorded its job {rec.id}")
            self._settle(self.storage.get_trial(trial_id), rec.id, progress)
        if missing:
            progress.repaired += [f"trial {t.number}: had no job; submitting one" for t in missing]
            self._submit([(t.number, t.params) for t in missing], progress)

    # -- ask ---------------------------------------------------------------------------------
    def _ask(self, count: int, asked: int, progress: Progress) -> None:
        distributions = {p.name: p.distribution for p in self.params}
        new = []
        for i in range(count):
            self.study.sampler = make_sampler(self.spec, self.params, asked + i)
            trial = self.study.ask(distributions)
            _crash_point("asked", trial.number)
            new.append((trial.number, trial.params))
        self._submit(new, progress)

    def _submit(self, trials: list[tuple[int, dict[str, Any]]], progress: Progress) -> None:
        """Compose each trial's parameters onto the job config and queue them as jobs."""
        spec = self.spec
        keys = [override_key(o) for o in spec.overrides if override_key(o) in spec.grid_params]
        keys += [p.name for p in self.params]
        points = [spec.overrides + [p.override(params[p.name]) for p in self.params] for _, params in trials]
        bases = _bases(spec)
        try:
            composed = compose_many(spec.config_path, spec.config_name, points, keys, searchpath=spec.searchpath,
                                    bases=bases)
        except ConfigError:
            composed = []
            for (number, _), point in zip(trials, points, strict=True):
                try:
                    composed += compose_many(spec.config_path, spec.config_name, [point], keys,
                                             searchpath=spec.searchpath, bases=bases)
                except ConfigError as exc:
                    composed.append(None)  # type: ignore[arg-type]
                    reason = f"its parameters do not compose: {one_line(exc)}"[:500]
                    self.storage.set_trial_user_attr(self._trial_id(number), "fail_reason", reason)
                    self.study.tell(number, state=self.optuna.trial.TrialState.FAIL, skip_if_finished=True)
                    progress.told.append((number, "fail"))
        ready: list[ComposedConfig] = [
            dataclasses.replace(c, study={"name": spec.name, "trial": number})
            for (number, _), c in zip(trials, composed, strict=True) if c is not None]
        if not ready:
            return
        result = self.exp.submit_configs(ready, force=True, sweep_id=spec.sweep_id, **spec.queueing)
        for rec in result.submitted:
            assert rec.study is not None
            _crash_point("submitted", rec.study["trial"])
            self.storage.set_trial_user_attr(self._trial_id(rec.study["trial"]), "job_id", rec.id)
            progress.submitted.append(rec)
