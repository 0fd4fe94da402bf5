import subprocess
import sys

import pytest
import torch

from decon_cnn.models import build_model
from tests.conftest import EXP_CONFIGS, REPO


@pytest.mark.parametrize("name", ["resnet18_cifar", "resnet50_cifar", "small_cnn"])
def test_models_forward_backward_at_32x32(name):
    model = build_model(name, num_classes=10)
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


def test_step00_baseline_is_resnet18_cifar10_100_epochs():
    from dr_exp.compose import compose_one

    c = compose_one(EXP_CONFIGS, "step00_baseline").config
    assert c["_target_"] == "dr_exp.trainers.decon_trainer.train_classification"
    assert c["model"]["name"] == "resnet18_cifar" and c["data"]["dataset"] == "cifar10"
    assert c["trainer"]["max_epochs"] == 100


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
        "import decon_cnn, decon_cnn.train, decon_cnn.callbacks, decon_cnn.factory, decon_cnn.models, decon_cnn.data\n"
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


def test_no_weight_decay_on_bias_and_norm():
    from decon_cnn.factory import create_optimizer

    model = build_model("small_cnn", num_classes=10)
    opt = create_optimizer(model, {"name": "sgd", "lr": 0.1, "weight_decay": 5e-4})
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim <= 1 for p in plain["params"])


def test_channels_last_module_matches_default_layout():
    from decon_cnn.module import ClassificationModule

    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10)
    x = torch.randn(4, 3, 32, 32)
    ref = model(x)
    nhwc = ClassificationModule(model, 10, {"name": "sgd", "lr": 0.1}, {"name": "none"}, 1, channels_last=True)
    assert nhwc.model.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(nhwc(x), ref, atol=1e-5)
