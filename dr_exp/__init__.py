"""dr_exp: an experiment manager whose job database is JSON files on a shared filesystem."""

__version__ = "0.1.0"
