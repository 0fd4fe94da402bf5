"""The command group and the context every command gets (the experiment it works on).

Command modules import this and register their commands on :data:`cli`; the entry point
imports them all and runs the group. Nothing here imports a command module.
"""

from __future__ import annotations

import click

from dr_exp import __version__
from dr_exp.api import DEFAULT_BASE_PATH, DEFAULT_EXPERIMENT, Experiment


class Context:
    def __init__(self, base_path: str | None, experiment: str | None) -> None:
        self.base_path = base_path
        self.experiment_name = experiment
        self._exp: Experiment | None = None

    @property
    def exp(self) -> Experiment:
        if self._exp is None:
            self._exp = Experiment(self.base_path, self.experiment_name)
        return self._exp


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--base-path", envvar="DR_EXP_BASE_PATH", default=DEFAULT_BASE_PATH, show_default=True,
              help="Directory holding experiments (env DR_EXP_BASE_PATH).")
@click.option("--experiment", envvar="DR_EXP_EXPERIMENT", default=DEFAULT_EXPERIMENT, show_default=True,
              help="Experiment name (env DR_EXP_EXPERIMENT).")
@click.version_option(__version__, prog_name="dr_exp")
@click.pass_context
def cli(ctx: click.Context, base_path: str, experiment: str) -> None:
    """dr_exp: submit, run and inspect experiments stored as files on a shared filesystem."""
    ctx.obj = Context(base_path, experiment)
