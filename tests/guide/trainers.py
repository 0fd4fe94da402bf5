"""The integration guide's custom training function, as a user would write it from the guide."""

from pathlib import Path
from typing import Any, Dict, Optional  # noqa: UP035 - written as the guide writes it

from omegaconf import DictConfig


def train_custom_model(
    config: DictConfig,
    job_id: Optional[str] = None,  # noqa: UP045
    worker_id: Optional[str] = None,  # noqa: UP045
    storage_path: Optional[Path] = None,  # noqa: UP045
) -> Dict[str, Any]:  # noqa: UP006
    """Custom training function compatible with dr_exp."""
    assert isinstance(config, DictConfig) and job_id and worker_id and storage_path
    out = Path(storage_path) / "artifacts" / "weights.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"lr={config.lr}\n")
    return {
        "final_metrics": {"val/acc": 0.5 + config.lr, "epochs": config.epochs},
        "artifacts": [str(out)],
    }


def train_keywords(*, job_id: str, worker_id: str, storage_path: str, lr: float, epochs: int) -> dict:
    return {"metrics": {"val/acc": 0.25 + lr, "epochs": epochs}, "artifacts": {}}


def train_positional(a, b, /):  # fits neither trainer form
    return {}
