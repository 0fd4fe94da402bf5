"""GPU-aware claims: one queue per resource class, workers claim only jobs that fit, the
launcher lays out workers over GPUs, and `status` says why a job no worker can run waits."""

import json

import pytest

from dr_exp.api import resources_of
from dr_exp.errors import DrExpError
from dr_exp.fileio import read_jsonl
from dr_exp.launcher import layout_slots
from tests.conftest import NOOP, run_cli, spawn_cli

pytestmark = pytest.mark.timeout(120)


def test_resources_come_from_the_config_or_the_trainer_section():
    assert resources_of({"trainer": {"accelerator": "gpu", "devices": 2}}) == {"gpus": 2}
    assert resources_of({"trainer": {"accelerator": "cuda", "devices": [0, 3, 5]}}) == {"gpus": 3}
    assert resources_of({"trainer": {"accelerator": "cpu", "devices": 4}}) == {}
    config = {"resources": {"gpus": 4}, "trainer": {"accelerator": "gpu", "devices": 1}}
    assert resources_of(config) == {"gpus": 4} and "resources" not in config  # trainers never see it
    with pytest.raises(DrExpError, match="resources"):
        resources_of({"resources": {"gpus": -1}})


def test_launcher_layouts():
    eight = [str(i) for i in range(8)]
    assert layout_slots(eight, 1, [4, 1, 1, 1, 1]) == ["0,1,2,3", "4", "5", "6", "7"]
    assert layout_slots(eight, 2, [4]) == ["0,1,2,3", "0,1,2,3", "4,5,6,7", "4,5,6,7"]
    assert layout_slots(["0", "1"], 2, None) == ["0", "0", "1", "1"]
    with pytest.raises(DrExpError, match="needs 9 GPUs"):
        layout_slots(eight, 1, [8, 1])
    with pytest.raises(DrExpError, match="does not divide"):
        layout_slots(eight, 1, [3])


def test_every_job_runs_on_a_worker_that_fits(base, exp):
    jobs = {}
    for gpus in (0, 1, 2):
        for i in range(4):
            rec = exp.submit_configs([{**NOOP, "resources": {"gpus": gpus}, "i": 10 * gpus + i, "duration": 0.1}]).submitted[0]
            jobs[rec.id] = gpus
    too_big = exp.submit_configs([{**NOOP, "resources": {"gpus": 4}}]).submitted[0].id
    status = run_cli("status", base=base)
    assert "1 pending job(s) need 4 GPU(s); no worker is running" in status.stdout, status.stdout
    # Two workers on fake GPUs: one holds GPU 0, the other GPUs 0 and 1 (the ids are what counts).
    one = spawn_cli("system", "worker", "--worker-id", "one-gpu", "--idle-timeout", "2", base=base,
                    CUDA_VISIBLE_DEVICES="0")
    two = spawn_cli("system", "worker", "--worker-id", "two-gpus", "--idle-timeout", "2", base=base,
                    CUDA_VISIBLE_DEVICES="0,1")
    for w in (one, two):
        out, _ = w.communicate(timeout=90)
        assert w.returncode == 0, out
    for job_id, gpus in jobs.items():
        rec = exp.get(job_id)
        assert rec.status == "completed", rec.history
        started = next(e for e in read_jsonl(exp.run_dir(job_id).events) if e["event"] == "started")
        if gpus == 2:
            assert rec.worker_id == "two-gpus" and started["cuda_visible_devices"] == "0,1"
        elif gpus == 1:
            assert started["cuda_visible_devices"] == "0"  # a job sees the GPUs it asked for
    assert exp.get(too_big).status == "pending"
    assert json.loads(exp.layout.worker_env("two-gpus").read_text())["gpu_count"] == 2
    status = run_cli("status", base=base)
    assert "1 pending job(s) need 4 GPU(s); the largest live worker holds 2" in status.stdout, status.stdout
