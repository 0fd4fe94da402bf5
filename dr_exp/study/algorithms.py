"""Samplers and pruners by name: Optuna's, with defaults that suit trials run as jobs.

``--sampler`` and ``--pruner`` take a name, optionally with keyword arguments for the Optuna
class: ``tpe``, ``tpe:n_startup_trials=20``, ``asha:reduction_factor=3,min_resource=2``.

Every process that asks the study for a trial builds its sampler afresh (no process stays
alive), so a sampler seeded once would draw the same "random" numbers in every process. The
seed of each ask is therefore derived from the study's seed and the trial's number: a study is
reproducible from its seed, and no two asks repeat each other. The grid sampler is the
exception: it shuffles its grid with the seed, and every process must agree on that order.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from dr_exp.study.spec import StudyError, StudySpec, import_optuna

SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("asha", "hyperband", "median", "percentile", "threshold", "none")

# name -> (Optuna class, defaults that differ from Optuna's)
_SAMPLER_CLASSES = {
    "tpe": ("TPESampler", {"constant_liar": True}),  # parallel trials: do not pile onto one point
    "random": ("RandomSampler", {}),
    "grid": ("GridSampler", {}),
    "cmaes": ("CmaEsSampler", {}),
}
_PRUNER_CLASSES = {
    # Asynchronous successive halving, first judging a trial at step 2 (after three epochs when
    # epochs count from 0: early epochs are noisy), then at steps 8, 32, ... (reduction factor 4);
    # Optuna's "auto" would wait for a first trial to complete before pruning anything.
    "asha": ("SuccessiveHalvingPruner", {"min_resource": 2}),
    "hyperband": ("HyperbandPruner", {"min_resource": 1}),
    "median": ("MedianPruner", {"n_startup_trials": 5, "n_warmup_steps": 1}),
    "percentile": ("PercentilePruner", {"percentile": 25.0, "n_startup_trials": 5, "n_warmup_steps": 1}),
    # Stops a trial whose value leaves [lower, upper] (or is NaN): `threshold:lower=0.2` for an
    # accuracy that never took off, `threshold:upper=10` for a loss that diverged.
    "threshold": ("ThresholdPruner", {}),
    "none": ("NopPruner", {}),
}


def parse_choice(text: str, what: str, names: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name:key=value,...`` -> (name, keyword arguments)."""
    if not isinstance(text, str) or not text.strip():
        raise StudyError(f"--{what} is empty; use one of {', '.join(names)}")
    name, _, options = text.strip().partition(":")
    if name not in names:
        raise StudyError(f"unknown --{what} {name!r}; use one of {', '.join(names)}")
    kwargs: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in options.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise StudyError(f"--{what} {text!r}: options are key=value separated by commas, e.g. {name}:key=1")
        kwargs[key.strip()] = _value(raw.strip())
    return name, kwargs


def _value(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def _build(module: Any, what: str, text: str, table: dict[str, tuple[str, dict[str, Any]]],
           fixed: dict[str, Any]) -> Any:
    name, options = parse_choice(text, what, tuple(table))
    cls_name, defaults = table[name]
    cls = getattr(module, cls_name)
    accepted = set(inspect.signature(cls).parameters) - set(fixed)
    unknown = set(options) - accepted
    if unknown:
        raise StudyError(f"--{what} {name} has no option {', '.join(sorted(unknown))}; "
                         f"{cls_name} takes {', '.join(sorted(accepted)) or 'no options'}")
    try:
        return cls(**{**defaults, **options, **fixed})
    except (TypeError, ValueError) as exc:
        raise StudyError(f"--{what} {text!r}: {exc}") from None


def trial_seed(spec: StudySpec, number: int) -> int:
    return (spec.seed * 1_000_003 + number) % 2**32


def make_sampler(spec: StudySpec, params: list[Any], number: int) -> Any:
    """The sampler that asks for trial ``number`` (see the module docstring about seeds)."""
    optuna = import_optuna()
    name, _ = parse_choice(spec.sampler, "sampler", SAMPLERS)
    fixed: dict[str, Any]
    if name == "grid":
        fixed = {"search_space": {p.name: p.grid_values() for p in params}, "seed": spec.seed}
    else:
        fixed = {"seed": trial_seed(spec, number)}
        if name == "cmaes":
            try:
                import cmaes  # noqa: F401
            except ImportError:
                raise StudyError("--sampler cmaes needs the cmaes package: pip install cmaes") from None
    return _build(optuna.samplers, "sampler", spec.sampler, _SAMPLER_CLASSES, fixed)


def make_pruner(text: str) -> Any:
    optuna = import_optuna()
    return _build(optuna.pruners, "pruner", text, _PRUNER_CLASSES, {})


def grid_size(params: list[Any]) -> int:
    size = 1
    for p in params:
        size *= len(p.grid_values())
    return size
