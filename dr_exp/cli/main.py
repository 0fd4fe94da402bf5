"""Entry point: global options, the command groups, and turning errors into exit status 2."""

from __future__ import annotations

import sys

import click

from dr_exp import __version__
from dr_exp.api import DEFAULT_BASE_PATH, DEFAULT_EXPERIMENT, Experiment
from dr_exp.cli.output import print_table
from dr_exp.errors import DrExpError


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


@cli.command()
@pass_ctx
def status(c: Context) -> None:
    """Counts of jobs per state in the experiment."""
    problems: list[str] = []
    counts = c.exp.counts(problems)
    click.echo(f"experiment {c.exp.name} at {c.exp.store.root}")
    print_table([{"status": k, "jobs": v} for k, v in counts.items()] + [{"status": "total", "jobs": sum(counts.values())}],
                ["status", "jobs"])
    from dr_exp.cli.system import print_allocations
    print_allocations(c.exp)
    for p in problems:
        click.echo(f"warning: {p}", err=True)


@cli.command()
@click.option("--fix", is_flag=True, help="Repair what is safe to repair.")
@pass_ctx
def validate(c: Context, fix: bool) -> None:
    """Check the experiment directory: records parse, markers and records agree, leases."""
    from dr_exp.validate import validate as run_validate

    report = run_validate(c.exp, fix=fix)
    click.echo(f"{report.jobs} job records checked in {c.exp.store.root}")
    for p in report.problems:
        click.echo(f"problem: {p}")
    for f in report.fixed:
        click.echo(f"fixed: {f}")
    if report.ok:
        click.echo("no problems found")
    elif not fix:
        click.echo("run `dr_exp validate --fix` to repair what is safe to repair")
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    # Importing the command modules registers their commands on `cli`.
    from dr_exp.cli import job, results, study, sync, system  # noqa: F401

    try:
        cli.main(args=argv, prog_name="dr_exp", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except DrExpError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(0)


if __name__ == "__main__":
    main()
