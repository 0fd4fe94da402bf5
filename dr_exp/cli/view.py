"""``dr_exp plot``, ``dr_exp dashboard`` and ``dr_exp report``: seeing results."""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dr_exp.cli.base import Context, cli, pass_ctx
from dr_exp.errors import ViewError

if TYPE_CHECKING:
    from dr_exp.dashboard.data import ExperimentReader

_SELECT = [
    click.option("--sweep", "sweep", default=None, help="Only this sweep (an id or a prefix of one)."),
    click.option("--tags", default=None, help="Only jobs with all these tags (comma-separated)."),
    click.option("--status", default=None, help="Only jobs in these states (comma-separated)."),
]


def select_options(func):  # type: ignore[no-untyped-def]
    for option in reversed(_SELECT):
        func = option(func)
    return func


def _reader(c: Context) -> ExperimentReader:
    from dr_exp.dashboard.data import Reader

    return Reader(c.base_path or ".").experiment(c.experiment_name or "")


def _split(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


@cli.command()
@click.argument("metric", required=False)
@click.option("--x", "x_param", default=None, help="Plot one value per job against this parameter (with --y).")
@click.option("--y", "y_metric", default=None, help="The metric for --x.")
@click.option("--value", type=click.Choice(["final", "best", "max", "min"]), default="final", show_default=True,
              help="With --x: which value of each job (best: min for losses and errors, else max).")
@click.option("--group-by", default=None, help="Comma-separated parameters: a mean ± std band per group.")
@click.option("--average-over", default=None,
              help="Comma-separated parameters (e.g. seed): a band per group of all the other parameters.")
@select_options
@click.option("--study", "study", default=None,
              help="Plot an adaptive sweep's study: each trial's value, the best so far, importances.")
@click.option("--out", default=None, help="File to write: .png, .svg or .pdf (default: METRIC.png here).")
@click.option("--title", default=None)
@pass_ctx
def plot(c: Context, metric: str | None, x_param: str | None, y_metric: str | None, value: str,
         group_by: str | None, average_over: str | None, sweep: str | None, tags: str | None,
         status: str | None, study: str | None, out: str | None, title: str | None) -> None:
    """Plot METRIC per epoch (a line per job), or with --x PARAM --y METRIC one value per job,
    or with --study NAME the trials of a study."""
    from dr_exp.plot import curve_plot, param_plot, study_plot

    if study:
        if metric or x_param or y_metric:
            raise ViewError("--study plots the study's own metric; give no METRIC, --x or --y with it")
        done = study_plot(_reader(c), study, out, title=title)
        click.echo(f"wrote {done.path}: {done.lines} of {done.jobs} trials of study {study}")
        return
    if x_param or y_metric:
        if not (x_param and (y_metric or metric)):
            raise ViewError("--x PARAM and --y METRIC go together, e.g. dr_exp plot --x optimizer.lr --y val/acc")
        y = y_metric or metric or ""
        done = param_plot(_reader(c), x_param, y, out or f"{_file_name(y)}_vs_{_file_name(x_param)}.png",
                          value=value, sweep=sweep, tags=tags, status=status, title=title)
        click.echo(f"wrote {done.path}: {value} {y} of {done.lines} jobs against {x_param}")
        return
    if not metric:
        raise ViewError("say which metric to plot, e.g. dr_exp plot val/acc (or --x PARAM --y METRIC)")
    done = curve_plot(_reader(c), metric, out or f"{_file_name(metric)}.png", sweep=sweep, tags=tags,
                      status=status, group_by=_split(group_by), average_over=_split(average_over), title=title)
    what = "groups" if group_by or average_over else "jobs"
    click.echo(f"wrote {done.path}: {metric} per epoch, {done.lines} {what} ({done.jobs} jobs)")


def _file_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in text)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback requires the token for every request.")
@click.option("--port", type=int, default=8765, show_default=True, help="0 picks a free port.")
@click.option("--token", envvar="DR_EXP_DASHBOARD_TOKEN", default=None,
              help="Require this token for every request (env DR_EXP_DASHBOARD_TOKEN). "
                   "Default off loopback: a fresh one, printed in the URL.")
@click.option("--require-token", is_flag=True,
              help="Need a token for every request on loopback too (a login node shared with other users).")
@click.option("--allow-actions", is_flag=True, help="Allow cancel, retry and priority changes (they need the token).")
@pass_ctx
def dashboard(c: Context, host: str, port: int, token: str | None, require_token: bool, allow_actions: bool) -> None:
    """Serve a live web dashboard of the experiments under --base-path (read-only by default)."""
    from dr_exp.dashboard.server import Settings, is_loopback, run_forever, serve, urls

    base = Path(c.base_path or ".").expanduser().absolute()
    if not base.is_dir():
        raise ViewError(f"base path {base} does not exist; pass the directory that holds your experiments "
                        "with --base-path (or DR_EXP_BASE_PATH)")
    if token is not None and not re.fullmatch(r"[A-Za-z0-9._~-]{8,}", token):
        raise ViewError("--token must be at least 8 letters, digits or ._~- (it travels in URLs and a cookie); "
                        "leave it out to get a random one")
    if not 0 <= port <= 65535:
        raise ViewError(f"--port {port} is not a port number (0-65535; 0 picks a free one)")
    loopback = is_loopback(host)
    default = c.experiment_name if c.experiment_name and (base / c.experiment_name / "jobs").is_dir() else None
    settings = Settings(base_path=base, host=host, port=port, token=token,
                        token_for_reads=bool(token) or require_token or not loopback,
                        allow_actions=allow_actions, default_experiment=default)
    server = serve(settings)
    for url in urls(server):
        click.echo(f"dashboard: {url}")
    mode = "actions allowed (with the token)" if allow_actions else "read-only"
    access = "every request needs the token" if settings.token_for_reads else "open to this machine only"
    click.echo(f"serving {base} ({mode}; {access}); Ctrl-C stops it")
    if loopback:
        click.echo(f"from your laptop: ssh -N -L {server.port}:127.0.0.1:{server.port} {socket.gethostname()}  "
                   f"then open the URL above")
    sys.stdout.flush()
    run_forever(server)
    click.echo("dashboard stopped")


@cli.command()
@select_options
@click.option("--out", default="report.html", show_default=True, help="The HTML file to write.")
@pass_ctx
def report(c: Context, sweep: str | None, tags: str | None, status: str | None, out: str) -> None:
    """Write one self-contained HTML file (table, job pages, curves, sweeps) that opens offline."""
    from dr_exp.report import write_report

    done = write_report(c.base_path or ".", c.experiment_name or "", out, sweep=sweep, tags=tags, status=status)
    click.echo(f"wrote {done.path}: {done.jobs} jobs, {done.size / 1e6:.1f} MB")
