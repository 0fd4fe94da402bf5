"""Entry point: the experiment-wide commands (status, validate), every command module, and
turning errors into exit status 2."""

from __future__ import annotations

import sys

import click

from dr_exp.api import DEFAULT_LEASE_SECONDS, Experiment, env_float
from dr_exp.cli.base import Context, cli, pass_ctx
from dr_exp.cli.output import print_table
from dr_exp.errors import DrExpError


@cli.command()
@click.option("--watch", is_flag=True,
              help="Follow the queue until Ctrl-C: pending/running/done/failed, jobs per minute, time to drain.")
@click.option("--interval", type=float, default=2.0, show_default=True, help="Seconds between updates of --watch.")
@click.option("--until-done", is_flag=True, help="With --watch: stop once nothing is pending or running.")
@pass_ctx
def status(c: Context, watch: bool, interval: float, until_done: bool) -> None:
    """Counts of jobs per state in the experiment (--watch: a live line)."""
    if watch:
        from dr_exp.progress import watch as follow

        if interval <= 0:
            raise DrExpError(f"--interval {interval:g} must be a positive number of seconds")
        c.exp.require()
        follow(c.exp.store.base_path, c.exp.name, interval, until_done, echo=click.echo)
        return
    problems: list[str] = []
    c.exp.require()
    pending: dict[int, int] = {}
    counts = c.exp.counts(problems, pending)
    click.echo(f"experiment {c.exp.name} at {c.exp.store.root}")
    print_table([{"status": k, "jobs": v} for k, v in counts.items()] + [{"status": "total", "jobs": sum(counts.values())}],
                ["status", "jobs"])
    _why_pending(c.exp, pending)
    from dr_exp.cli.system import print_allocations
    print_allocations(c.exp)
    for p in problems:
        click.echo(f"warning: {p}", err=True)


@cli.command()
@click.option("--fix", is_flag=True, help="Repair what is safe to repair.")
@click.option("--rebuild-index", is_flag=True, help="Rebuild the job summary (status, list, results) from the records.")
@pass_ctx
def validate(c: Context, fix: bool, rebuild_index: bool) -> None:
    """Check the experiment directory: records parse, markers and records agree, leases."""
    from dr_exp.validate import validate as run_validate

    report = run_validate(c.exp, fix=fix, rebuild_index=rebuild_index)
    click.echo(f"{report.jobs} job records checked in {c.exp.store.root}")
    for p in report.problems:
        click.echo(f"problem: {p}")
    for f in report.fixed:
        click.echo(f"fixed: {f}")
    if report.ok:
        click.echo("no problems found")
    elif not (fix or rebuild_index):
        click.echo("run `dr_exp validate --fix` to repair what is safe to repair")
        sys.exit(1)


def _why_pending(exp: Experiment, pending: dict[int, int]) -> None:
    """Say why pending jobs that need GPUs have no worker that could run them."""
    if not any(pending.get(g) for g in pending if g > 0):
        return
    lease = env_float("DR_EXP_LEASE_SECONDS", DEFAULT_LEASE_SECONDS)
    workers = exp.live_workers(within=2 * lease + 60)
    most = max((int(w.get("gpu_count") or 0) for w in workers), default=None)
    for gpus, n in sorted(pending.items()):
        if gpus == 0 or (most is not None and gpus <= most):
            continue
        seen = f"the largest live worker holds {most}" if most is not None else "no worker is running"
        click.echo(f"{n} pending job(s) need {gpus} GPU(s); {seen} (start one with "
                   f"`dr_exp system launcher --gpus-per-worker {gpus}` or `system worker --gpus {gpus}`)")


def main(argv: list[str] | None = None) -> None:
    # Importing the command modules registers their commands on `cli`.
    from dr_exp.cli import job, repro, results, storage, study, sync, system, view  # noqa: F401

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
