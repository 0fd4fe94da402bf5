"""Compose job configs with Hydra at submit time, and expand sweeps with Hydra's own parser."""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dr_exp.errors import ConfigError


@dataclass
class ComposedConfig:
    config_path: str
    config_name: str
    overrides: list[str]
    config: dict[str, Any]
    sweep_params: dict[str, str]


def split_overrides(text: str | Iterable[str] | None) -> list[str]:
    """``"a=1 b='x y'"`` -> ``["a=1", "b='x y'"]``; quotes survive for Hydra's parser."""
    if text is None:
        return []
    if not isinstance(text, str):
        return [item for part in text for item in split_overrides(part)]
    try:
        lexer = shlex.shlex(text, posix=False, punctuation_chars=False)
        lexer.whitespace_split = True
        return list(lexer)
    except ValueError as exc:
        raise ConfigError(f"cannot split overrides {text!r}: {exc}; quote values that contain spaces") from None


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip() or type(exc).__name__
    return " ".join(msg.split())


def _searchpath(config_dir: Path, config_name: str) -> list[str]:
    """The primary config's ``hydra.searchpath``, relative ``file://`` entries resolved against
    the config's own directory, so submitting works from any working directory."""
    primary = config_dir / f"{config_name}.yaml"
    try:
        data = yaml.safe_load(primary.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    entries = (data.get("hydra") or {}).get("searchpath") if isinstance(data, dict) else None
    if not entries:
        return []
    resolved = []
    for entry in entries:
        entry = str(entry)
        if entry.startswith("file://") and not os.path.isabs(entry[len("file://"):]):
            entry = "file://" + str((config_dir / entry[len("file://"):]).resolve())
        resolved.append(entry)
    return resolved


def parse_sweep(params: str | Iterable[str]) -> list[list[str]]:
    """Expand sweep params into points, exactly as ``hydra -m`` does (cartesian product,
    ``range()``, quoted strings, lists)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    items = split_overrides(params)
    if not items:
        raise ConfigError('no sweep params given; pass --params "key=v1,v2 other=a,b"')
    try:
        parsed = OverridesParser.create().parse_overrides(items)
    except HydraException as exc:
        raise ConfigError(f"bad sweep params: {_one_line(exc)}; see `hydra -m` syntax (a=1,2 b=range(0,3))") from None
    batches = BasicSweeper.split_arguments(parsed, None)
    return batches[0] if batches else [[]]


def check_target(config: dict[str, Any], where: str) -> None:
    from hydra._internal.utils import _locate  # hydra.utils.get_method also logs to stderr

    target = config.get("_target_")
    if not target or not isinstance(target, str):
        raise ConfigError(
            f"{where} has no _target_; add `_target_: package.module.function` "
            "(for example dr_exp.trainers.noop.train)"
        )
    try:
        if not callable(_locate(target)):
            raise TypeError(f"{target} is not callable")
    except Exception as exc:  # noqa: BLE001 - Hydra wraps ImportError/AttributeError in its own types
        raise ConfigError(
            f"_target_ {target!r} of {where} does not import ({_one_line(exc)}); "
            "check the spelling and that its package is installed"
        ) from None


def compose_many(config_path: str | os.PathLike[str], config_name: str,
                 points: list[list[str]], sweep_keys: Iterable[str] = (),
                 reuse: bool = True) -> list[ComposedConfig]:
    """Compose ``config_name`` once per list of overrides; any failure aborts them all.

    Hydra composes in two steps: overrides of config *groups* (``model=resnet18_cifar``) shape
    the defaults tree, then *value* overrides (``optimizer.lr=0.1``) are applied to the merged
    config. With ``reuse`` the first step runs once per distinct set of group overrides and only
    the second runs per point, which is what Hydra would do for each point anyway, at a small
    fraction of the cost (a 500-point sweep: seconds instead of a minute).
    """
    import copy

    from hydra import compose, initialize_config_dir
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    config_dir = Path(config_path).expanduser().resolve()
    if config_name.endswith((".yaml", ".yml")):
        config_name = config_name.rsplit(".", 1)[0]
    if not config_dir.is_dir():
        raise ConfigError(f"config path {config_dir} is not a directory; pass --config-path exp_configs")
    if not (config_dir / f"{config_name}.yaml").is_file():
        known = sorted(p.stem for p in config_dir.glob("*.yaml"))
        raise ConfigError(
            f"no config {config_name!r} in {config_dir}; choose one of: {', '.join(known) or '(none)'}"
        )
    entries = _searchpath(config_dir, config_name)
    search = ["hydra.searchpath=[" + ",".join(entries) + "]"] if entries else []
    sweep_keys = set(sweep_keys)
    out: list[ComposedConfig] = []
    parser = OverridesParser.create()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3", job_name="dr_exp"):
            roots = _config_roots(config_dir, entries)
            reuse = reuse and roots is not None
            bases: dict[tuple[str, ...], Any] = {}
            for overrides in points:
                where = f"{config_name} with overrides {overrides}" if overrides else config_name
                try:
                    if reuse:
                        parsed = parser.parse_overrides(list(overrides))
                        structural = tuple(o.input_line for o in parsed if _shapes_defaults(o, roots))
                        values = [o for o in parsed if not _shapes_defaults(o, roots)]
                        if structural not in bases:
                            bases[structural] = compose(config_name=config_name, overrides=list(structural) + search)
                        cfg = copy.deepcopy(bases[structural])
                        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
                    else:
                        cfg = compose(config_name=config_name, overrides=list(overrides) + search)
                    config = OmegaConf.to_container(cfg, resolve=True)
                except MissingConfigException as exc:
                    raise ConfigError(f"{where}: {_one_line(exc)}") from None
                except (HydraException, OmegaConfBaseException, ValueError) as exc:
                    raise ConfigError(f"{where}: {_one_line(exc)}") from None
                assert isinstance(config, dict)
                check_target(config, where)
                params = {}
                for item in overrides:
                    key, _, value = item.partition("=")
                    if key.lstrip("+~") in sweep_keys:
                        params[key.lstrip("+~")] = value
                out.append(ComposedConfig(str(config_dir), config_name, list(overrides), config, params))
    finally:
        GlobalHydra.instance().clear()
    return out


def _config_roots(config_dir: Path, searchpath: list[str]) -> list[Path] | None:
    """Directories that hold config groups, or None if the search path has entries that are
    not plain directories (then every point is composed from scratch)."""
    if any(not entry.startswith("file://") for entry in searchpath):
        return None
    return [config_dir, *(Path(entry[len("file://"):]) for entry in searchpath)]


def _shapes_defaults(override: Any, roots: list[Path]) -> bool:
    """True for overrides Hydra applies to the defaults tree (config groups, packages, hydra.*)."""
    key = override.key_or_group
    if override.package is not None or key == "hydra" or key.startswith("hydra."):
        return True
    return any((root / key.replace(".", "/")).is_dir() for root in roots)


def compose_one(config_path: str | os.PathLike[str], config_name: str,
                overrides: list[str] | None = None) -> ComposedConfig:
    return compose_many(config_path, config_name, [overrides or []])[0]


def sweep_keys(params: str | Iterable[str]) -> list[str]:
    return [item.partition("=")[0].lstrip("+~") for item in split_overrides(params)]
