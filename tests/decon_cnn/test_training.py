"""Training that really trains: accuracy, the CIFAR on-disk path, resume continuity."""

import math
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.decon_cnn.conftest import MemoryLogger, fit

pytestmark = pytest.mark.timeout(300)

EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)  train loss ([\d.]+) acc ([\d.]+)  val loss ([\d.]+) acc ([\d.]+)  "
                        r"lr ([\d.e-]+)  (\d+) img/s  ([\d.]+)s$")


def test_quickstart_learns_to_90_percent(quickstart_cfg, tmp_path, capfd):
    logger = MemoryLogger()
    out, _ = fit(quickstart_cfg("seed=0"), logger=logger, checkpoint_dir=tmp_path / "ckpt")
    assert out.metrics["val/acc"] >= 0.90, out.metrics
    assert out.flags == [] and out.stop_reason is None  # a healthy run raises no sanity flag
    assert not [e for e, _ in logger.events if e == "sanity_warning"]
    epochs = logger.epochs()
    assert [m["epoch"] for m in epochs] == [0, 1, 2]
    assert epochs[0]["val/acc"] < epochs[-1]["val/acc"] or epochs[0]["val/acc"] >= 0.9
    assert epochs[-1]["train/loss"] < epochs[0]["train/loss"]
    assert {"val/f1", "val/acc_top5", "images_per_s", "epoch_time_s"} <= set(epochs[-1])
    # The lr of a row is the lr the epoch trained with: cosine from 0.05 over 3 epochs.
    expected = [0.05 * 0.5 * (1 + math.cos(math.pi * e / 3)) for e in range(3)]
    assert logger.epochs("lr") == pytest.approx(expected)
    assert (tmp_path / "ckpt" / "best.ckpt").is_file() and (tmp_path / "ckpt" / "last.ckpt").is_file()
    # One human line per epoch on stdout, with the same numbers as the metrics rows.
    lines = [line for line in capfd.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 3, lines
    for line, row in zip(lines, epochs, strict=True):
        m = EPOCH_LINE.match(line)
        assert m, line
        assert int(m[1]) == row["epoch"] + 1 and int(m[2]) == 3
        assert float(m[3]) == pytest.approx(row["train/loss"], abs=1e-4)
        assert float(m[6]) == pytest.approx(row["val/acc"], abs=1e-4)
        assert float(m[7]) == pytest.approx(row["lr"], rel=1e-3)


def write_cifar10(root, n_train=200, n_test=100):
    """A small data set in the CIFAR-10 python-pickle format, with a learnable signal."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n):
        labels = rng.integers(0, 10, n)
        data = rng.integers(0, 60, (n, 3, 32, 32)).astype(np.uint8)
        data[np.arange(n), labels % 3, :, :] += (20 * labels).astype(np.uint8)[:, None, None]
        # CIFAR's pickles come from Python 2; torchvision loads them with encoding="latin1",
        # which yields str keys. Python 3 pickles with str keys load the same way.
        return {"data": data.reshape(n, -1), "labels": labels.tolist()}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as fh:
            pickle.dump(batch(n_train // 5), fh)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump(batch(n_test), fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)


def test_trains_one_epoch_from_cifar10_on_disk(quickstart_cfg, tmp_path):
    write_cifar10(tmp_path / "data")
    cfg = quickstart_cfg("data.dataset=cifar10", f"paths.data_dir={tmp_path / 'data'}", "trainer.max_epochs=1",
                         "transforms=cifar10_augmented", "data.batch_size=50")
    logger = MemoryLogger()
    out, _ = fit(cfg, logger=logger)
    assert out.epochs == 1 and out.global_step == 4  # 200 images / 50 per batch
    assert 0.0 <= out.metrics["val/acc"] <= 1.0 and np.isfinite(out.metrics["train/loss"])


def test_python_m_decon_cnn_train_runs_on_configs(tmp_path):
    """Standalone, without dr_exp: Hydra over configs/, one line per epoch, checkpoints in the
    Hydra output directory, the final metrics printed."""
    proc = subprocess.run([sys.executable, "-m", "decon_cnn.train", "model=small_cnn", "data.dataset=synthetic",
                           "transforms=none", "machine=cpu", "trainer.max_epochs=1", "data.synthetic.num_train=128",
                           "data.synthetic.num_val=64", "hydra.run.dir=out"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^epoch 1/1  train loss [\d.]+ acc [\d.]+  val loss", proc.stdout, re.M), proc.stdout
    assert re.search(r"^val/acc: [\d.]+$", proc.stdout, re.M)
    assert (tmp_path / "out" / "checkpoints" / "last.ckpt").is_file()


def test_missing_dataset_is_a_clear_error_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "decon_cnn.train", "data.dataset=cifar10",
                           f"paths.data_dir={tmp_path / 'nowhere'}", "machine=cpu", "trainer.max_epochs=1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cifar10 not found: expected") and "cifar-10-batches-py" in last
    assert "paths.data_dir=" in last and "DECON_DATA_DIR" in last and "data.download=true" in last
    assert "Traceback" not in proc.stderr


def test_resume_after_preemption_matches_uninterrupted_run(quickstart_cfg, tmp_path):
    import pytorch_lightning as pl

    cfg = quickstart_cfg("seed=3", "trainer.max_epochs=4")
    full_logger = MemoryLogger()
    full, full_objects = fit(cfg, logger=full_logger, checkpoint_dir=tmp_path / "a")

    stop = {"flag": False}

    class StopAfterEpoch(pl.Callback):
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == 1:
                stop["flag"] = True

    logger = MemoryLogger()
    first, _ = fit(cfg, logger=logger, checkpoint_dir=tmp_path / "b", should_stop=lambda: stop["flag"],
                   callbacks=[StopAfterEpoch()])
    assert first.preempted and first.epochs == 2 and first.stop_reason is None
    second, objects = fit(cfg, logger=logger, checkpoint_dir=tmp_path / "b", resume_from=first.last_model_path)
    assert not second.preempted and second.epochs == full.epochs == 4
    assert logger.epochs("epoch") == [0, 1, 2, 3]
    assert logger.epochs("lr") == pytest.approx(full_logger.epochs("lr"))  # the schedule resumes where it was
    a = full_objects["module"].state_dict()
    b = objects["module"].state_dict()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key


def test_multi_stage_continues_from_previous_stage_and_resumes_mid_stage(tmp_path, monkeypatch):
    import json

    from dr_exp import preemption
    from dr_exp.trainers.multi_stage_trainer import train as multi
    from tests.decon_cnn.conftest import compose_job

    config = compose_job("multi_stage")
    run = tmp_path / "run"
    # Pre-empt during the second stage: the request arrives once stage one is recorded.
    import dr_exp.trainers.multi_stage_trainer as ms

    real = ms.run_decon

    def run_and_request(config, **kw):
        if kw["extra_fields"]["stage"] == "finetune":
            assert config.optimizer._target_ == "torch.optim.Adam" and "momentum" not in config.optimizer
            preemption.request()
        return real(config, **kw)

    monkeypatch.setattr(ms, "run_decon", run_and_request)
    try:
        with pytest.raises(preemption.Preempted) as info:
            multi(config, job_id="j", worker_id="w", storage_path=str(run))
    finally:
        preemption.reset()
    monkeypatch.setattr(ms, "run_decon", real)
    assert "stage1_finetune" in info.value.resume_from
    out = multi(config, job_id="j", worker_id="w", storage_path=str(run), resume_from=info.value.resume_from)
    assert out["metrics"]["stage"] == "finetune" and out["metrics"]["val/acc"] >= 0.9
    assert set(out["artifacts"]) == {"warmup", "finetune"} and "flags" not in out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["phase"] == "epoch"]
    assert [(r["stage"], r["epoch"]) for r in epochs] == [("warmup", 0), ("warmup", 1), ("finetune", 0)]
    assert epochs[-1]["step"] == 16  # the interrupted epoch was finished on resume: 1024 / 64 batches
    from dr_exp.job import JobRecord
    from dr_exp.results import curves

    rec = JobRecord(id="j", experiment="e", config={}, storage_path=str(run))
    assert [e for e, _ in curves([rec], "val/acc", tmp_path)["j"]] == [0, 1, 2]  # stages laid end to end


def test_mid_epoch_preemption_resumes_exactly(quickstart_cfg, tmp_path):
    """Pre-empted in the middle of an epoch: the resumed run skips the batches already trained
    on (the data loader's position is in the checkpoint) and ends with the same weights."""
    import pytorch_lightning as pl

    cfg = quickstart_cfg("seed=5", "trainer.max_epochs=3")
    full_logger = MemoryLogger()
    full, full_objects = fit(cfg, logger=full_logger, checkpoint_dir=tmp_path / "a")
    stop = {"flag": False}

    class StopMidEpoch(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 6:
                stop["flag"] = True

    logger = MemoryLogger()
    first, _ = fit(cfg, logger=logger, checkpoint_dir=tmp_path / "b", should_stop=lambda: stop["flag"],
                   callbacks=[StopMidEpoch()])
    assert first.preempted and first.global_step == 16 + 7
    second, objects = fit(cfg, logger=logger, checkpoint_dir=tmp_path / "b", resume_from=first.last_model_path)
    assert second.global_step == full.global_step == 48
    assert logger.epochs("epoch") == [0, 1, 2]
    # The resumed epoch's row has the epoch's lr and a throughput of its own batches.
    assert logger.epochs("lr") == pytest.approx(full_logger.epochs("lr"))
    assert all(0 < r["epoch_time_s"] < 600 and r["images_per_s"] > 0 for r in logger.epochs())
    a, b = full_objects["module"].state_dict(), objects["module"].state_dict()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key


def test_last_checkpoint_follows_every_epoch_even_without_a_new_best(tmp_path):
    """A run resumed after its worker was lost starts from last.ckpt: it must be the last epoch,
    not the last epoch that improved the monitored metric."""
    from decon_cnn.train import RunOptions, train
    from tests.decon_cnn.conftest import compose_job

    cfg = compose_job("quickstart", "trainer.max_epochs=3", "checkpoint.monitor=val/loss", "checkpoint.mode=max",
                      "data.synthetic.num_train=256", "data.synthetic.num_val=128")
    train(cfg, RunOptions(checkpoint_dir=tmp_path))
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["epoch"] == 2
    assert torch.load(tmp_path / "best.ckpt", weights_only=False)["epoch"] == 0  # val/loss only fell
