"""Callbacks and loggers from config, the bridge's result (stop_reason, flags), user classes by
_target_, the guide's snippets, sanity checks, and bad input as one-line errors."""

import json

import pytest

from decon_cnn.errors import BadTarget, DeconError, TrainingDiverged
from tests.decon_cnn.conftest import MemoryLogger, compose_job, fit

pytestmark = pytest.mark.timeout(300)

USER = "tests.decon_cnn.user_models"


def bridge(config, run_dir):
    from dr_exp.trainers.decon_trainer import train_classification

    return train_classification(config, job_id="j1", worker_id="w1", storage_path=str(run_dir))


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_early_stopping_user_callback_and_csv_logger_from_config(tmp_path, capfd):
    """Through the bridge: EarlyStopping (from the callbacks group) stops the run and the result
    says why; the guide's CustomDrExpCallback logs through the run's logger; a CSVLogger and the
    LearningRateMonitor write into the run directory."""
    config = compose_job("quickstart", "trainer.max_epochs=10", "callbacks=[early_stopping,lr_monitor]",
                         "callbacks.early_stopping.patience=1", "callbacks.early_stopping.min_delta=100",
                         f"+callbacks.mine._target_={USER}.CustomDrExpCallback", "+callbacks.mine.every=4",
                         "loggers=csv")
    run = tmp_path / "run"
    out = bridge(config, run)
    # min_delta=100: no epoch after the first counts as an improvement; patience 1 stops at epoch 1.
    assert out["metrics"]["epochs"] == 2
    assert out["stop_reason"].startswith("early stopping at epoch 1: val/loss did not improve for 1 epoch")
    assert "flags" not in out
    assert out["artifacts"]["best_checkpoint"].endswith("checkpoints/best.ckpt")
    assert (run / "checkpoints" / "last.ckpt").is_file()
    events = read_jsonl(run / "events.jsonl")
    milestones = [e for e in events if e["event"] == "batch_milestone"]
    assert [e["batch"] for e in milestones] == [0, 4, 8, 12] * 2 and all(e["loss"] > 0 for e in milestones)
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if r["phase"] == "epoch"]
    assert [r["epoch"] for r in rows] == [0, 1]
    csv_text = (run / "csv" / "metrics.csv").read_text()
    assert "lr-SGD" in csv_text.splitlines()[0] and "val/acc" in csv_text
    assert "stopped: early stopping at epoch 1" in capfd.readouterr().out


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_optional_lightning_loggers_write_into_the_run_directory(tmp_path, name, monkeypatch):
    pytest.importorskip(name)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_job("quickstart", f"loggers={name}", "trainer.max_epochs=1", "data.synthetic.num_train=128")
    fit(cfg, output_dir=tmp_path)
    assert any(p.is_file() for p in tmp_path.rglob("*")), "the logger wrote nothing into the run directory"


def test_validation_values_only_on_epochs_that_validated_and_step_lr(tmp_path):
    logger = MemoryLogger()
    cfg = compose_job("quickstart", "trainer.max_epochs=4", "+trainer.check_val_every_n_epoch=2", "lr_scheduler=step",
                      "lr_scheduler.step_size=1", "lr_scheduler.gamma=0.5", "data.synthetic.num_train=256")
    fit(cfg, logger=logger)
    rows = logger.epochs()
    assert ["val/acc" in r for r in rows] == [False, True, False, True]
    assert all("train/loss" in r for r in rows)
    assert logger.epochs("lr") == pytest.approx([0.05, 0.025, 0.0125, 0.00625])  # each epoch's own lr


def test_user_nn_module_lightning_module_and_data_module_by_target(tmp_path):
    # A plain nn.Module is wrapped in decon_cnn's module; num_classes/in_channels come from the data.
    out, objects = fit(compose_job("quickstart", f"model._target_={USER}.TinyNet", "~model.width",
                                   f"data._target_={USER}.TinyDataModule", "trainer.max_epochs=3"))
    from decon_cnn.module import ClassificationModule

    assert isinstance(objects["module"], ClassificationModule)
    assert objects["module"].model.net[0].in_channels == 1 and objects["module"].num_classes == 3
    assert objects["datamodule"].batch_size == 64  # data.batch_size of the config is offered to the data module
    assert out.metrics["val/acc"] >= 0.9, out.metrics
    # A LightningModule is used as it is, and gets the optimizer (a callable) it declares.
    out, objects = fit(compose_job("quickstart", f"model._target_={USER}.TinyLitModule", "~model.width",
                                   f"data._target_={USER}.TinyDataModule", "trainer.max_epochs=3",
                                   "optimizer=adam", "optimizer.lr=0.01"))
    module = objects["module"]
    assert type(module).__name__ == "TinyLitModule" and module.built_with == {"num_classes": 3, "in_channels": 1}
    assert type(module.optimizers().optimizer).__name__ == "Adam"
    assert out.metrics["val/acc"] >= 0.9, out.metrics


def test_guide_snippets_create_model_and_create_data_module():
    """The integration guide's imports and calls, on a whole composed config."""
    import pytorch_lightning as pl

    from decon_cnn.callbacks import DrExpMetricsCallback
    from decon_cnn.data import create_data_module
    from decon_cnn.factory import create_lr_scheduler, create_model, create_optimizer

    config = compose_job("quickstart", "trainer.max_epochs=1", "data.synthetic.num_train=128",
                         "data.synthetic.num_val=64")
    data_module = create_data_module(config)
    model = create_model(config)
    callbacks = [DrExpMetricsCallback(logger=MemoryLogger())]
    trainer = pl.Trainer(**config.trainer, callbacks=callbacks, logger=False, enable_checkpointing=False)
    trainer.fit(model, data_module)
    assert 0 <= float(trainer.callback_metrics["val/acc"]) <= 1
    optimizer = create_optimizer(model.model, config.optimizer)
    assert create_lr_scheduler(optimizer, config.lr_scheduler, max_epochs=1) is not None
    assert callbacks[0].logger.epochs("epoch") == [0]
    with pytest.raises(TypeError, match="StructuredLoggerProtocol"):
        DrExpMetricsCallback(logger=object())


def test_nan_loss_stops_the_run_with_the_reason(tmp_path):
    logger = MemoryLogger()
    cfg = compose_job("quickstart", "optimizer.lr=1e12")
    with pytest.raises(TrainingDiverged) as info:
        fit(cfg, logger=logger)
    text = str(info.value)
    assert text.startswith("loss became nan at epoch 0, step ") and "lower optimizer.lr" in text and "\n" not in text
    step = int(text.split("step ")[1].split(" ")[0])
    assert step <= 10  # within a few steps (of 16 in the epoch)
    [(_, event)] = [(e, d) for e, d in logger.events if e == "sanity_warning"]
    assert event["check"] == "nan_loss"
    # Through the bridge the failure is written to the run directory before it is raised.
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged):
        bridge(cfg, run)
    errors = [e for e in read_jsonl(run / "events.jsonl") if e["event"] == "error"]
    assert errors and errors[-1]["error_type"] == "TrainingDiverged"  # the worker turns it into error.txt
    # Switched off, the run goes on and reports the flag.
    out, _ = fit(compose_job("quickstart", "optimizer.lr=1e12", "sanity.stop_on_nan=false", "trainer.max_epochs=1",
                             "data.synthetic.num_train=256"))
    assert "nan_loss" in out.flags


def test_bad_initial_loss_and_stuck_at_chance_are_flagged():
    """Logits scaled up 300x make the first loss far above ln(10); lr=0 never learns, so
    validation accuracy stays at chance."""
    logger = MemoryLogger()
    out, _ = fit(compose_job("quickstart", "optimizer.lr=0", "trainer.max_epochs=2", "sanity.chance_after_epochs=2",
                             "data.synthetic.num_train=128", f"model._target_={USER}.TinyNet", "~model.width",
                             "+model.logit_scale=300"), logger=logger)
    assert out.flags == ["bad_initial_loss", "stuck_at_chance"], out.flags
    checks = [d["check"] for e, d in logger.events if e == "sanity_warning"]
    assert checks == out.flags


class FakeTrainer:
    is_global_zero, global_step, accumulate_grad_batches, optimizers = True, 0, 1, []

    def __init__(self):
        self.current_epoch, self.callback_metrics = 0, {}


@pytest.mark.parametrize(("losses", "flagged"), [
    ([2.3, 1.2, 0.9, 2.5], True),      # back above 2x the best epoch, and above ln(10)/2
    ([2.3, 0.02, 0.01, 0.03], False),  # tripled, but at a loss no one would call diverging
    ([2.3, 2.0, 1.9, 1.95], False),
])
def test_diverging_loss_is_flagged_per_epoch(losses, flagged, capsys):
    import torch

    from decon_cnn.callbacks import SanityChecks

    logger, trainer = MemoryLogger(), FakeTrainer()
    checks = SanityChecks(logger, num_classes=10)
    for epoch, loss in enumerate(losses):
        trainer.current_epoch, trainer.callback_metrics = epoch, {"train/loss": torch.tensor(loss)}
        checks.on_train_epoch_end(trainer, None)
    assert checks.flags == (["diverging"] if flagged else [])
    assert [d["epoch"] for _, d in logger.events] == ([3] if flagged else [])
    assert ("sanity warning (diverging)" in capsys.readouterr().out) == flagged


@pytest.mark.parametrize(("overrides", "error", "message"), [
    ([f"+callbacks.bad._target_={USER}_missing.Callback"], BadTarget,
     f"callbacks.bad: _target_ '{USER}_missing.Callback' does not import (No module named '{USER}_missing')"),
    ([f"+callbacks.bad._target_={USER}.NoSuchCallback"], BadTarget,
     f"callbacks.bad: _target_ '{USER}.NoSuchCallback' does not import (module '{USER}' has no attribute"),
    ([f"+callbacks.bad._target_={USER}.NotACallback"], BadTarget, "callbacks.bad: _target_ gave a NotACallback, not a"),
    (["+loggers.bad._target_=pytorch_lightning.loggers.NoLogger"], BadTarget,
     "loggers.bad: _target_ 'pytorch_lightning.loggers.NoLogger' does not import"),
    (["+model.depth=3"], BadTarget, "model: cannot build decon_cnn.models.SmallCNN (TypeError: "),
    (["data.dataset=cifar10", "data.data_dir=/nonexistent/decon"], DeconError,
     "cifar10 not found: expected /nonexistent/decon/cifar-10-batches-py"),
    (["+trainer.max_epoch=3"], DeconError, "trainer.max_epoch is not a pytorch_lightning.Trainer argument"),
    (["+trainer.callbacks=[]"], DeconError, "trainer.callbacks is set by decon_cnn; configure it under `callbacks:`"),
    (["lr_scheduler=cosine", "lr_scheduler.warmup_epochs=5"], DeconError,
     "lr_scheduler.warmup_epochs=5 must be below trainer.max_epochs=3"),
])
def test_bad_input_is_one_line_error(overrides, error, message):
    with pytest.raises(error) as info:
        fit(compose_job("quickstart", *overrides))
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text, text


def test_check_targets_imports_every_nested_target():
    from decon_cnn.config_checks import check_targets

    assert check_targets(compose_job("step00_baseline", "callbacks=[early_stopping,lr_monitor]", "loggers=csv")) == []
    problems = check_targets(compose_job("quickstart", f"+callbacks.bad._target_={USER}_missing.Callback",
                                         "model._target_=decon_cnn.models.resnet34_cifar"))
    assert [p.split(":")[0] for p in problems] == ["model", "callbacks.bad"]
    assert "module 'decon_cnn.models' has no attribute 'resnet34_cifar'" in problems[0]
