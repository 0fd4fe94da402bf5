import pytest

from tests.conftest import EXP_CONFIGS


def compose_job(name: str, *overrides: str):
    """A job config of exp_configs/, composed the way dr_exp composes it, without `_target_`
    (as the runner hands it to the trainer)."""
    from omegaconf import OmegaConf

    from dr_exp.compose import compose_one

    config = compose_one(EXP_CONFIGS, name, list(overrides), check=False).config
    config.pop("_target_")
    return OmegaConf.create(config)


@pytest.fixture
def quickstart_cfg():
    """The real quickstart config, composed the way dr_exp composes it."""
    return lambda *overrides: compose_job("quickstart", *overrides)


def fit(cfg, **options):
    """decon_cnn.train.train with RunOptions(**options): (result, objects)."""
    from decon_cnn.train import RunOptions, train

    return train(cfg, RunOptions(**options))


class MemoryLogger:
    def __init__(self):
        self.metrics, self.events, self.errors = [], [], []

    def log_event(self, event_type, data=None):
        self.events.append((event_type, data))

    def log_metrics(self, metrics):
        self.metrics.append(metrics)

    def log_error(self, error, context=None):
        self.errors.append(error)

    def epochs(self, key=None):
        rows = [m for m in self.metrics if m["phase"] == "epoch"]
        return rows if key is None else [r.get(key) for r in rows]
