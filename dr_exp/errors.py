"""The one exception hierarchy of dr_exp.

Every error a user can cause derives from :class:`DrExpError`; the CLI prints its message as
one line and exits with status 2. Messages name the job id or path and say what to do next.
"""

from __future__ import annotations


class DrExpError(Exception):
    """Base class: a problem the user can fix (bad input, unknown id, bad setup)."""

    exit_code = 2


class ConfigError(DrExpError):
    """A job config does not compose, or is missing what dr_exp needs."""


class JobNotFound(DrExpError):
    def __init__(self, job_id: str, experiment_dir: str) -> None:
        super().__init__(
            f"no job {job_id!r} in {experiment_dir}; run `dr_exp job list` to see the job ids"
        )
        self.job_id = job_id


class InvalidTransition(DrExpError):
    """A state change the transition table does not allow."""


class StorageError(DrExpError):
    """The experiment directory is unusable (unwritable, outside the base path, ...)."""


class SyncError(DrExpError):
    """S3 sync is misconfigured or the server refused a request."""


class CorruptRecord(Exception):
    """A job record that does not parse; it is quarantined, never fatal to a worker."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class CorruptFile(DrExpError):
    """A file of the experiment is damaged (e.g. a JSONL line in the middle that does not
    parse). Readers that can go on describe it instead of raising."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{message}; the file was damaged (disk full or a crash?): "
                         "inspect it, or move it aside to start it afresh")
        self.path = path


class ViewError(DrExpError):
    """A plot, dashboard or report cannot be made as asked: an unknown experiment, sweep, metric
    or parameter, an output file that cannot be written, a port that is taken."""
