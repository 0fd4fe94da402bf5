"""``train(cfg, run)``: fit a classifier from a composed config; ``python -m decon_cnn.train``
runs it with Hydra on ``configs/``.

``train`` only instantiates and fits: the data module, model, callbacks and loggers come from
``_target_`` configs (:mod:`decon_cnn.factory`); what the caller adds (a metrics logger, where
checkpoints go, a stop request, a checkpoint to resume from) comes in one :class:`RunOptions`.
It returns a :class:`TrainResult` (plain values) and, separately, the objects it built.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.model_helpers import is_overridden

from decon_cnn.callbacks import DrExpMetricsCallback, EpochPrinter, PreemptionCallback, SanityChecks, TrainingPreempted
from decon_cnn.errors import DeconError
from decon_cnn.factory import create_callbacks, create_data_module, create_loggers, create_model, data_shape
from decon_cnn.instantiate import resolved
from decon_cnn.protocols import NullLogger, StructuredLoggerProtocol

log = logging.getLogger(__name__)

# Keys of `trainer:` that train() sets itself.
_OWN_TRAINER_KEYS = {"callbacks": "callbacks", "logger": "loggers", "enable_checkpointing": "checkpoint",
                     "default_root_dir": "the run directory"}


@dataclass
class RunOptions:
    """What a caller adds to a config (dr_exp's bridge: the run directory's logger and
    checkpoint folder, its pre-emption flag, the checkpoint to resume from).

    Attributes:
        logger: receives metrics rows and events (``DrExpMetricsCallback``), sanity warnings,
            and is offered to config callbacks that declare a ``logger`` parameter.
        output_dir: where Lightning loggers from ``loggers:`` write (default: the working directory).
        checkpoint_dir: ``best.ckpt`` / ``last.ckpt`` go here; no checkpoints without it.
        resume_from: a full checkpoint to continue from (same epoch, step and data order).
        init_weights_from: a checkpoint to take only the model weights from (e.g. the last stage).
        should_stop: polled after every batch and epoch; when true, save ``last.ckpt`` and stop
            with ``preempted`` in the result.
        callbacks: more Lightning callbacks (after those of the config).
        extra_fields: added to every metrics row and event (e.g. ``{"stage": "warmup"}``).
    """

    logger: StructuredLoggerProtocol | None = None
    output_dir: str | os.PathLike[str] | None = None
    checkpoint_dir: str | os.PathLike[str] | None = None
    resume_from: str | None = None
    init_weights_from: str | None = None
    should_stop: Callable[[], bool] | None = None
    callbacks: Sequence[pl.Callback] = ()
    extra_fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    """Plain values only (JSON-ready): final metrics (``train/*``, ``val/*``, ``test/*``), how far
    training got, the checkpoints, why it stopped before ``max_epochs`` (``stop_reason``) and the
    sanity checks' ``flags``."""

    metrics: dict[str, float]
    epochs: int
    global_step: int
    preempted: bool = False
    best_model_path: str | None = None
    last_model_path: str | None = None
    stop_reason: str | None = None
    flags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)
    log.warning(message)


def _device_count(devices: Any, on_gpu: bool) -> int | None:
    """``trainer.devices`` as a number of processes, as Lightning reads it (None: let it decide)."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, list | tuple):
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto":
            return torch.cuda.device_count() if on_gpu else 1
        if "," in text:
            return len([d for d in text.split(",") if d.strip()])
        try:
            devices = int(text)
        except ValueError:
            return None
    if isinstance(devices, int):
        if devices == -1:
            return torch.cuda.device_count() if on_gpu else None
        return devices if devices >= 1 else None
    return None


def resolve_trainer_kwargs(trainer_cfg: Any) -> dict[str, Any]:
    """``trainer.*`` as pl.Trainer kwargs, with the fallbacks a user expects on this machine.

    Falls back, with a warning: a GPU accelerator for one device on a machine without a GPU (to
    the CPU), 16-bit precision without a GPU (32-true), bf16 on a GPU without it (16-mixed), a
    DDP strategy with one device (auto). Refuses (:class:`DeconError`): more devices than GPUs are
    visible, FSDP without GPUs, a key Lightning does not know. GPU runs default to
    ``benchmark=True`` (cuDNN picks the fastest kernels for the fixed image shape) unless
    ``trainer.benchmark`` or ``trainer.deterministic`` says otherwise.
    """
    kw = OmegaConf.to_container(trainer_cfg, resolve=True) if OmegaConf.is_config(trainer_cfg) else dict(trainer_cfg)
    allowed = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    for key in kw:
        if key in _OWN_TRAINER_KEYS:
            raise DeconError(f"trainer.{key} is set by decon_cnn; configure it under `{_OWN_TRAINER_KEYS[key]}:` instead")
        if key not in allowed:
            raise DeconError(f"trainer.{key} is not a pytorch_lightning.Trainer argument; remove it or fix the spelling")
    cuda = torch.cuda.is_available()
    accelerator = str(kw.get("accelerator", "auto"))
    devices = kw.get("devices", "auto")
    if accelerator in ("gpu", "cuda") and not cuda:
        wanted = _device_count(devices, True)
        if wanted is not None and wanted > 1:
            raise DeconError(f"trainer.devices={devices} asks for {wanted} GPUs but none is visible; lower "
                             "trainer.devices or run where GPUs are visible")
        _warn(f"trainer.accelerator={accelerator} but no GPU is visible; falling back to cpu")
        kw["accelerator"] = accelerator = "cpu"
        kw["devices"] = devices = 1
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda)
    n_devices = _device_count(devices, on_gpu)
    if on_gpu and n_devices is not None and n_devices > torch.cuda.device_count():
        visible = torch.cuda.device_count()
        raise DeconError(f"trainer.devices={devices} asks for {n_devices} GPUs but {visible} "
                         f"{'is' if visible == 1 else 'are'} visible; lower trainer.devices or run where that many "
                         "GPUs are visible")
    precision = str(kw.get("precision", "32-true"))
    if not on_gpu and precision in ("16", "16-mixed", "16-true", "bf16", "bf16-mixed", "bf16-true"):
        _warn(f"trainer.precision={precision} needs a GPU; falling back to 32-true on this machine")
        kw["precision"] = "32-true"
    elif on_gpu and precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
        _warn(f"trainer.precision={precision} is not supported by this GPU; falling back to 16-mixed")
        kw["precision"] = "16-mixed"
    strategy = str(kw.get("strategy", "auto"))
    if strategy.startswith("fsdp") and not on_gpu:
        raise DeconError(f"trainer.strategy={strategy} needs CUDA GPUs; use trainer.strategy=ddp on the CPU")
    if strategy.startswith("ddp") and (n_devices == 1 or (not on_gpu and n_devices is None)):
        _warn(f"trainer.strategy={strategy} with one device; falling back to strategy=auto")
        kw["strategy"] = "auto"
    if on_gpu and kw.get("benchmark") is None and not kw.get("deterministic"):
        kw["benchmark"] = True
    return kw


def checkpoint_callback(cfg: Any, dirpath: Path) -> pl.callbacks.ModelCheckpoint:
    """``best.ckpt`` by ``checkpoint.monitor``/``mode`` (top-k when ``save_top_k`` > 1)."""
    ck = cfg.get("checkpoint") or {}
    monitor = ck.get("monitor", "val/acc")
    top_k = int(ck.get("save_top_k", 1)) if monitor else 0
    filename = ck.get("filename") or ("best" if top_k == 1 else "best-epoch{epoch:03d}")
    try:
        return pl.callbacks.ModelCheckpoint(
            dirpath=str(dirpath), filename=filename, monitor=monitor, mode=str(ck.get("mode", "max")),
            save_top_k=top_k, save_last=False, every_n_epochs=ck.get("every_n_epochs", 1),
            enable_version_counter=False, auto_insert_metric_name=False)
    except MisconfigurationException as exc:
        raise DeconError(f"checkpoint: {' '.join(str(exc).split())}") from None


def last_checkpoint_callback(cfg: Any, dirpath: Path) -> pl.callbacks.ModelCheckpoint | None:
    """``last.ckpt`` after every ``every_n_epochs`` epochs, whatever the monitored metric did: a
    run resumed after its worker was lost must not repeat epochs. (Lightning's own ``save_last``
    refreshes it only when a best checkpoint is saved.)"""
    ck = cfg.get("checkpoint") or {}
    if not bool(ck.get("save_last", True)):
        return None
    return pl.callbacks.ModelCheckpoint(dirpath=str(dirpath), filename="last", monitor=None, save_top_k=1,
                                        every_n_epochs=ck.get("every_n_epochs", 1), enable_version_counter=False,
                                        auto_insert_metric_name=False)


def stop_reason(trainer: pl.Trainer) -> str | None:
    """Why ``trainer`` stopped before ``max_epochs``, in words (None if it did not)."""
    from pytorch_lightning.callbacks import EarlyStopping, Timer

    for cb in trainer.callbacks:
        if isinstance(cb, EarlyStopping) and cb.stopping_reason_message:
            unit = "epoch" if trainer.check_val_every_n_epoch == 1 else "validation"
            unit += "" if cb.wait_count == 1 else "s"
            best = float(cb.best_score)
            if cb.stopping_reason.name == "PATIENCE_EXHAUSTED":
                return (f"early stopping at epoch {cb.stopped_epoch}: {cb.monitor} did not improve for "
                        f"{cb.wait_count} {unit} (best {best:.4g})")
            message = cb.stopping_reason_message.replace(" Signaling Trainer to stop.", "")
            return f"early stopping at epoch {cb.stopped_epoch}: {message}"
        if isinstance(cb, Timer) and cb.time_remaining() is not None and cb.time_remaining() <= 0:
            return f"time limit trainer.max_time reached at epoch {trainer.current_epoch}"
    if trainer.max_epochs and 0 <= trainer.current_epoch < trainer.max_epochs and trainer.should_stop:
        return f"stopped at epoch {trainer.current_epoch} by a callback (trainer.should_stop)"
    return None


@dataclass
class _Callbacks:
    """The callbacks of a run, in order: the epoch line, the metrics logger, sanity checks, the
    config's callbacks, the caller's, then checkpoints and the pre-emption hook."""

    all: list[pl.Callback]
    sanity: SanityChecks | None
    checkpoint: pl.callbacks.ModelCheckpoint | None
    preemption: PreemptionCallback | None

    @classmethod
    def build(cls, cfg: Any, run: RunOptions, num_classes: int) -> _Callbacks:
        extra = dict(run.extra_fields)
        every_n = int((cfg.get("metrics") or {}).get("every_n_batches", 0))
        callbacks: list[pl.Callback] = [EpochPrinter(extra)]
        if run.logger is not None:
            callbacks.append(DrExpMetricsCallback(run.logger, every_n, extra))
        sanity = _sanity(cfg, run.logger, num_classes, not (run.resume_from or run.init_weights_from), extra)
        callbacks += [sanity] if sanity is not None else []
        callbacks += create_callbacks(cfg, run.logger or NullLogger())
        callbacks += list(run.callbacks)
        checkpoint = preemption = None
        if run.checkpoint_dir is not None:
            checkpoint = checkpoint_callback(cfg, Path(run.checkpoint_dir))
            callbacks.append(checkpoint)
            last = last_checkpoint_callback(cfg, Path(run.checkpoint_dir))
            callbacks += [last] if last is not None else []
            if run.should_stop is not None:
                preemption = PreemptionCallback(run.should_stop, str(Path(run.checkpoint_dir) / "last.ckpt"))
                callbacks.append(preemption)
        return cls(callbacks, sanity, checkpoint, preemption)


def _sanity(cfg: Any, logger: StructuredLoggerProtocol | None, num_classes: int | None, fresh: bool,
            extra: Mapping[str, Any]) -> SanityChecks | None:
    spec = dict(cfg.get("sanity") or {})
    if not spec.pop("enabled", True):
        return None
    spec["initial_loss"] = bool(spec.get("initial_loss", True)) and fresh
    try:
        return SanityChecks(logger, num_classes, extra=extra, **spec)
    except (TypeError, ValueError) as exc:
        raise DeconError(f"sanity: {' '.join(str(exc).split())}") from None


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            out[key] = float(value)
    return out


def train(cfg: DictConfig | Mapping[str, Any], run: RunOptions | None = None) -> tuple[TrainResult, dict[str, Any]]:
    """Fit the model ``cfg`` describes. Returns the result and the objects built
    (``module``, ``datamodule``, ``trainer``).

    After fitting, the test split (if the data has one and ``test`` is true) is evaluated with
    the best checkpoint. A NaN loss raises :class:`~decon_cnn.errors.TrainingDiverged`
    (unless ``sanity.stop_on_nan`` is false); configuration and data problems raise
    :class:`~decon_cnn.errors.DeconError` with a one-line message.
    """
    run = run or RunOptions()
    cfg = resolved(cfg)
    pl.seed_everything(int(cfg.get("seed", 0)), workers=True, verbose=False)
    datamodule = create_data_module(cfg)
    module = create_model(cfg, datamodule)
    if run.init_weights_from:
        state = torch.load(run.init_weights_from, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
    if run.resume_from and not Path(run.resume_from).is_file():
        raise DeconError(f"resume_from={run.resume_from} does not exist; drop it to start from scratch")
    trainer_kwargs = resolve_trainer_kwargs(cfg.get("trainer") or {})
    cbs = _Callbacks.build(cfg, run, data_shape(datamodule, cfg)[0])
    sanity, checkpoint_cb, preempt_cb, callbacks = cbs.sanity, cbs.checkpoint, cbs.preemption, cbs.all
    output_dir = Path(run.output_dir) if run.output_dir is not None else Path.cwd()
    loggers = create_loggers(cfg, output_dir)
    try:
        trainer = pl.Trainer(callbacks=callbacks, logger=loggers or False, enable_checkpointing=checkpoint_cb is not None,
                             default_root_dir=str(output_dir), **trainer_kwargs)
    except (MisconfigurationException, TypeError, ValueError) as exc:
        raise DeconError(f"trainer: {' '.join(str(exc).split())}") from None

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=run.resume_from or None)
    except TrainingPreempted:
        pass  # the checkpoint is saved; the caller hands the run back
    except MisconfigurationException as exc:
        raise DeconError(" ".join(str(exc).split())) from exc
    preempted = bool(preempt_cb and preempt_cb.preempted)
    reason = None if preempted else stop_reason(trainer)
    if reason and trainer.is_global_zero:
        print(f"stopped: {reason}", flush=True)
    metrics = _scalars(trainer.callback_metrics)

    best = checkpoint_cb.best_model_path if checkpoint_cb else None
    if not preempted and cfg.get("test", True) and _has_test(datamodule, module):
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        metrics.update({k: v for k, v in _scalars(trainer.callback_metrics).items() if k.startswith("test/")})
    if trainer.strategy.root_device.type == "cuda":  # this rank's device; `results --sort` can use it
        metrics["gpu/peak_memory_mb"] = torch.cuda.max_memory_allocated(trainer.strategy.root_device) / 2**20

    result = TrainResult(
        metrics=metrics, epochs=trainer.current_epoch, global_step=trainer.global_step, preempted=preempted,
        best_model_path=best or None,
        last_model_path=str(Path(run.checkpoint_dir) / "last.ckpt") if run.checkpoint_dir is not None else None,
        stop_reason=reason, flags=list(sanity.flags) if sanity else [])
    return result, {"module": module, "datamodule": datamodule, "trainer": trainer}


def _has_test(datamodule: Any, module: pl.LightningModule) -> bool:
    if not is_overridden("test_step", module, pl.LightningModule):
        return False
    if hasattr(datamodule, "has_test"):
        return bool(datamodule.has_test)
    return is_overridden("test_dataloader", datamodule, pl.LightningDataModule)


def _main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    config_dir = str(Path(__file__).resolve().parent.parent / "configs")

    @hydra.main(version_base="1.3", config_path=config_dir, config_name="config")
    def run(cfg: DictConfig) -> None:
        output_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            result, _ = train(cfg, RunOptions(output_dir=output_dir, checkpoint_dir=output_dir / "checkpoints"))
        except DeconError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        for key, value in sorted(result.metrics.items()):
            print(f"{key}: {value:.4f}")

    run()


if __name__ == "__main__":
    _main()
