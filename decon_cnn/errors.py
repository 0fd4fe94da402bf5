"""The one exception hierarchy of decon_cnn: a :class:`DeconError` is a problem the user can fix,
and its message (one line) says what is wrong and what to do next."""


class DeconError(Exception):
    """A configuration or data problem the user can fix; the message says how.

    Such a run fails the same way however often it is tried, so ``retryable`` is False: a job
    manager that looks at it (dr_exp does) fails the job at once instead of retrying it.
    """

    retryable = False


class DatasetNotFound(DeconError, FileNotFoundError):
    """The data a config names is not where it says (or not complete)."""


class BadDataset(DeconError):
    """The data exists but cannot train a classifier as it is (no images, one class, ...)."""


class BadTarget(DeconError):
    """A ``_target_`` that does not import, or that cannot be built from its config."""


class TrainingDiverged(DeconError):
    """The loss became NaN or infinite; the run stops rather than train on garbage."""
