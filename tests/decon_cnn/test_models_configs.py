import subprocess
import sys

import pytest
import torch

from decon_cnn.models import SmallCNN, resnet18_cifar, resnet50_cifar
from tests.conftest import EXP_CONFIGS, REPO

MODELS = {"resnet18_cifar": resnet18_cifar, "resnet50_cifar": resnet50_cifar, "small_cnn": SmallCNN}


@pytest.mark.parametrize("name", ["resnet18_cifar", "resnet50_cifar", "small_cnn"])
def test_models_forward_backward_at_32x32(name):
    model = MODELS[name](num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    if name != "small_cnn":
        assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)


@pytest.mark.parametrize("path", sorted(EXP_CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_exp_config_composes(path):
    from dr_exp.compose import compose_one

    config = compose_one(EXP_CONFIGS, path.stem).config
    assert config["_target_"]


def test_step00_baseline_is_the_guides_example():
    from dr_exp.compose import compose_one

    c = compose_one(EXP_CONFIGS, "step00_baseline").config
    assert c["_target_"] == "dr_exp.trainers.decon_trainer.train_classification"
    assert c["model"]["_target_"] == "decon_cnn.models.resnet18_cifar"
    assert c["optimizer"]["_target_"] == "torch.optim.SGD" and c["optimizer"]["_partial_"]
    assert c["lr_scheduler"]["_target_"] == "torch.optim.lr_scheduler.StepLR"
    assert c["transforms"]["name"] == "cifar10_baseline"
    assert {k: c["data"][k] for k in ("dataset", "batch_size", "num_workers", "persistent_workers", "pin_memory")} == {
        "dataset": "cifar10", "batch_size": 128, "num_workers": 4, "persistent_workers": True, "pin_memory": True}
    assert {k: c["trainer"][k] for k in ("max_epochs", "accelerator", "devices", "precision", "gradient_clip_val")} == {
        "max_epochs": 100, "accelerator": "gpu", "devices": 1, "precision": "16-mixed", "gradient_clip_val": 1.0}


GUIDE_EXPERIMENT = """\
# exp_configs/experiment.yaml
defaults:
  - config  # Base from deconCNN
  - override /model: resnet50_cifar
  - override /optimizer: adam
  - override /transforms: cifar10_augmented
  - _self_

# Override specific values
optimizer:
  lr: 0.001  # Override adam's default lr

trainer:
  max_epochs: 150  # Override base config
"""


def test_the_guides_config_composition_example_composes(tmp_path):
    """The guide's experiment.yaml, as a user would copy it, on configs/ as Hydra's search path."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    (tmp_path / "experiment.yaml").write_text(GUIDE_EXPERIMENT)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
            cfg = compose("experiment", overrides=[f"hydra.searchpath=[file://{REPO / 'configs'}]"])
    finally:
        GlobalHydra.instance().clear()
    c = OmegaConf.to_container(cfg, resolve=False)
    assert c["model"] == {"_target_": "decon_cnn.models.resnet50_cifar"}
    assert c["optimizer"]["_target_"] == "torch.optim.Adam" and c["optimizer"]["lr"] == 0.001
    assert c["transforms"]["train"] == ["random_crop", "horizontal_flip"]
    assert c["trainer"]["max_epochs"] == 150 and c["data"]["dataset"] == "cifar10"
    assert c["data"]["data_dir"] == "${paths.data_dir}"  # resolved where the job runs


def test_protocol_is_satisfied_by_structured_logger(tmp_path):
    from decon_cnn.protocols import StructuredLoggerProtocol
    from dr_exp.logging import StructuredLogger

    assert isinstance(StructuredLogger(tmp_path, "j", "w"), StructuredLoggerProtocol)
    assert not isinstance(object(), StructuredLoggerProtocol)


def test_decon_cnn_imports_without_dr_exp(tmp_path):
    """A meta-path hook makes `import dr_exp` fail; all of decon_cnn must still import."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'dr_exp' or name.startswith('dr_exp.'):\n"
        "            raise ImportError('dr_exp is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        # decon_cnn.module first: it used to import factory, which imported it back
        "import decon_cnn.module, decon_cnn.optim, decon_cnn.factory, decon_cnn.train, decon_cnn.callbacks\n"
        "import decon_cnn.models, decon_cnn.data, decon_cnn.config_checks, decon_cnn.instantiate\n"
        "assert not any(m.startswith('dr_exp') for m in sys.modules)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
    import re

    src = "\n".join(p.read_text() for p in (REPO / "decon_cnn").rglob("*.py"))
    assert not re.search(r"^\s*(from|import)\s+dr_exp", src, re.M)


def test_guardrails_fall_back_with_warning():
    from decon_cnn.train import resolve_trainer_kwargs

    if torch.cuda.is_available():
        pytest.skip("the CPU fallbacks are only observable on a machine without a GPU")
    with pytest.warns(UserWarning, match="falling back"):
        kw = resolve_trainer_kwargs({"accelerator": "auto", "precision": "16-mixed", "devices": 1})
    assert kw["precision"] == "32-true"
    with pytest.warns(UserWarning, match="strategy=auto"):
        kw = resolve_trainer_kwargs({"accelerator": "cpu", "strategy": "ddp", "devices": 1})
    assert kw["strategy"] == "auto"
    with pytest.warns(UserWarning, match="no GPU"):
        kw = resolve_trainer_kwargs({"accelerator": "gpu", "precision": "bf16-mixed", "devices": 1})
    assert kw["accelerator"] == "cpu" and kw["precision"] == "32-true"


def test_guardrails_refuse_what_cannot_run_here(monkeypatch):
    from decon_cnn.errors import DeconError
    from decon_cnn.train import resolve_trainer_kwargs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeconError, match=r"trainer.devices=2 asks for 2 GPUs but none is visible"):
        resolve_trainer_kwargs({"accelerator": "gpu", "devices": 2, "strategy": "ddp"})
    with pytest.raises(DeconError, match=r"trainer.strategy=fsdp needs CUDA GPUs; use trainer.strategy=ddp"):
        resolve_trainer_kwargs({"accelerator": "cpu", "devices": 2, "strategy": "fsdp"})
    kw = resolve_trainer_kwargs({"accelerator": "cpu", "devices": 2, "strategy": "ddp"})  # 2 CPU ranks (gloo)
    assert (kw["devices"], kw["strategy"]) == (2, "ddp") and "benchmark" not in kw
    # A GPU machine with 2 GPUs: 4 is too many; cuDNN's benchmark mode is on unless the config says otherwise.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DeconError, match=r"trainer.devices=4 asks for 4 GPUs but 2 are visible"):
        resolve_trainer_kwargs({"accelerator": "gpu", "devices": 4, "strategy": "ddp"})
    assert resolve_trainer_kwargs({"accelerator": "gpu", "devices": 2, "strategy": "ddp"})["benchmark"] is True
    assert resolve_trainer_kwargs({"accelerator": "gpu", "devices": 1, "benchmark": False})["benchmark"] is False
    assert "benchmark" not in resolve_trainer_kwargs({"accelerator": "gpu", "devices": 1, "deterministic": True})


def test_training_order_is_sharded_across_ranks_and_resumable():
    from decon_cnn.data.sampler import EpochShuffleSampler

    whole = list(EpochShuffleSampler(10, seed=3, epoch=2))
    shards = [EpochShuffleSampler(10, seed=3, epoch=2, num_replicas=4, rank=r) for r in range(4)]
    drawn = [list(s) for s in shards]
    assert all(len(d) == len(s) == 3 for d, s in zip(drawn, shards, strict=True))  # padded to 12, 3 per rank
    assert sorted(i for d in drawn for i in d) == sorted(whole + whole[:2])
    assert [d[0] for d in drawn] == whole[:4]  # rank r takes every r-th index of the epoch's order
    assert all(s.next_epoch == 3 for s in shards)
    sampler = EpochShuffleSampler(10, seed=3, epoch=2, num_replicas=2, rank=1)
    it = iter(sampler)
    next(it)
    assert sampler.next_epoch == 2  # stopped mid-epoch: a resumed run must finish epoch 2's order


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_no_weight_decay_on_bias_and_norm(name):
    from decon_cnn.factory import create_optimizer
    from tests.decon_cnn.conftest import compose_job

    cfg = compose_job("quickstart", f"optimizer={name}", "optimizer.weight_decay=5e-4")
    opt = create_optimizer(SmallCNN(num_classes=10), cfg.optimizer)
    assert type(opt).__name__ == {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}[name]
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim <= 1 for p in plain["params"])


@pytest.mark.parametrize(("overrides", "lrs"), [
    (["lr_scheduler=step", "lr_scheduler.step_size=2", "lr_scheduler.gamma=0.5"], [0.1, 0.1, 0.05, 0.05, 0.025]),
    (["lr_scheduler=cosine", "lr_scheduler.warmup_epochs=2", "lr_scheduler.warmup_start_factor=0.5"],
     [0.05, 0.075, 0.1, 0.075, 0.025]),
    (["lr_scheduler=cosine", "lr_scheduler.min_lr=0.01"], [0.1, 0.0914, 0.0689, 0.0411, 0.0186]),
    (["lr_scheduler=none"], [0.1] * 5),
])
def test_lr_schedules_per_epoch(overrides, lrs):
    """Each scheduler from its config; cosine's max_epochs is the trainer's (5 here)."""
    from decon_cnn.factory import create_lr_scheduler, create_optimizer
    from tests.decon_cnn.conftest import compose_job

    cfg = compose_job("quickstart", "optimizer.lr=0.1", *overrides)
    opt = create_optimizer(SmallCNN(num_classes=10), cfg.optimizer)
    sched = create_lr_scheduler(opt, cfg.lr_scheduler, max_epochs=5)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    assert seen == pytest.approx(lrs, abs=1e-4)


def test_channels_last_module_matches_default_layout():
    from decon_cnn.module import ClassificationModule

    torch.manual_seed(0)
    model = SmallCNN(num_classes=10)
    x = torch.randn(4, 3, 32, 32)
    ref = model(x)
    nhwc = ClassificationModule(model, 10, channels_last=True)
    assert nhwc.model.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(nhwc(x), ref, atol=1e-5)
