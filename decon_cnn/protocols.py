"""The logging interface decon_cnn talks to; dr_exp's StructuredLogger satisfies it."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class StructuredLoggerProtocol(Protocol):
    def log_event(self, event_type: str, data: dict[str, Any] | None = None) -> None: ...

    def log_metrics(self, metrics: dict[str, Any]) -> None: ...

    def log_error(self, error: BaseException, context: dict[str, Any] | None = None) -> None: ...


class NullLogger:
    """A StructuredLoggerProtocol that keeps nothing (runs without a run directory)."""

    def log_event(self, event_type: str, data: dict[str, Any] | None = None) -> None:
        pass

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        pass

    def log_error(self, error: BaseException, context: dict[str, Any] | None = None) -> None:
        pass
