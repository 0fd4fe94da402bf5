"""StructuredLogger: the run directory's JSONL files (metrics, events) and error/config files.

It satisfies decon_cnn's ``StructuredLoggerProtocol`` structurally; decon_cnn never imports it.
Every append is one whole line in one ``write``; readers skip a torn last line.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Any

from dr_exp.store import append_line, atomic_write


class StructuredLogger:
    def __init__(self, log_dir: str | os.PathLike[str], job_id: str, worker_id: str) -> None:
        self.log_dir = Path(log_dir)
        self.job_id = job_id
        self.worker_id = worker_id
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.log_dir / "metrics.jsonl"
        self.events_path = self.log_dir / "events.jsonl"
        self.config_path = self.log_dir / "config.json"
        self.error_path = self.log_dir / "error.txt"

    def log_config(self, config: dict[str, Any]) -> None:
        atomic_write(self.config_path, json.dumps(config, indent=2, default=str) + "\n")

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        row = {"time": time.time()}
        row.update(metrics)
        append_line(self.metrics_path, row)

    def log_event(self, event_type: str, data: dict[str, Any] | None = None) -> None:
        append_line(self.events_path, {"time": time.time(), "event": event_type,
                                       "job_id": self.job_id, "worker_id": self.worker_id, **(data or {})})

    def log_error(self, error: BaseException, context: dict[str, Any] | None = None) -> None:
        tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        text = f"type: {type(error).__name__}\nmessage: {error}\n"
        if context:
            text += f"context: {json.dumps(context, default=str)}\n"
        atomic_write(self.error_path, text + "\n" + tb)
        self.log_event("failed", {"error_type": type(error).__name__, "message": str(error)[:500],
                                  **(context or {})})
