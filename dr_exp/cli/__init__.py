"""The ``dr_exp`` command line. It parses and prints; the work is done by :mod:`dr_exp.api`."""

from dr_exp.cli.main import main

__all__ = ["main"]
