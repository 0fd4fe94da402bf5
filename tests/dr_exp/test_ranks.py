"""The rule that decides how many ranks a job runs (and that it agrees with decon_cnn's own
guardrails), rank-0-only writes, how a rank's failure is reported, and the worker's GPU probe."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from dr_exp.errors import ConfigError
from dr_exp.fileio import read_jsonl
from dr_exp.ranks import local_world_size, merge_failure
from tests.conftest import EXP_CONFIGS, run_cli

pytestmark = pytest.mark.timeout(120)


def ranks(gpus: int, **trainer) -> int:
    return local_world_size({"trainer": trainer}, gpus=lambda: gpus)


@pytest.mark.parametrize(("gpus", "trainer", "expected"), [
    (0, {}, 1),
    (0, {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}, 2),
    (0, {"accelerator": "cpu", "devices": "2", "strategy": "ddp_find_unused_parameters_true"}, 2),
    (0, {"accelerator": "cpu", "devices": 2, "strategy": "auto"}, 2),        # Lightning picks ddp
    (0, {"accelerator": "cpu", "devices": 1, "strategy": "ddp"}, 1),         # decon falls back to auto
    (0, {"accelerator": "cpu", "devices": "auto", "strategy": "ddp"}, 1),
    (0, {"accelerator": "gpu", "devices": 1, "strategy": "auto"}, 1),        # falls back to the CPU
    (0, {"accelerator": "auto", "devices": 2, "strategy": "ddp"}, 2),        # no GPU: 2 CPU ranks
    (4, {"accelerator": "gpu", "devices": 2, "strategy": "ddp"}, 2),
    (4, {"accelerator": "gpu", "devices": [1, 3], "strategy": "ddp"}, 2),
    (4, {"accelerator": "cuda", "devices": "0,1,2", "strategy": "ddp"}, 3),
    (4, {"accelerator": "gpu", "devices": -1, "strategy": "ddp"}, 4),
    (4, {"accelerator": "auto", "devices": "auto", "strategy": "auto"}, 4),
    (2, {"accelerator": "gpu", "devices": 2, "strategy": "fsdp"}, 2),
    (4, {"accelerator": "gpu", "devices": 2, "strategy": "single_device"}, 1),
    (4, {"accelerator": "gpu", "devices": 2, "strategy": {"_target_": "x.Strategy"}}, 1),
    (4, {"accelerator": "mps", "devices": 2, "strategy": "ddp"}, 1),
])
def test_how_many_ranks(gpus, trainer, expected):
    assert ranks(gpus, **trainer) == expected


@pytest.mark.parametrize(("gpus", "trainer", "message"), [
    (1, {"accelerator": "gpu", "devices": 2, "strategy": "ddp"},
     "trainer.devices=2 asks for 2 GPUs but 1 is visible"),
    (0, {"accelerator": "gpu", "devices": 2, "strategy": "ddp"},
     "trainer.devices=2 asks for 2 GPUs but none is visible"),
    (0, {"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"},
     "trainer.strategy=ddp_spawn starts its own processes, which cannot work inside a job; use trainer.strategy=ddp"),
    (0, {"accelerator": "cpu", "devices": 1, "strategy": "fsdp"}, "trainer.strategy=fsdp needs CUDA GPUs"),
    (2, {"accelerator": "gpu", "devices": 2, "num_nodes": 2, "strategy": "ddp"}, "a dr_exp job runs on one node"),
])
def test_refused_with_one_line(gpus, trainer, message):
    with pytest.raises(ConfigError) as info:
        ranks(gpus, **trainer)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("trainer", [
    {"accelerator": "cpu", "devices": 2, "strategy": "ddp"},
    {"accelerator": "cpu", "devices": 1, "strategy": "ddp"},
    {"accelerator": "cpu", "devices": 2, "strategy": "auto"},
    {"accelerator": "gpu", "devices": 1, "strategy": "ddp"},
    {"accelerator": "auto", "devices": "auto", "strategy": "ddp"},
    {"accelerator": "gpu", "devices": 2, "strategy": "ddp"},
    {"accelerator": "cpu", "devices": 2, "strategy": "fsdp"},
])
def test_the_rule_agrees_with_decon_cnn_on_this_machine(trainer):
    """dr_exp starts as many ranks as decon_cnn's Trainer will have devices, or both refuse."""
    import warnings

    from decon_cnn.errors import DeconError
    from decon_cnn.train import resolve_trainer_kwargs

    try:
        n = local_world_size({"trainer": trainer})
    except ConfigError:
        n = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            kw = resolve_trainer_kwargs({**trainer, "precision": "32-true"})
        except DeconError:
            kw = None
    if n is None:
        assert kw is None
    else:
        devices = kw["devices"]
        count = len(devices) if isinstance(devices, list) else (1 if devices == "auto" else int(devices))
        assert n == (count if kw["strategy"] != "auto" or count > 1 else 1)


def test_any_trainer_whose_config_asks_for_ddp_gets_ranks(base, exp):
    """Generic, torch-free: the noop trainer with a `trainer:` section asking for 2 CPU ranks runs
    twice, in one process group, and reports once; a spawning strategy fails at once."""
    two = exp.submit(str(EXP_CONFIGS), "noop", "duration=0.5 +trainer.accelerator=cpu +trainer.devices=2 "
                     "+trainer.strategy=ddp").submitted[0].id
    spawn = exp.submit(str(EXP_CONFIGS), "noop", "+trainer.accelerator=cpu +trainer.devices=2 "
                       "+trainer.strategy=ddp_spawn").submitted[0].id
    out = run_cli("system", "worker", "--idle-timeout", "0", base=base)
    assert out.returncode == 0, out.stderr
    rec = exp.get(two)
    assert rec.status == "completed", (rec.error, exp.run_dir(two).tail())
    events = read_jsonl(exp.run_dir(two).events)
    started = next(e for e in events if e["event"] == "ranks_started")
    assert started["world_size"] == 2 and started["pgid"] == started["pids"][0]
    assert [e["event"] for e in events].count("completed") == 1
    assert "rank 1 of 2" in exp.run_dir(two).train_log.read_text()
    refused = exp.get(spawn)
    assert refused.status == "failed" and refused.attempts == 1, refused.history  # fatal: not retried
    assert refused.error["message"].endswith("use trainer.strategy=ddp (dr_exp starts the ranks)")


def test_only_rank_0_writes_the_run_directory(tmp_path, monkeypatch):
    from dr_exp.logging.structured_logger import StructuredLogger

    monkeypatch.setenv("DR_EXP_RANK", "1")
    other = StructuredLogger(tmp_path, "j", "w", 1)
    other.log_metrics({"epoch": 0})
    other.log_event("epoch_end", {})
    other.log_config({"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.setenv("DR_EXP_RANK", "0")
    StructuredLogger(tmp_path, "j", "w", 1).log_metrics({"epoch": 0})
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_rank_that_died_is_named_as_the_cause():
    own = {"status": "failed", "type": "RuntimeError", "message": "Connection closed by peer", "fatal": False}
    died = {"status": "failed", "type": "RankDied", "message": "rank 1 of 2 killed by SIGKILL (out of memory?)",
            "rank": 1, "fatal": False}
    merged = merge_failure(own, died)
    assert merged["message"].startswith("rank 1 of 2 killed by SIGKILL") and "Connection closed" in merged["message"]
    same = {"status": "failed", "type": "DeconError", "message": "bad data", "fatal": True}
    raised = {"status": "failed", "type": "DeconError", "message": "rank 1 of 2 failed: DeconError: bad data",
              "fatal": True, "rank": 1}
    assert merge_failure(same, raised) == same  # every rank raised the same: rank 0's own error
    assert merge_failure(own, None) == own


FAKE_SMI = """#!/bin/sh
case "$1" in
  --query-gpu=*) printf '0, NVIDIA H100 80GB HBM3, GPU-1111, 550.54.15, 81559\\n'
                 printf '1, NVIDIA H100 80GB HBM3, GPU-2222, 550.54.15, 81559\\n' ;;
  *) printf '| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4 |\\n' ;;
esac
"""


def test_the_worker_records_the_node_gpus_from_nvidia_smi(base, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    out = run_cli("system", "worker", "--idle-timeout", "0", "--worker-id", "w1", base=base,
                  PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert out.returncode == 0, out.stderr
    info = json.loads(Path(base / "exp" / "logs" / "w1.env.json").read_text())
    assert info["gpu_driver"] == "550.54.15" and info["cuda_driver"] == "12.4" and info["gpu_probe"] == "nvidia-smi"
    assert [(g["index"], g["name"], g["memory_mb"]) for g in info["gpus"]] == [
        (0, "NVIDIA H100 80GB HBM3", 81559), (1, "NVIDIA H100 80GB HBM3", 81559)]
