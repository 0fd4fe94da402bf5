"""``dr_exp job bundle``, ``dr_exp job rerun`` and ``dr_exp compare``: reproducing and gating runs."""

from __future__ import annotations

import json
import os
import sys

import click

from dr_exp.api import Experiment
from dr_exp.cli.base import Context, cli, pass_ctx
from dr_exp.cli.job import job, report_submitted
from dr_exp.cli.output import print_json, print_table
from dr_exp.errors import DrExpError
from dr_exp.job import DEFAULT_PRIORITY


@job.command("bundle")
@click.argument("job_id")
@click.option("--out", "out", default=None, metavar="FILE.zip",
              help="Where to write the bundle (default: bundle-<id8>.zip here).")
@click.option("--with-checkpoints", is_flag=True, help="Include checkpoints/ (can be large).")
@pass_ctx
def bundle_cmd(c: Context, job_id: str, out: str | None, with_checkpoints: bool) -> None:
    """One zip with what produced a job: record, config, provenance and diff, metrics, events,
    result, train.log (and checkpoints)."""
    from dr_exp.bundle import make_bundle

    info = make_bundle(c.exp, job_id, out, with_checkpoints)
    click.echo(f"wrote {info.path} ({info.files} files, {info.bytes / 1024:.1f} KiB)")


@job.command("rerun")
@click.argument("job_ids", nargs=-1)
@click.option("--sweep", "sweep_id", default=None, help="Rerun every job of this sweep, as one new sweep.")
@click.option("--experiment", "to_experiment", default=None,
              help="Queue the reruns in this experiment (same base path) instead of the job's own.")
@click.option("--tags", default=None, help="Tags to add besides rerun-of:<id>.")
@click.option("--priority", type=int, default=DEFAULT_PRIORITY, show_default=True)
@pass_ctx
def rerun_cmd(c: Context, job_ids: tuple[str, ...], sweep_id: str | None, to_experiment: str | None,
              tags: str | None, priority: int) -> None:
    """Queue jobs again with exactly their composed configs (never skipped as duplicates)."""
    from dr_exp.bundle import rerun_jobs

    target = Experiment(c.base_path, to_experiment) if to_experiment else c.exp
    c.exp.require()
    result, notes = rerun_jobs(c.exp, target, job_ids, sweep_id, tags=tags, priority=priority)
    report_submitted(result)
    for note in notes:
        click.echo(f"note: {note}", err=True)


@cli.command("compare")
@click.option("--baseline", required=True, metavar="SELECTOR",
              help="sweep:ID, tags:a,b or jobs:ID,ID (EXP/ in front: another experiment).")
@click.option("--candidate", required=True, metavar="SELECTOR", help="Same syntax as --baseline.")
@click.option("--metric", "metrics", multiple=True, metavar="NAME[:max|min]",
              help="A metric to gate on (repeatable); :max (default) if higher is better, :min if lower is.")
@click.option("--tolerance", default="0.01", show_default=True,
              help="Fail when the candidate is worse by more than this (absolute, or e.g. 1% of the baseline).")
@click.option("--warn", default="0.005", show_default=True, help="Warn when worse by more than this.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--output", default=None, metavar="FILE.json", help="Also write the JSON verdict to this file.")
@pass_ctx
def compare_cmd(c: Context, baseline: str, candidate: str, metrics: tuple[str, ...], tolerance: str, warn: str,
                fmt: str, output: str | None) -> None:
    """Compare a candidate with a baseline (seeds aggregated). Exit status 0: ok or warn; 1: fail;
    2: bad input."""
    from dr_exp import compare
    from dr_exp.fileio import atomic_write

    if output and not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        raise DrExpError(f"--output {output}: directory {os.path.dirname(os.path.abspath(output))} does not exist")
    specs = compare.parse_metrics(metrics)
    tol = compare.parse_threshold(tolerance, "--tolerance")
    warn_at = compare.parse_threshold(warn, "--warn")
    base = compare.select(c.base_path, c.experiment_name, baseline)
    cand = compare.select(c.base_path, c.experiment_name, candidate)
    report = compare.compare(base, cand, specs, tol, warn_at)
    if output:
        atomic_write(output, json.dumps(report, indent=2) + "\n")
    if fmt == "json":
        print_json(report)
    else:
        print_table(compare.table_rows(report), ["metric", "params", "baseline", "candidate", "delta", "verdict"],
                    max_width=60)
        for side in ("baseline", "candidate"):
            unmatched = report["unmatched"][side]
            if unmatched:
                click.echo(f"{side} groups without a match: {len(unmatched)}")
        click.echo(report["summary"])
    sys.exit(report["exit_status"])
