"""Checking ``_target_`` paths and the trainer contract, before anything is queued.

A job's trainer (its top-level ``_target_``) is imported at submit time, so its signature can be
checked. Nested ``_target_`` entries (models, callbacks, loggers) are checked without importing
them: their module must exist and define the name, found by reading the module's source, so
that submitting does not pay for importing torch.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from dr_exp.errors import ConfigError

# The keywords dr_exp can give a trainer at run time, besides its config.
RUNTIME_ARGS = ("job_id", "worker_id", "storage_path", "resume_from", "attempt")
CONFIG_PARAMS = ("config", "cfg")
FORMS = ("def train(config, *, job_id, worker_id, storage_path, resume_from=None) (config as a DictConfig)",
         "def train(*, job_id, worker_id, storage_path, **config) (config keys as keywords)")


def one_line(exc: BaseException) -> str:
    msg = str(exc).strip() or type(exc).__name__
    return " ".join(msg.split())


def locate(target: str, where: str) -> Callable[..., Any]:
    """Import ``target`` (``package.module.attr``) and return it; ConfigError if that fails."""
    from hydra._internal.utils import _locate  # hydra.utils.get_method also logs to stderr

    try:
        obj = _locate(target)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        if isinstance(exc, SystemExit):
            exc = RuntimeError(f"importing it called sys.exit({exc.code!r})")
        raise ConfigError(f"_target_ {target!r} of {where} does not import ({one_line(exc)}); "
                          "check the spelling and that its package is installed") from None
    if not callable(obj):
        raise ConfigError(f"_target_ {target!r} of {where} is not callable")
    return obj


@dataclass(frozen=True)
class TrainerForm:
    """How a trainer takes its config: as one ``config``/``cfg`` argument, or as keywords."""

    config_param: str | None      # "config"/"cfg", or None for the keyword form
    runtime: tuple[str, ...]      # runtime keywords it names
    var_keyword: bool             # takes **kwargs (then it also gets job_id, worker_id, storage_path)


def trainer_form(fn: Callable[..., Any], config_keys: list[str], where: str) -> TrainerForm:
    """Which of the two trainer forms ``fn`` has, or ConfigError naming both."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return TrainerForm(None, (), True)  # a builtin or C callable: trust it
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    runtime = tuple(a for a in RUNTIME_ARGS if a in named)
    config_param = next((n for n in CONFIG_PARAMS if n in named), None)
    required = {n for n, p in params.items() if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    positional_only = [n for n, p in params.items() if p.kind == p.POSITIONAL_ONLY]
    problem = None
    if positional_only:
        problem = f"it has positional-only parameters ({', '.join(positional_only)})"
    elif config_param is not None:
        missing = required - {config_param, *runtime}
        if missing:
            problem = f"it requires {', '.join(sorted(missing))}, which dr_exp does not pass"
    else:
        unknown = [k for k in config_keys if k not in named and not var_kw]
        missing = required - set(config_keys) - set(runtime)
        if unknown:
            problem = f"it takes no keyword {', '.join(unknown[:5])} that the config sets"
        elif missing:
            problem = f"it requires {', '.join(sorted(missing))}, which the config does not set"
    if problem:
        name = getattr(fn, "__qualname__", repr(fn))
        raise ConfigError(f"the trainer {name} of {where} fits neither trainer form ({problem}); write it as "
                          f"{FORMS[0]} or as {FORMS[1]}")
    return TrainerForm(config_param, runtime, var_kw)


def nested_targets(config: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """``(key path, target)`` of every ``_target_`` below the top level of ``config``."""
    if isinstance(config, dict):
        for key, value in config.items():
            sub = f"{path}.{key}" if path else str(key)
            if key == "_target_" and path and isinstance(value, str):
                yield path, value
            else:
                yield from nested_targets(value, sub)
    elif isinstance(config, list):
        for i, value in enumerate(config):
            yield from nested_targets(value, f"{path}[{i}]")


def check_nested_targets(config: dict[str, Any], where: str) -> None:
    """ConfigError for the first nested ``_target_`` that cannot be found."""
    for path, target in nested_targets(config):
        problem = target_problem(target)
        if problem:
            raise ConfigError(f"{path}._target_ {target!r} of {where} {problem}; "
                              "check the spelling and that its package is installed")


@lru_cache(maxsize=1024)
def target_problem(target: str) -> str | None:
    """None if ``target`` names something a module defines, else what is wrong. Modules already
    imported are asked directly; others are read, not imported (no torch import at submit)."""
    module_name, _, attr = target.rpartition(".")
    if not module_name or not attr:
        return "is not a dotted path (package.module.name)"
    if module_name in sys.modules:
        return None if hasattr(sys.modules[module_name], attr) else f"is not defined in {module_name}"
    source = _module_source(module_name)
    if source is None:
        # Maybe `module_name` is itself a class/attribute path (pkg.mod.Class.method).
        parent, _, inner = module_name.rpartition(".")
        if parent and _module_source(parent) is not None:
            return None if inner in _defined_names(_module_source(parent) or "") else f"is not found in {parent}"
        return f"does not import (no module {module_name!r})"
    if attr in _defined_names(source) or "__getattr__" in _defined_names(source):
        return None
    if _module_source(target) is not None:  # a submodule of a package
        return None
    return f"is not defined in {module_name}"


def _module_source(name: str) -> str | None:
    """The source text of module ``name`` without importing it (or its parents)."""
    parts = name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if len(parts) == 1:
        origin = spec.origin
    else:
        dirs = list(spec.submodule_search_locations or [])
        origin = None
        for i, part in enumerate(parts[1:], start=1):
            found = None
            for d in dirs:
                pkg = os.path.join(d, part)
                if os.path.isfile(os.path.join(pkg, "__init__.py")):
                    found = ("pkg", pkg)
                    break
                if os.path.isdir(pkg) and i < len(parts) - 1:
                    found = ("ns", pkg)
                    break
                if os.path.isfile(pkg + ".py"):
                    found = ("mod", pkg + ".py")
                    break
            if found is None:
                return None
            kind, where = found
            if kind == "mod":
                if i != len(parts) - 1:
                    return None
                origin = where
            elif kind == "pkg":
                dirs = [where]
                origin = os.path.join(where, "__init__.py")
            else:
                dirs = [where]
                origin = None
    if not origin or not os.path.isfile(origin) or not origin.endswith(".py"):
        return "" if origin else None  # an extension module: cannot read it, assume fine
    try:
        with open(origin, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return None


@lru_cache(maxsize=256)
def _defined_names(source: str) -> frozenset[str]:
    if source == "":
        return frozenset({"__getattr__"})  # unreadable (compiled): do not refuse
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return frozenset()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                # `from x import *` could define anything: do not refuse names then.
                names.add("__getattr__" if alias.name == "*" else (alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    names.add(t.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return frozenset(names)
