"""Data: an ImageFolder tree that trains and is tested, the per-class cap, bad data as one-line
errors, and the torch-free checks dr_exp runs at submit time."""

import subprocess
import sys

import numpy as np
import pytest

from decon_cnn.errors import DeconError
from tests.conftest import REPO
from tests.decon_cnn.conftest import MemoryLogger, compose_job, fit

pytestmark = pytest.mark.timeout(300)

SIZES = {"train": 40, "val": 16, "test": 16}


def write_imagefolder(root, classes=("red", "green", "blue"), sizes=None, size=12, seed=0):
    """PNG files in ROOT/{train,val,test}/CLASS/, each class brighter in its own colour channel."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (sizes or SIZES).items():
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                img = rng.integers(0, 100, (size, size, 3)).astype(np.uint8)
                img[..., c % 3] += 110
                Image.fromarray(img).save(folder / f"{i:03d}.png")
    return root


def imagefolder_cfg(root, *overrides):
    return compose_job("quickstart", "data.dataset=imagefolder", f"data.data_dir={root}", "data.batch_size=16",
                       *overrides)


def test_imagefolder_trains_to_90_percent_and_is_tested(tmp_path, capfd):
    root = write_imagefolder(tmp_path / "shapes")
    logger = MemoryLogger()
    out, objects = fit(imagefolder_cfg(root, "trainer.max_epochs=3"), logger=logger, checkpoint_dir=tmp_path / "ckpt")
    assert objects["datamodule"].num_classes == 3 and len(objects["datamodule"].train_set) == 120
    assert out.metrics["val/acc"] >= 0.90, out.metrics
    # The best checkpoint is evaluated on test/ after training; the result and a metrics row say so.
    assert out.metrics["test/acc"] >= 0.90 and {"test/loss", "test/f1"} <= set(out.metrics)
    test_rows = [m for m in logger.metrics if m["phase"] == "test"]
    assert len(test_rows) == 1 and test_rows[0]["test/acc"] == pytest.approx(out.metrics["test/acc"])
    assert "acc_top5" not in " ".join(out.metrics)  # top-5 of 3 classes would always be 1
    assert any(line.startswith("test loss ") for line in capfd.readouterr().out.splitlines())


def test_max_per_class_and_val_size(tmp_path):
    from decon_cnn.data import create_data_module

    root = write_imagefolder(tmp_path / "shapes", sizes={"train": 20, "test": 4})
    dm = create_data_module(imagefolder_cfg(root, "data.max_per_class=5", "data.val_size=15"))
    dm.setup("fit")
    # val/ is missing, so 15 training images are held out; then at most 5 per class everywhere.
    train_labels = [y for _, y in dm.train_set]
    assert len(dm.val_set) <= 15 and len(dm.test_set) == 12
    assert len(train_labels) == 15 and all(train_labels.count(c) == 5 for c in range(3))

    dm = create_data_module(compose_job("quickstart", "data.max_per_class=7"))
    dm.setup("fit")
    labels = [int(y) for _, y in dm.train_set]
    assert len(labels) == 70 and all(labels.count(c) == 7 for c in range(10))


def test_pin_memory_and_persistent_workers_are_honoured(monkeypatch):
    import torch

    from decon_cnn.data import create_data_module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # pinning is only asked for with a GPU
    dm = create_data_module(compose_job("quickstart", "data.pin_memory=true", "data.persistent_workers=true",
                                        "data.num_workers=1"))
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.pin_memory and loader.persistent_workers and loader.num_workers == 1
    dm.pin_memory = False
    assert not dm.train_dataloader().pin_memory


@pytest.mark.parametrize(("layout", "message"), [
    (None, "data directory {root} does not exist; set paths.data_dir=DIR (or the DECON_DATA_DIR"),
    ({"train/cat": 0, "train/dog": 0}, "no images in {root}/train: expected one folder per class"),
    ({"train/cat": 3, "val/cat": 1}, "{root}/train has one class (cat); a classifier needs at least two"),
    ({"train/cat": 3, "train/dog": 2}, "{root} has no val/ folder; add {root}/val/CLASS/... or set data.val_size=N"),
    ({"train/cat": 3, "train/dog": 2, "val/cat": 1, "val/cow": 1}, "{root}/val has classes that train/ lacks: cow"),
])
def test_bad_imagefolder_is_a_one_line_error_here_and_at_submit(tmp_path, layout, message):
    from PIL import Image

    from decon_cnn.config_checks import check_data

    root = tmp_path / "data"
    for folder, count in (layout or {}).items():
        (root / folder).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (4, 4)).save(root / folder / f"{i}.png")
    cfg = imagefolder_cfg(root)
    with pytest.raises(DeconError) as info:
        fit(cfg)
    text = str(info.value)
    assert text.startswith(message.format(root=root)) and "\n" not in text, text
    # dr_exp's submit-time check finds the same problem where the data is visible.
    assert check_data(cfg, strict=True) == [text]
    assert check_data(cfg) == ([] if layout is None else [text])  # a path missing here may exist on the node


@pytest.mark.parametrize("layout", [{"train/cat": 0, "train/dog": 0}, {"train/cat": 3, "val/cat": 1}],
                         ids=["no images", "one class"])
def test_job_submit_refuses_a_bad_imagefolder_and_writes_nothing(tmp_path, layout):
    from PIL import Image

    from tests.conftest import run_cli

    root = tmp_path / "data"
    for folder, count in layout.items():
        (root / folder).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (4, 4)).save(root / folder / f"{i}.png")
    base = tmp_path / "runs"
    base.mkdir()
    proc = run_cli("job", "submit", "--config-path", "exp_configs", "--config-name", "quickstart",
                   "--overrides", f"data.dataset=imagefolder data.data_dir={root}", base=base)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(root) in proc.stderr and ("no images" in proc.stderr or "one class" in proc.stderr), proc.stderr
    assert not any(base.rglob("*.json")), sorted(base.rglob("*"))


def test_cifar_missing_and_download_hint(tmp_path):
    from decon_cnn.config_checks import check_data

    (tmp_path / "data").mkdir()
    cfg = compose_job("quickstart", "data.dataset=cifar10", f"data.data_dir={tmp_path / 'data'}")
    [problem] = check_data(cfg)
    assert problem.startswith(f"cifar10 not found: expected {tmp_path / 'data' / 'cifar-10-batches-py'}")
    assert "data.download=true" in problem and "paths.data_dir=" in problem
    assert check_data(compose_job("quickstart", "data.dataset=cifar10", "data.download=true",
                                  f"data.data_dir={tmp_path / 'data'}")) == []
    assert check_data(compose_job("quickstart")) == []  # synthetic: nothing to look at
    assert check_data(compose_job("quickstart", "data.dataset=mnist")) == [
        "unknown data.dataset 'mnist'; use one of cifar10, cifar100, imagefolder, synthetic"]


def test_data_dir_from_the_environment_is_resolved_where_the_job_runs(tmp_path, monkeypatch):
    """Configs may reach the trainer with ${oc.env:...} unresolved; it is resolved at run time."""
    from omegaconf import OmegaConf

    from decon_cnn.data import create_data_module

    cfg = compose_job("quickstart", "data.dataset=imagefolder")
    cfg.data.data_dir = "${paths.data_dir}"
    cfg.paths.data_dir = "${oc.env:DECON_DATA_DIR,./data}"
    root = write_imagefolder(tmp_path / "shapes", sizes={"train": 2, "val": 1})
    monkeypatch.setenv("DECON_DATA_DIR", str(root))
    dm = create_data_module(cfg)
    assert dm.data_dir == root and dm.num_classes == 3
    assert OmegaConf.is_interpolation(cfg.paths, "data_dir")  # the caller's config is left as it was


def test_config_checks_do_not_import_torch(tmp_path):
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "from decon_cnn.config_checks import check_data\n"
        f"problems = check_data({{'data': {{'dataset': 'imagefolder', 'data_dir': {str(tmp_path)!r}}}}})\n"
        "assert problems and 'no train/ folder' in problems[0], problems\n"
        "assert 'torch' not in sys.modules and 'pytorch_lightning' not in sys.modules, 'torch imported'\n"
        "print('ok', time.perf_counter() - t)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr
