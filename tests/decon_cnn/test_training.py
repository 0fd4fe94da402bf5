"""Training that really trains: accuracy, the CIFAR on-disk path, resume continuity."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from decon_cnn.train import train
from tests.decon_cnn.conftest import MemoryLogger

pytestmark = pytest.mark.timeout(300)


def test_quickstart_learns_to_90_percent(quickstart_cfg, tmp_path):
    logger = MemoryLogger()
    out = train(quickstart_cfg("seed=0"), logger=logger, checkpoint_dir=tmp_path / "ckpt")
    assert out["metrics"]["val/acc"] >= 0.90, out["metrics"]
    epochs = [m for m in logger.metrics if m["phase"] == "epoch"]
    assert [m["epoch"] for m in epochs] == [0, 1, 2]
    assert epochs[0]["val/acc"] < epochs[-1]["val/acc"] or epochs[0]["val/acc"] >= 0.9
    assert epochs[-1]["train/loss"] < epochs[0]["train/loss"]
    assert (tmp_path / "ckpt" / "best.ckpt").is_file() and (tmp_path / "ckpt" / "last.ckpt").is_file()


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
    out = train(cfg, logger=logger)
    assert out["epochs"] == 1 and out["global_step"] == 4  # 200 images / 50 per batch
    assert 0.0 <= out["metrics"]["val/acc"] <= 1.0 and np.isfinite(out["metrics"]["train/loss"])


def test_missing_dataset_is_a_clear_error_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "decon_cnn.train", "data.dataset=cifar10",
                           f"paths.data_dir={tmp_path / 'nowhere'}", "machine=cpu", "trainer.max_epochs=1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cifar10 not found: expected") and "cifar-10-batches-py" in last
    assert "Traceback" not in proc.stderr


def test_resume_after_preemption_matches_uninterrupted_run(quickstart_cfg, tmp_path):
    import pytorch_lightning as pl

    cfg = quickstart_cfg("seed=3", "trainer.max_epochs=4")
    full = train(cfg, logger=MemoryLogger(), checkpoint_dir=tmp_path / "a")

    stop = {"flag": False}

    class StopAfterEpoch(pl.Callback):
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == 1:
                stop["flag"] = True

    logger = MemoryLogger()
    first = train(cfg, logger=logger, checkpoint_dir=tmp_path / "b", should_stop=lambda: stop["flag"],
                  callbacks=[StopAfterEpoch()])
    assert first["preempted"] and first["epochs"] == 2
    second = train(cfg, logger=logger, checkpoint_dir=tmp_path / "b", resume_from=first["last_model_path"])
    assert not second["preempted"] and second["epochs"] == full["epochs"] == 4
    epochs = [m["epoch"] for m in logger.metrics if m["phase"] == "epoch"]
    assert epochs == [0, 1, 2, 3]
    a = full["module"].state_dict()
    b = second["module"].state_dict()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key


def test_multi_stage_continues_from_previous_stage_and_resumes_mid_stage(tmp_path, monkeypatch):
    import json

    from dr_exp import preemption
    from dr_exp.compose import compose_one
    from dr_exp.trainers.multi_stage_trainer import train as multi
    from tests.conftest import EXP_CONFIGS

    config = compose_one(EXP_CONFIGS, "multi_stage").config
    config.pop("_target_")
    run = tmp_path / "run"
    # Pre-empt during the second stage: the request arrives once stage one is recorded.
    import dr_exp.trainers.multi_stage_trainer as ms

    real = ms.run_decon

    def run_and_request(**kw):
        if kw["extra_fields"]["stage"] == "finetune":
            preemption.request()
        return real(**kw)

    monkeypatch.setattr(ms, "run_decon", run_and_request)
    try:
        with pytest.raises(preemption.Preempted) as info:
            multi(job_id="j", worker_id="w", storage_path=str(run), **config)
    finally:
        preemption.reset()
    monkeypatch.setattr(ms, "run_decon", real)
    assert "stage1_finetune" in info.value.resume_from
    out = multi(job_id="j", worker_id="w", storage_path=str(run), resume_from=info.value.resume_from, **config)
    assert out["metrics"]["stage"] == "finetune" and out["metrics"]["val/acc"] >= 0.9
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
    full = train(cfg, logger=MemoryLogger(), checkpoint_dir=tmp_path / "a")
    stop = {"flag": False}

    class StopMidEpoch(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 6:
                stop["flag"] = True

    logger = MemoryLogger()
    first = train(cfg, logger=logger, checkpoint_dir=tmp_path / "b", should_stop=lambda: stop["flag"],
                  callbacks=[StopMidEpoch()])
    assert first["preempted"] and first["global_step"] == 16 + 7
    second = train(cfg, logger=logger, checkpoint_dir=tmp_path / "b", resume_from=first["last_model_path"])
    assert second["global_step"] == full["global_step"] == 48
    assert [m["epoch"] for m in logger.metrics if m["phase"] == "epoch"] == [0, 1, 2]
    a, b = full["module"].state_dict(), second["module"].state_dict()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key
