"""The integration guide, followed as written: its job configs (copied verbatim into
tests/guide/exp_configs), its CLI commands, its custom trainer in both forms, its Python snippets
and its troubleshooting cases. Where the project deliberately differs, the README says so and
the error a user gets says the same; those cases are checked here too."""

import json
import os
import shutil
from pathlib import Path

import pytest

from dr_exp.api import Experiment
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.timeout(300)
GUIDE = REPO / "tests" / "guide" / "exp_configs"


@pytest.fixture
def project(tmp_path):
    """A user's project as the guide lays it out: exp_configs/ with the guide's configs, no
    configs/ of its own (decon_cnn's come with the installed package), results under ./exp."""
    shutil.copytree(GUIDE, tmp_path / "exp_configs")
    shutil.copy(GUIDE.parent / "trainers.py", tmp_path / "my_trainers.py")  # the user's own module
    return tmp_path


def guide_cli(project, *args, **env):
    """A command typed in the project directory, with no DR_EXP_* settings of the test's own."""
    clean = dict.fromkeys(("DR_EXP_BASE_PATH", "DR_EXP_EXPERIMENT"), "")
    return run_cli(*args, base=project / "unused", cwd=project, **{**clean, **env})


def ok(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def one_line_error(proc, needle):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert needle in lines[0], lines[0]
    return lines[0]


def test_job_submission_sweep_overrides_and_debug_commands_as_written(project):
    exp_dir = project / "exp" / "cifar10"
    job = ok(guide_cli(project, "--base-path", "./exp", "--experiment", "cifar10", "job", "submit",
                       "--config-path", "exp_configs", "--config-name", "step00_baseline",
                       "--priority", "100", "--tags", "baseline,resnet18")).strip()
    record = json.loads((exp_dir / "jobs" / f"{job}.json").read_text())  # cat .../jobs/<id>.json | jq .config
    config = record["config"]
    assert config["model"]["_target_"].endswith("resnet18_cifar") and config["data"]["dataset"] == "cifar10"
    assert config["trainer"]["precision"] == "16-mixed" and config["trainer"]["gradient_clip_val"] == 1.0
    assert config["data"]["pin_memory"] is True and config["data"]["persistent_workers"] is True
    # Environment lookups stay for the node that runs the job.
    assert config["data"]["data_dir"].startswith("${oc.env:DECON_DATA_DIR")
    assert record["priority"] == 100 and record["tags"] == ["baseline", "resnet18"]

    sweep = ok(guide_cli(project, "--base-path", "./exp", "--experiment", "cifar10", "job", "sweep",
                         "--config", "exp_configs/step00_baseline.yaml",
                         "--params", "model=resnet18_cifar,resnet50_cifar optimizer.lr=0.1,0.01,0.001",
                         "--tags", "lr_sweep"))
    assert "submitted 5 jobs, skipped 1 duplicates" in sweep  # resnet18 at lr 0.1 is the job above
    over = ok(guide_cli(project, "--base-path", "./exp", "--experiment", "cifar10", "job", "submit",
                        "--config-path", "exp_configs", "--config-name", "step00_baseline",
                        "--overrides", "data.batch_size=256 trainer.max_epochs=200")).strip()
    cfg = Experiment(project / "exp", "cifar10").get(over).config
    assert cfg["data"]["batch_size"] == 256 and cfg["trainer"]["max_epochs"] == 200

    listing = ok(guide_cli(project, "--base-path", "./exp", "--experiment", "cifar10", "job", "list", "--verbose"))
    assert listing.count("pending") == 7
    assert "no problems found" in ok(guide_cli(project, "--base-path", "./exp", "--experiment", "cifar10", "validate"))
    # run-one on a machine without CIFAR-10: one line saying where it looked and how to fix it.
    run = guide_cli(project, "--base-path", "./exp", "--experiment", "cifar10", "job", "run-one", job,
                    DECON_DATA_DIR=str(project / "data"))
    assert run.returncode == 1, run.stdout + run.stderr
    shown = ok(guide_cli(project, "--base-path", "./exp", "--experiment", "cifar10", "job", "show", job))
    assert "status     failed" in shown
    error = next(line for line in shown.splitlines() if line.startswith("error "))
    assert "cifar10 not found" in error and str(project / "data") in error and "data.download=true" in error


def test_worker_log_and_custom_trainer_in_both_forms(project):
    exp = Experiment(project / "exp", "cifar10")
    ids = []
    for name in ("custom", "custom_keywords"):
        ids.append(ok(guide_cli(project, "--base-path", "./exp", "--experiment", "cifar10", "job", "submit",
                                "--config-path", "exp_configs", "--config-name", name)).strip())
    ok(guide_cli(project, "--base-path", "./exp", "--experiment", "cifar10", "system", "worker",
                 "--worker-id", "worker-01", "--idle-timeout", "0"))
    assert "completed" in (project / "exp" / "cifar10" / "logs" / "worker-01.log").read_text()  # tail -f ...
    guide_form, keyword_form = (exp.get(i) for i in ids)
    assert guide_form.status == keyword_form.status == "completed"
    assert guide_form.result["metrics"] == {"val/acc": 0.6, "epochs": 2}  # final_metrics, as the guide returns
    assert guide_form.result["artifacts"] == {"0": "artifacts/weights.txt"}  # a list, relative to the run
    rows = json.loads(ok(guide_cli(project, "--base-path", "./exp", "--experiment", "cifar10", "results",
                                   "--format", "json")))
    assert sorted(r["val/acc"] for r in rows) == [0.35, 0.6]


def test_multi_stage_example_runs_shrunk_to_a_cpu(project):
    exp = Experiment(project / "exp", "cifar10")
    job = ok(guide_cli(project, "--base-path", "./exp", "--experiment", "cifar10", "job", "submit",
                       "--config-path", "exp_configs", "--config-name", "multi_stage", "--overrides",
                       "model=small_cnn machine=cpu transforms=none data.dataset=synthetic data.batch_size=64 "
                       "data.synthetic.num_train=512 data.synthetic.num_val=256 data.synthetic.image_size=16 "
                       "stages.0.max_epochs=1 stages.1.max_epochs=1")).strip()
    ok(guide_cli(project, "--base-path", "./exp", "--experiment", "cifar10", "job", "run-one", job))
    rec = exp.get(job)
    assert rec.status == "completed" and rec.result["metrics"]["stage"] == "main"
    stages = [json.loads(line).get("stage") for line in exp.run_dir(rec).metrics.read_text().splitlines()
              if json.loads(line).get("phase") == "epoch"]
    assert stages == ["warmup", "main"]


def test_config_composition_example_and_troubleshooting(project, tmp_path):
    args = ("--base-path", "./exp", "--experiment", "cifar10", "job", "submit", "--config-path", "exp_configs")
    # The guide's experiment.yaml has no _target_: its troubleshooting case 1, as a one-line fix.
    one_line_error(guide_cli(project, *args, "--config-name", "experiment"), "has no _target_; add `_target_:")
    job = ok(guide_cli(project, *args, "--config-name", "experiment", "--overrides",
                       "+_target_=dr_exp.trainers.decon_trainer.train_classification")).strip()
    cfg = Experiment(project / "exp", "cifar10").get(job).config
    assert cfg["model"]["_target_"].endswith("resnet50_cifar") and cfg["optimizer"]["lr"] == 0.001
    assert cfg["trainer"]["max_epochs"] == 150 and cfg["transforms"]["name"] == "cifar10_augmented"
    # Composition failures say where they looked and name the option that adds a directory.
    (project / "exp_configs" / "orphan.yaml").write_text("_target_: dr_exp.trainers.noop.train\ndefaults:\n"
                                                        "  - my_base\n  - _self_\n")
    line = one_line_error(guide_cli(project, *args, "--config-name", "orphan"), "Could not load 'my_base'")
    assert "--searchpath DIR" in line and "exp_configs" in line
    extra = tmp_path / "more_configs"
    extra.mkdir()
    (extra / "my_base.yaml").write_text("x: 1\n")
    assert ok(guide_cli(project, *args, "--config-name", "orphan", "--searchpath", str(extra)))
    assert ok(guide_cli(project, *args, "--config-name", "orphan", "--force", DR_EXP_CONFIG_SEARCHPATH=str(extra)))
    one_line_error(guide_cli(project, *args, "--config-name", "orphan", "--searchpath", str(tmp_path / "nope")),
                   "is not a directory")
    # Import errors of the trainer (troubleshooting case 2), and a trainer of neither form.
    (project / "exp_configs" / "missing.yaml").write_text("_target_: no_such_package.train\n")
    one_line_error(guide_cli(project, *args, "--config-name", "missing"), "does not import")
    (project / "exp_configs" / "positional.yaml").write_text("_target_: my_trainers.train_positional\n")
    one_line_error(guide_cli(project, *args, "--config-name", "positional"), "fits neither trainer form")
    # Case 4 (storage permission errors) needs storage that refuses writes even to root: a
    # read-only mount, in tests/dr_exp/test_full_disk.py::test_read_only_storage_is_one_line_and_loses_nothing.


def test_environment_lookups_resolve_on_the_node(base, exp):
    (job,) = exp.submit_configs([{"_target_": "dr_exp.trainers.noop.train",
                                  "data_dir": "${oc.env:MY_DATA_DIR,/nowhere}"}]).submitted
    assert exp.get(job.id).config["data_dir"] == "${oc.env:MY_DATA_DIR,/nowhere}"
    ok(run_cli("system", "worker", "--idle-timeout", "0", base=base, MY_DATA_DIR="/data/on/the/node"))
    used = json.loads(exp.run_dir(job.id).config.read_text())
    assert used["data_dir"] == "/data/on/the/node"  # config.json: what the run used


def test_python_snippets(base, exp, tmp_path):
    from decon_cnn.callbacks import DrExpMetricsCallback
    from decon_cnn.data import create_data_module
    from decon_cnn.factory import create_lr_scheduler, create_model, create_optimizer  # noqa: F401 - as the guide
    from dr_exp.compose import compose_one
    from dr_exp.logging.structured_logger import StructuredLogger

    config = compose_one(REPO / "exp_configs", "quickstart").config
    from omegaconf import OmegaConf

    config = OmegaConf.create({k: v for k, v in config.items() if k != "_target_"})
    data_module = create_data_module(config)
    model = create_model(config)
    logger = StructuredLogger(log_dir=tmp_path / "run", job_id="j", worker_id="w")
    callback = DrExpMetricsCallback(logger=logger)
    assert data_module is not None and model is not None and callback.logger is logger
    # job = job_db.claim_job(worker_id="worker-01"): the worker's claim, from Python.
    exp.submit_configs([{"_target_": "dr_exp.trainers.noop.train"}])
    job = exp.claim_job(worker_id="worker-01")
    assert exp.get(job.id).status == "running" and job.config["_target_"] == "dr_exp.trainers.noop.train"
    os.environ.pop("DR_EXP_ATTEMPT", None)
    assert Path(job.lease_path).exists()
