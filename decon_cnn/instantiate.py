"""``hydra.utils.instantiate`` with decon_cnn's two rules and one-line errors.

- **Offered arguments.** What only the run knows (``num_classes`` and ``in_channels`` from the
  data, the metrics logger, the run directory) is *offered* to a target: passed when its
  signature declares the parameter by name (``**kwargs`` does not count) and the config leaves
  it out or null. A user's class that has no use for an offered value simply does not declare it.
- **Errors name the config key.** A target that does not import, or whose constructor rejects
  its arguments, is a :class:`~decon_cnn.errors.BadTarget` saying which key and what to fix.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from decon_cnn.config_checks import locate, target_problem
from decon_cnn.errors import BadTarget, DeconError


def resolved(cfg: Any) -> DictConfig:
    """A resolved copy of ``cfg`` (``${oc.env:...}`` and friends are resolved here, on the node
    that runs the job, not where the job was submitted)."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
        return OmegaConf.create(container)
    except OmegaConfBaseException as exc:
        raise DeconError(f"config does not resolve: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    cause = exc.__cause__ if exc.__cause__ is not None and "Error in call to target" in str(exc) else exc
    text = " ".join(str(cause).split()) or type(cause).__name__
    return f"{type(cause).__name__}: {text}" if isinstance(cause, TypeError | ValueError) else text


def declared_parameters(obj: Any) -> set[str]:
    """The parameter names ``obj`` declares (not those it would take through ``**kwargs``)."""
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return set()
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def has_target(node: Any) -> bool:
    return isinstance(node, Mapping | DictConfig) and bool(node.get("_target_"))


def target_of(node: Any, where: str) -> Any:
    """The class or function ``node._target_`` names."""
    if not has_target(node):
        raise BadTarget(f"{where} has no _target_; give it one (e.g. `_target_: package.module.Class`)")
    problem = target_problem(where, node["_target_"])
    if problem:
        raise BadTarget(problem)
    return locate(node["_target_"])


def offered_kwargs(node: Any, obj: Any, offered: Mapping[str, Any]) -> dict[str, Any]:
    names = declared_parameters(obj)
    return {k: v for k, v in offered.items() if k in names and node.get(k) is None}


def build(node: Any, where: str, offered: Mapping[str, Any] | None = None) -> Any:
    """Instantiate ``node`` (a ``_target_`` config; ``_partial_`` gives a callable).

    ``node`` should be resolved (see :func:`resolved`): instantiation detaches it from the rest
    of the config, so interpolations into other sections would not resolve.
    """
    import hydra.utils
    from hydra.errors import InstantiationException

    obj = target_of(node, where)
    if not OmegaConf.is_config(node):
        node = OmegaConf.create(dict(node))
    kwargs = offered_kwargs(node, obj, offered or {})
    try:
        return hydra.utils.instantiate(node, _convert_="all", **kwargs)
    except (InstantiationException, TypeError, ValueError, OmegaConfBaseException) as exc:
        missing = isinstance(exc.__cause__, ImportError)
        hint = "install the package it needs or choose another" if missing else f"check the keys under {where}"
        raise BadTarget(f"{where}: cannot build {node['_target_']} ({_one_line(exc)}); {hint}") from exc


def build_all(section: Any, where: str, offered: Mapping[str, Any] | None = None) -> list[Any]:
    """Instantiate a dict (``name: {_target_: ...}``, in order) or a list of ``_target_`` configs.
    Entries that are null are skipped, so an override can switch one off (``callbacks.x=null``)."""
    if section is None:
        return []
    if OmegaConf.is_list(section) or isinstance(section, list | tuple):
        items = [(f"{where}[{i}]", node) for i, node in enumerate(section)]
    elif OmegaConf.is_dict(section) or isinstance(section, Mapping):
        if has_target(section):
            raise BadTarget(f"{where} must be a dict of named _target_ entries or a list of them, not one _target_; "
                            f"write `{where}: {{name: {{_target_: ...}}}}`")
        items = [(f"{where}.{name}", node) for name, node in section.items()]
    else:
        raise BadTarget(f"{where} must be a dict or a list of _target_ configs, got {section!r}")
    return [build(node, name, offered) for name, node in items if node is not None]
