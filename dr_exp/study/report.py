"""The trainer's side of an adaptive sweep: report the metrics of each epoch to the trial the job
runs, and stop when the study's pruner says so.

::

    from dr_exp.study import report

    for epoch in range(start, epochs):
        metrics = train_one_epoch(...)          # {"val/acc": 0.91, "val/loss": 0.3}
        report(metrics, epoch)                  # raises dr_exp.study.Pruned when pruned

:func:`report` is a no-op in a job that is not a trial (and outside dr_exp), so a trainer calls it
unconditionally. Let :class:`Pruned` propagate: the job ends ``pruned`` (a result, not a
failure) with the epoch and the reason. A resumed trial (pre-empted, or its worker lost) may
report an epoch again; the study keeps the first value of each epoch, so its curve stays one
value per epoch.

The worker tells the job's process which trial it runs through the environment
(:func:`trial_env`); nothing here imports Optuna until a trial reports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dr_exp import fence
from dr_exp.study.spec import StudyError, StudyFiles, StudySpec, import_optuna, open_storage

if TYPE_CHECKING:
    from dr_exp.api import Experiment
    from dr_exp.job import JobRecord

STUDY_DIR_ENV = "DR_EXP_STUDY_DIR"
TRIAL_ENV = "DR_EXP_STUDY_TRIAL"


class Pruned(Exception):
    """The study's pruner stopped this trial at ``epoch``. Raised by :func:`report`."""

    def __init__(self, epoch: int, metric: str, value: float, pruner: str,
                 metrics: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"pruned at epoch {epoch} by the {pruner} pruner ({metric}={value:.6g})")
        self.epoch = epoch
        self.metric = metric
        self.value = value
        self.pruner = pruner
        self.metrics = dict(metrics or {})

    def __reduce__(self) -> tuple[Any, ...]:  # picklable: sent from rank 0 to the other ranks
        return Pruned, (self.epoch, self.metric, self.value, self.pruner, self.metrics)


def trial_env(exp: Experiment, rec: JobRecord) -> dict[str, str]:
    """The environment that tells a job's process which trial it runs ({} for other jobs)."""
    if rec.study is None:
        return {}
    return {STUDY_DIR_ENV: str(StudyFiles.of(exp.layout, rec.study["name"]).root),
            TRIAL_ENV: str(rec.study["trial"])}


def report(metrics: Mapping[str, Any], epoch: int) -> None:
    """Report one epoch's metrics to this job's trial; raise :class:`Pruned` when the pruner
    stops it. No-op when the job is not a trial of an adaptive sweep."""
    reporter = _reporter()
    if reporter is not None:
        reporter.report(metrics, epoch)


def in_trial() -> bool:
    """Whether this process runs a trial of an adaptive sweep (without loading the study)."""
    return bool(os.environ.get(STUDY_DIR_ENV) and os.environ.get(TRIAL_ENV))


def trial_metric() -> str | None:
    """The metric this job's trial is judged on (``--metric``), or None when the job is not a
    trial: lets a training loop report only epochs that produced it."""
    reporter = _reporter()
    return reporter.spec.metric if reporter is not None else None


_current: tuple[tuple[str, str], _Reporter] | None = None


def _reporter() -> _Reporter | None:
    global _current
    key = (os.environ.get(STUDY_DIR_ENV, ""), os.environ.get(TRIAL_ENV, ""))
    if not key[0] or not key[1]:
        return None
    if _current is None or _current[0] != key:
        _current = (key, _Reporter(Path(key[0]), int(key[1])))
    return _current[1]


class _Reporter:
    def __init__(self, study_dir: Path, number: int) -> None:
        optuna = import_optuna()
        from dr_exp.study.algorithms import make_pruner

        files = StudyFiles(study_dir)
        self.spec = StudySpec.load(files)
        self.storage = open_storage(files)
        # The sampler plays no part in pruning decisions; a random one is the cheapest to build.
        self.study = optuna.load_study(study_name=self.spec.name, storage=self.storage,
                                       sampler=optuna.samplers.RandomSampler(), pruner=make_pruner(self.spec.pruner))
        study_id = self.storage.get_study_id_from_name(self.spec.name)
        self.trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
        self.number = number

    def report(self, metrics: Mapping[str, Any], epoch: int) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        metric = self.spec.metric
        if type(epoch) is not int or epoch < 0:
            raise StudyError(f"report(metrics, epoch): epoch must be an integer >= 0, not {epoch!r}")
        if metric not in metrics:
            raise StudyError(f"the study's metric {metric!r} is not among the reported metrics "
                             f"({', '.join(sorted(map(str, metrics))) or 'none'}); check --metric")
        try:
            value = float(metrics[metric])
        except (TypeError, ValueError):
            raise StudyError(f"metric {metric!r} is {metrics[metric]!r}, not a number") from None
        fence.guard()  # an attempt that no longer owns its job reports nothing
        trial = self.storage.get_trial(self.trial_id)
        if trial.state.is_finished():
            return  # the study already counts it as ended (its job was cancelled)
        if epoch not in trial.intermediate_values:
            try:
                self.storage.set_trial_intermediate_value(self.trial_id, epoch, value)
            except UpdateFinishedTrialError:
                return
            trial = self.storage.get_trial(self.trial_id)
        if self.study.pruner.prune(self.study, trial):
            raise Pruned(epoch, metric, value, self.spec.pruner.partition(":")[0], metrics)
