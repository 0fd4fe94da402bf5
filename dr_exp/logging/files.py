"""Log files of workers and launchers inside the experiment directory."""

from __future__ import annotations

import logging
import os


class _QuietFileHandler(logging.FileHandler):
    """A log file that never prints tracebacks when it cannot be written (a full disk, a quota):
    the process says so itself, in one line, where it can."""

    def handleError(self, record: logging.LogRecord) -> None:
        self.dropped = getattr(self, "dropped", 0) + 1


def attach_log_file(logger: logging.Logger, path: str | os.PathLike[str]) -> None:
    """Send ``logger``'s records (INFO and up) to ``path``, and only there."""
    handler = _QuietFileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
