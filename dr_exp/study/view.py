"""Reading a study (for ``dr_exp study``, plots and dashboards): nothing here writes anything.

:func:`load_study` gives a :class:`StudyView`: the settings, one :class:`TrialView` per trial
(state, value, parameters, per-epoch values, its job and the job's state), the best trial and
the parameter importances. ``view.optuna_study`` is the Optuna study itself, for anything else.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from dr_exp.errors import CorruptRecord, DrExpError
from dr_exp.study.spec import StudyError, StudyFiles, StudySpec, import_optuna, open_storage, study_names

if TYPE_CHECKING:
    from dr_exp.api import Experiment


@dataclass
class TrialView:
    number: int
    state: str                       # running, complete, pruned, fail, waiting
    value: float | None
    params: dict[str, Any]
    job_id: str | None
    job_status: str | None = None    # the job's state (None when not looked up or missing)
    fail_reason: str | None = None
    intermediate: dict[int, float] = field(default_factory=dict)  # epoch -> reported value

    @property
    def epochs(self) -> int:
        """Epochs reported (a pruned trial's: until it was stopped)."""
        return len(self.intermediate)


@dataclass
class StudyView:
    name: str
    spec: StudySpec
    trials: list[TrialView]
    optuna_study: Any = field(repr=False, default=None)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(("complete", "pruned", "fail", "running", "waiting"), 0)
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out

    @property
    def best(self) -> TrialView | None:
        """The best complete trial by the study's metric and mode."""
        done = [t for t in self.trials if t.state == "complete" and t.value is not None and math.isfinite(t.value)]
        if not done:
            return None
        return (max if self.spec.mode == "max" else min)(done, key=lambda t: t.value)

    @property
    def finished(self) -> bool:
        return len(self.trials) >= self.spec.trials and all(t.state in ("complete", "pruned", "fail") for t in self.trials)

    def importances(self) -> dict[str, float] | None:
        """Optuna's parameter importances, or None while there are too few complete trials."""
        if sum(t.state == "complete" for t in self.trials) < 4 or self.optuna_study is None:
            return None
        optuna = import_optuna()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return dict(optuna.importance.get_param_importances(self.optuna_study))
        except (RuntimeError, ValueError, ZeroDivisionError):
            return None

    def to_dict(self) -> dict[str, Any]:
        """Everything ``study show`` shows, as JSON (``study show --format json``, the dashboard)."""
        best = self.best
        return {"name": self.name, "settings": asdict(self.spec), "counts": self.counts(),
                "best": asdict(best) if best else None, "importances": self.importances(),
                "trials": [asdict(t) for t in self.trials]}


def resolve_study(exp: Experiment, name: str) -> str:
    """A study's name from its name or a unique prefix (e.g. the sweep id)."""
    names = study_names(exp.layout)
    if name in names:
        return name
    matches = [n for n in names if n.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise StudyError(f"no study {name!r} in {exp.store.root}; `dr_exp study list` shows the studies")
    raise StudyError(f"study name {name!r} is ambiguous ({', '.join(matches[:5])}...); give more characters")


def load_study(exp: Experiment, name: str, jobs: bool = True) -> StudyView:
    """Read one study (``name`` or a unique prefix). ``jobs`` also reads each trial's job record
    for its state."""
    optuna = import_optuna()
    name = resolve_study(exp, name)
    files = StudyFiles.of(exp.layout, name)
    spec = StudySpec.load(files)
    storage = open_storage(files)
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())
    except KeyError:
        raise StudyError(f"the journal {files.journal} holds no study {name!r}; it may have been cut short") from None
    trials = []
    for t in study.get_trials(deepcopy=False):
        job_id = t.user_attrs.get("job_id")
        status = None
        if jobs and job_id:
            try:
                status = exp.store.read_record(job_id, quick=True).status
            except (DrExpError, CorruptRecord, OSError):  # a view never fails on one job
                status = None
        trials.append(TrialView(number=t.number, state=t.state.name.lower(), value=t.value, params=dict(t.params),
                                job_id=job_id, job_status=status, fail_reason=t.user_attrs.get("fail_reason"),
                                intermediate={int(k): v for k, v in sorted(t.intermediate_values.items())}))
    return StudyView(name, spec, trials, study)


def list_studies(exp: Experiment) -> list[StudyView]:
    """Every study of the experiment, oldest first (job states not looked up)."""
    return [load_study(exp, name, jobs=False) for name in study_names(exp.layout)]
