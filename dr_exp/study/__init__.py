"""Adaptive sweeps: an Optuna study whose trials are dr_exp jobs.

The search state lives in the experiment directory (``studies/<name>/``, Optuna's journal file
storage) next to the jobs; every trial is a job, with everything jobs get (priorities, leases,
pre-emption and resume, SLURM, S3); and no process has to stay alive: whoever records a trial's
end asks the study for the next trial and submits it (:mod:`dr_exp.study.driver`).

- Submitting: :func:`sweep` (``dr_exp job sweep --search ...``).
- In a trainer: :func:`report` each epoch's metrics; it raises :class:`Pruned` when the study's
  pruner stops the trial (a no-op in jobs that are not trials).
- Reading: :func:`load_study` / :func:`list_studies` (``dr_exp study list|show``).
- Repairing: :func:`repair_studies` (``dr_exp job recover``).

Only the trainer-side names are imported eagerly; the rest (and Optuna) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dr_exp.study.report import Pruned, in_trial, report, trial_env, trial_metric
from dr_exp.study.spec import StudyError

if TYPE_CHECKING:
    from dr_exp.api import Experiment
    from dr_exp.job import JobRecord
    from dr_exp.study.submit import StudySweep
    from dr_exp.study.view import StudyView


def sweep(exp: Experiment, config: str, search: str, **options: Any) -> StudySweep:
    """Submit an adaptive sweep; see :func:`dr_exp.study.submit.sweep` for the options."""
    from dr_exp.study.submit import sweep as _sweep

    return _sweep(exp, config, search, **options)


def load_study(exp: Experiment, name: str, jobs: bool = True) -> StudyView:
    """One study by name (or unique prefix), with its trials; see :mod:`dr_exp.study.view`."""
    from dr_exp.study.view import load_study as _load

    return _load(exp, name, jobs)


def list_studies(exp: Experiment) -> list[StudyView]:
    from dr_exp.study.view import list_studies as _list

    return _list(exp)


def trial_ended(exp: Experiment, rec: JobRecord) -> None:
    """The API's hook: a trial's job has finished (see :func:`dr_exp.study.driver.trial_ended`)."""
    from dr_exp.study.driver import trial_ended as _ended

    _ended(exp, rec)


def repair_studies(exp: Experiment) -> list[str]:
    """Advance every study of the experiment: what ``dr_exp job recover`` adds for studies."""
    from dr_exp.study.driver import repair_studies as _repair

    return _repair(exp)


__all__ = ["Pruned", "StudyError", "in_trial", "list_studies", "load_study", "repair_studies", "report", "sweep",
           "trial_ended", "trial_env", "trial_metric"]
