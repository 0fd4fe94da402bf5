"""Lightning callbacks: metrics to a StructuredLoggerProtocol and to stdout, sanity checks, and
the pre-emption hook. Callbacks of your own go in a config's ``callbacks:`` by ``_target_``."""

from decon_cnn.callbacks.metrics import DrExpMetricsCallback, EpochPrinter, EpochSummary
from decon_cnn.callbacks.preemption import PreemptionCallback, TrainingPreempted
from decon_cnn.callbacks.sanity import SanityChecks

__all__ = ["DrExpMetricsCallback", "EpochPrinter", "EpochSummary", "PreemptionCallback", "SanityChecks",
           "TrainingPreempted"]
