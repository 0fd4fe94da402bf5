"""decon_cnn: Lightning image classifiers (CIFAR ResNets, a small CNN) configured by Hydra.

It depends on no part of dr_exp: metrics leave through :class:`StructuredLoggerProtocol`.
"""

__version__ = "0.1.0"
