"""The pre-emption hook a trainer polls.

The worker sends SIGUSR1 to the job's child process when it must hand the job back (SLURM
time limit, SIGTERM to the worker). The child's handler only sets a flag; the trainer checks
:func:`requested` at a safe point (Lightning: end of a batch), saves a checkpoint and raises
:class:`Preempted` with its path. The worker then puts the job back to ``pending`` with
``resume_from`` set, and the next claim resumes from there.
"""

from __future__ import annotations

import signal
import threading

_flag = threading.Event()


class Preempted(Exception):
    """Raised by a trainer that stopped early on request, after saving ``resume_from``."""

    def __init__(self, resume_from: str | None = None) -> None:
        super().__init__(f"pre-empted; resume from {resume_from}")
        self.resume_from = resume_from


def requested() -> bool:
    return _flag.is_set()


def request() -> None:
    _flag.set()


def reset() -> None:
    _flag.clear()


def install_handler(signum: int = signal.SIGUSR1) -> None:
    signal.signal(signum, lambda *_: _flag.set())
