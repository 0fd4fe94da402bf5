"""The search space of an adaptive sweep, in the grammar of Hydra's Optuna sweeper plugin, read by
Hydra's own override parser:

- ``key=interval(low,high)``: a float in [low, high]; ``key=tag(log,interval(low,high))`` on a log scale;
- ``key=range(start,stop[,step])``: an integer (or, with float bounds, a stepped float) from
  ``start`` up to ``stop`` excluded, as ``hydra -m`` counts;
- ``key=choice(a,b,c)`` or ``key=a,b,c``: one of the values (config group options included);
- ``key=value``: fixed for every trial.

A parameter is named by its key (without ``+``); the sampled value becomes the override
``key=value`` (``+key=value`` when the key was given with ``+``), composed onto the job config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dr_exp.compose import split_overrides
from dr_exp.study.spec import StudyError, import_optuna
from dr_exp.targets import one_line

_GRAMMAR = "use key=interval(low,high), key=tag(log,interval(low,high)), key=range(start,stop) or key=choice(a,b)"


@dataclass(frozen=True)
class Param:
    """One searched parameter: its name (the key), the key as written before ``=`` (with ``+``
    when it adds a key) and its Optuna distribution."""

    name: str
    key: str
    distribution: Any

    def override(self, value: Any) -> str:
        """The Hydra override that sets this parameter to ``value``."""
        from hydra.core.override_parser.types import Transformer

        return f"{self.key}={Transformer.str(value)}"

    def to_dict(self) -> dict[str, Any]:
        from optuna.distributions import distribution_to_json

        return {"name": self.name, "key": self.key, "distribution": distribution_to_json(self.distribution)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Param:
        import_optuna()
        from optuna.distributions import json_to_distribution

        return cls(data["name"], data["key"], json_to_distribution(data["distribution"]))

    def probe_values(self) -> list[Any]:
        """Values to compose at submit time, so that a bad option or key fails before anything is
        written: every choice, or both ends of a range."""
        dist = self.distribution
        if hasattr(dist, "choices"):
            return list(dist.choices)
        return [dist.low, dist.high] if dist.low != dist.high else [dist.low]

    def grid_values(self) -> list[Any]:
        """Every value, for the grid sampler; StudyError for a continuous parameter."""
        dist = self.distribution
        if hasattr(dist, "choices"):
            return list(dist.choices)
        step = getattr(dist, "step", None)
        if step is None:
            raise StudyError(f"--sampler grid needs discrete values, but {self.key} is continuous; "
                             "give it as choice(...) or range(...), or use --sampler tpe or random")
        count = round((dist.high - dist.low) / step) + 1
        if isinstance(dist.low, int) and isinstance(step, int):
            return [dist.low + i * step for i in range(count)]
        return [round(dist.low + i * step, 12) for i in range(count)]


def parse_search(text: str | None) -> tuple[list[Param], list[str]]:
    """``--search`` as searched parameters and fixed overrides; StudyError for anything else."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep, Transformer
    from hydra.errors import HydraException

    import_optuna()
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    items = split_overrides(text)
    if not items:
        raise StudyError(f"--search is empty; {_GRAMMAR}")
    try:
        parsed = OverridesParser.create().parse_overrides(items)
    except HydraException as exc:
        raise StudyError(f"bad --search: {one_line(exc)}; {_GRAMMAR}") from None
    params: list[Param] = []
    fixed: list[str] = []
    for o in parsed:
        if not o.is_sweep_override():
            fixed.append(o.input_line)
            continue
        name = o.key_or_group
        value = o.value()
        tags = set(getattr(value, "tags", ()) or ())
        if tags - {"log"}:
            raise StudyError(f"{o.input_line!r}: unknown tag {', '.join(sorted(tags - {'log'}))}; "
                             "the only tag understood is log, as in tag(log,interval(1e-4,1e-1))")
        log = "log" in tags
        try:
            if isinstance(value, ChoiceSweep):
                if log:
                    raise StudyError(f"{o.input_line!r}: tag(log, ...) applies to interval() and range(), not choice()")
                choices = list(dict.fromkeys(o.sweep_iterator(transformer=Transformer.encode)))
                dist: Any = CategoricalDistribution(choices)
            elif isinstance(value, RangeSweep):
                values = list(o.sweep_iterator(transformer=Transformer.identity))
                if not values:
                    raise StudyError(f"{o.input_line!r} is an empty range")
                if all(type(v) is int for v in values):
                    step = int(value.step or 1)
                    dist = IntDistribution(values[0], values[-1], log=log, step=step)
                else:
                    step = float(value.step or 1)
                    dist = FloatDistribution(float(values[0]), round(float(values[-1]), 12), log=log,
                                             step=None if log else step)
            elif isinstance(value, IntervalSweep):
                low, high = float(value.start), float(value.end)
                if not (math.isfinite(low) and math.isfinite(high)) or low > high:
                    raise StudyError(f"{o.input_line!r}: interval(low, high) needs finite low <= high")
                dist = FloatDistribution(low, high, log=log)
            else:
                raise StudyError(f"{o.input_line!r} is not a search expression; {_GRAMMAR}")
        except ValueError as exc:
            raise StudyError(f"{o.input_line!r}: {one_line(exc)}") from None
        if any(p.name == name for p in params):
            raise StudyError(f"--search names {name} twice")
        params.append(Param(name, o.get_key_element(), dist))
    if not params:
        raise StudyError(f"--search {text!r} has nothing to search; {_GRAMMAR}")
    return params, fixed


def override_key(item: str) -> str:
    """The key an override sets, without ``+``/``++``/``~``."""
    return item.partition("=")[0].lstrip("+~")
