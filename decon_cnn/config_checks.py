"""Checks a submitting host can run on a composed config without building anything.

This module imports neither torch nor Lightning (a test keeps it so), so dr_exp can call it
at submit time:

- :func:`check_targets` imports every nested ``_target_`` (model, data, optimizer, callbacks,
  loggers, ...) and reports those that do not import or are not callable;
- :func:`check_data` looks at the data a config names where this host can see it (a CIFAR
  folder, an ImageFolder tree) and reports what would fail on the node.

Both return a list of one-line problems (empty when all is well). The data module runs the
same data checks on the node, where a problem is a :class:`~decon_cnn.errors.DeconError`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

# torchvision.datasets.folder.IMG_EXTENSIONS, spelled out to stay torch-free.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
DATASETS = ("cifar10", "cifar100", "imagefolder", "synthetic")
BUILTIN_DATA_TARGET = "decon_cnn.data.ImageDataModule"
DATA_DIR_HINT = "set paths.data_dir=DIR (or the DECON_DATA_DIR environment variable)"
LAYOUT = "DIR/{train,val,test}/CLASS/*.png|jpg"


def locate(path: str) -> Any:
    """The object named by a dotted path (``package.module.attr``), importing what it takes."""
    if not isinstance(path, str) or not path or path.startswith(".") or ".." in path:
        raise ImportError(f"{path!r} is not a dotted path")
    parts = path.split(".")
    module, error = None, None
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        try:
            module = importlib.import_module(prefix)
            break
        except ModuleNotFoundError as exc:
            # Only "this prefix is not a module" moves on to a shorter prefix; a module that
            # exists but fails inside its own imports is the error to report.
            if exc.name is None or not (prefix == exc.name or prefix.startswith(exc.name + ".")):
                raise
            error = exc
    if module is None:
        raise error or ImportError(path)
    obj = module
    for j, name in enumerate(parts[i:]):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            if j == 0 and error is not None and len(parts) - i > 1:  # `pkg.missing.Class`: a module is missing
                raise error from None
            raise ImportError(f"module {getattr(obj, '__name__', obj)!r} has no attribute {name!r}") from None
    return obj


def _container(cfg: Any) -> Any:
    if type(cfg).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=False)
    return cfg


def iter_targets(cfg: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """``(config path, target)`` for every ``_target_`` below the top level of ``cfg``."""
    cfg = _container(cfg)
    if isinstance(cfg, Mapping):
        if where and "_target_" in cfg:
            yield where, cfg["_target_"]
        for key, value in cfg.items():
            if key != "hydra":
                yield from iter_targets(value, f"{where}.{key}" if where else str(key))
    elif isinstance(cfg, (list, tuple)):
        for i, value in enumerate(cfg):
            yield from iter_targets(value, f"{where}[{i}]")


def target_problem(where: str, target: Any) -> str | None:
    """Why ``target`` cannot be used as ``where._target_``, or None."""
    try:
        obj = locate(target)
    except Exception as exc:  # noqa: BLE001 - any failure to import is the user's to see
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return (f"{where}: _target_ {target!r} does not import ({reason}); check the spelling and that "
                "its package is installed and on PYTHONPATH")
    if not callable(obj):
        return f"{where}: _target_ {target!r} is not a class or function"
    return None


def check_targets(cfg: Any) -> list[str]:
    """Import every nested ``_target_`` of ``cfg`` (not the job's own top-level one)."""
    problems = []
    for where, target in iter_targets(cfg):
        problem = target_problem(where, target)
        if problem:
            problems.append(problem)
    return problems


# -- data ------------------------------------------------------------------------------------

def _first_image(folder: Path) -> bool:
    """Whether ``folder`` holds an image (the walk stops at the first one)."""
    walk = os.walk(folder, followlinks=True)
    return any(f.lower().endswith(IMAGE_EXTENSIONS) for _, _, files in walk for f in files)


def imagefolder_classes(split: Path) -> tuple[list[str], list[str]]:
    """Class folders of one split, and those among them with no image (cheap: it stops at the
    first image of each class)."""
    classes = sorted(e.name for e in os.scandir(split) if e.is_dir() and not e.name.startswith("."))
    return classes, [c for c in classes if not _first_image(split / c)]


def imagefolder_problem(root: Path, val_size: int = 0) -> str | None:
    """What is wrong with an ImageFolder tree at ``root`` (``root/{train,val,test}/CLASS/*``)."""
    if not root.is_dir():
        return f"data directory {root} does not exist; {DATA_DIR_HINT} to a folder laid out as {LAYOUT}"
    train = root / "train"
    if not train.is_dir():
        return f"{root} has no train/ folder; an imagefolder data set is laid out as {LAYOUT}"
    classes, empty = imagefolder_classes(train)
    if not classes or len(empty) == len(classes):
        return (f"no images in {train}: expected one folder per class holding .png/.jpg files "
                f"(e.g. {train}/cat/0001.png)")
    if empty:
        return f"class folders without images in {train}: {', '.join(empty[:5])}; add images or remove them"
    if len(classes) < 2:
        return f"{train} has one class ({classes[0]}); a classifier needs at least two class folders"
    for name in ("val", "test"):
        split = root / name
        if not split.is_dir():
            if name == "val" and val_size <= 0:
                return (f"{root} has no val/ folder; add {root}/val/CLASS/... or set data.val_size=N to hold out "
                        "N training images")
            continue
        other, other_empty = imagefolder_classes(split)
        unknown = sorted(set(other) - set(classes))
        if unknown:
            return f"{split} has classes that train/ lacks: {', '.join(unknown[:5])}; every class needs training images"
        if other_empty:
            return f"class folders without images in {split}: {', '.join(other_empty[:5])}; add images or remove them"
    return None


def cifar_problem(dataset: str, root: Path, download: bool = False) -> str | None:
    folder = root / CIFAR_FOLDERS[dataset]
    if folder.is_dir() or download:
        return None
    return (f"{dataset} not found: expected {folder} (the python version of the data set); {DATA_DIR_HINT} to "
            f"the directory that contains {CIFAR_FOLDERS[dataset]}/, or data.download=true where the network allows")


def data_problem(dataset: str, data_dir: str | os.PathLike[str], download: bool = False,
                 val_size: int = 0) -> str | None:
    """What would stop decon_cnn's data module from loading ``dataset`` from ``data_dir``."""
    if dataset not in DATASETS:
        return f"unknown data.dataset {dataset!r}; use one of {', '.join(DATASETS)}"
    root = Path(data_dir).expanduser()
    if dataset in CIFAR_FOLDERS:
        return cifar_problem(dataset, root, download)
    if dataset == "imagefolder":
        return imagefolder_problem(root, val_size)
    return None


def check_data(cfg: Any, strict: bool = False) -> list[str]:
    """Problems with the data ``cfg`` names, as far as this host can tell.

    A data directory that this host cannot see may exist on the nodes that run the job, so it
    is only reported with ``strict`` (and so is an interpolation such as ``${oc.env:...}`` that
    does not resolve here). Configs whose ``data._target_`` is not decon_cnn's data module are
    the user's own and not checked.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    conf = cfg if type(cfg).__module__.startswith("omegaconf") else OmegaConf.create(cfg)
    data = conf.get("data")
    if data is None or data.get("_target_", BUILTIN_DATA_TARGET) != BUILTIN_DATA_TARGET:
        return []
    try:
        dataset = str(data.get("dataset", "synthetic"))
        data_dir = data.get("data_dir") or "./data"
        download = bool(data.get("download", False))
        val_size = int(data.get("val_size") or 0)
    except OmegaConfBaseException as exc:
        return [f"data: {' '.join(str(exc).split())}"] if strict else []
    if dataset in DATASETS and dataset != "synthetic" and not strict and not Path(data_dir).expanduser().is_dir():
        return []
    problem = data_problem(dataset, data_dir, download, val_size)
    return [problem] if problem else []
