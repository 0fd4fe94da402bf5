import pytest

from tests.conftest import EXP_CONFIGS


@pytest.fixture
def quickstart_cfg():
    """The real quickstart config, composed the way dr_exp composes it."""
    from omegaconf import OmegaConf

    from dr_exp.compose import compose_one

    def make(*overrides: str):
        config = compose_one(EXP_CONFIGS, "quickstart", list(overrides)).config
        config.pop("_target_")
        return OmegaConf.create(config)

    return make


class MemoryLogger:
    def __init__(self):
        self.metrics, self.events, self.errors = [], [], []

    def log_event(self, event_type, data=None):
        self.events.append((event_type, data))

    def log_metrics(self, metrics):
        self.metrics.append(metrics)

    def log_error(self, error, context=None):
        self.errors.append(error)
