"""Submitting an adaptive sweep: check everything first, then write the studies and submit their
first trials.

Combined with a grid (``--params``), every grid point is a study of its own, with the grid
values fixed for all its trials: ``--params "seed=0,1,2" --search "lr=..."`` runs three
independent searches of ``--trials`` trials each (names ``<sweep id>-0``, ``-1``, ``-2``), which
shows how much the result of a search depends on the seed. All studies share the sweep id.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dr_exp.compose import compose_many, parse_sweep, split_overrides, sweep_config_file, sweep_keys
from dr_exp.job import DEFAULT_PRIORITY
from dr_exp.study.algorithms import SAMPLERS, grid_size, make_pruner, make_sampler, parse_choice
from dr_exp.study.driver import advance
from dr_exp.study.space import Param, override_key, parse_search
from dr_exp.study.spec import StudyError, StudyFiles, StudySpec, import_optuna, open_storage

if TYPE_CHECKING:
    from dr_exp.api import Experiment
    from dr_exp.job import JobRecord


@dataclass
class StudySweep:
    """What an adaptive sweep submitted: its studies (one per grid point) and their first jobs."""

    sweep_id: str
    studies: list[str]
    trials: int
    submitted: list[JobRecord] = field(default_factory=list)


def _positive(value: Any, option: str) -> int:
    if type(value) is not int or value < 1:
        raise StudyError(f"{option} {value!r} must be an integer of at least 1")
    return value


def sweep(exp: Experiment, config: str, search: str, *, trials: int, metric: str, mode: str,
          sampler: str = "tpe", pruner: str = "none", parallel: int = 4, seed: int | None = None,
          params: str | None = None, overrides: str | list[str] | None = None,
          priority: int = DEFAULT_PRIORITY, tags: str | Iterable[str] | None = None,
          max_attempts: int | None = None, timeout: float | None = None,
          max_worker_losses: int | None = None, searchpath: Iterable[str] = ()) -> StudySweep:
    """Submit an adaptive sweep over ``search`` (the grammar of :mod:`dr_exp.study.space`): one
    study per grid point of ``params``, each asking ``trials`` trials, ``parallel`` at a time.
    Bad input raises :class:`StudyError` (or another :class:`DrExpError`) before anything is written."""
    from dr_exp.api import Experiment as _Experiment

    optuna = import_optuna()
    trials = _positive(trials, "--trials")
    parallel = _positive(parallel, "--parallel")
    if mode not in ("min", "max"):
        raise StudyError(f"--mode {mode!r} must be min or max (whether a lower or a higher {metric} is better)")
    if not isinstance(metric, str) or not metric.strip():
        raise StudyError("--metric is empty; name the metric the trainer reports, e.g. --metric val/acc")
    if seed is not None and (type(seed) is not int or seed < 0):
        raise StudyError(f"--seed {seed!r} must be an integer >= 0")
    queueing = _Experiment._queueing(priority, tags, max_attempts, timeout, max_worker_losses)
    path = sweep_config_file(config, "exp_configs/synthetic.yaml")
    space, fixed = parse_search(search)
    base = split_overrides(overrides) + fixed
    points = parse_sweep(params) if params else [[]]
    _check_keys(space, base, sweep_keys(params) if params else [])
    spec = StudySpec(name="-", sweep_id="-", config_path=str(path.parent.resolve()), config_name=path.stem,
                     overrides=base, grid_params={}, search=search, space=[], sampler=sampler, pruner=pruner,
                     seed=seed if seed is not None else random.SystemRandom().randrange(2**31),
                     trials=trials, parallel=parallel, metric=metric.strip(), mode=mode, queueing=queueing,
                     searchpath=list(searchpath))
    parse_choice(sampler, "sampler", SAMPLERS)
    make_sampler(spec, space, 0)
    make_pruner(pruner)
    if sampler.partition(":")[0] == "grid" and trials > grid_size(space):
        raise StudyError(f"--trials {trials} is more than the {grid_size(space)} points of the grid; "
                         f"give --trials {grid_size(space)} or fewer")
    _probe(spec, space, points)

    # Everything checked: write.
    exp.store.ensure()
    sweep_id = uuid.uuid4().hex[:12]
    names = [sweep_id] if len(points) == 1 else [f"{sweep_id}-{k}" for k in range(len(points))]
    for name, point in zip(names, points, strict=True):
        grid = {override_key(o): o.partition("=")[2] for o in point}
        _create(exp, optuna, dataclasses.replace(spec, name=name, sweep_id=sweep_id, overrides=base + point,
                                                 grid_params=grid, space=[p.to_dict() for p in space],
                                                 created_at=time.time()))
    out = StudySweep(sweep_id, names, trials)
    for name in names:
        out.submitted += advance(exp, name).submitted
    return out


def _check_keys(space: list[Param], fixed: list[str], grid_keys: list[str]) -> None:
    searched = {p.name for p in space}
    for key in grid_keys:
        if key in searched:
            raise StudyError(f"{key} is both in --params and in --search; a key is either a grid or searched")
    for item in fixed:
        if override_key(item) in searched:
            raise StudyError(f"{override_key(item)} is both fixed ({item}) and searched; drop one of them")


def _probe(spec: StudySpec, space: list[Param], points: list[list[str]]) -> None:
    """Compose every grid point with every choice and both ends of every range, so that an unknown
    option or key fails now, before anything is written."""
    first = [p.override(p.probe_values()[0]) for p in space]
    variants = [first]
    for i, p in enumerate(space):
        for value in p.probe_values()[1:]:
            variants.append([*first[:i], p.override(value), *first[i + 1:]])
    compose_many(spec.config_path, spec.config_name, [spec.overrides + point + v for point in points for v in variants],
                 searchpath=spec.searchpath)


def _create(exp: Experiment, optuna: Any, spec: StudySpec) -> None:
    files = StudyFiles.of(exp.layout, spec.name)
    files.root.parent.mkdir(exist_ok=True)
    os.mkdir(files.root)  # a fresh sweep id: never an existing study
    spec.save(files)
    files.journal.touch()
    study = optuna.create_study(study_name=spec.name, storage=open_storage(files), direction=spec.direction)
    study.set_user_attr("dr_exp", {"sweep_id": spec.sweep_id, "experiment": exp.name, "metric": spec.metric,
                                   "config": f"{spec.config_path}/{spec.config_name}.yaml",
                                   "overrides": spec.overrides, "trials": spec.trials, "parallel": spec.parallel,
                                   "sampler": spec.sampler, "pruner": spec.pruner, "seed": spec.seed})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental in some Optuna versions; only a label
        study.set_metric_names([spec.metric])
