"""``dr_exp results``: one row per job with its parameters and final metrics."""

from __future__ import annotations

import csv
import sys

import click

from dr_exp.cli.main import Context, cli, pass_ctx
from dr_exp.cli.output import print_json, print_table
from dr_exp.results import columns_of, result_rows, sort_rows


@cli.command()
@click.option("--status", default=None, help="Only jobs in these states (comma-separated).")
@click.option("--sweep", "sweep_id", default=None, help="Only this sweep.")
@click.option("--tags", default=None, help="Only jobs with all these tags.")
@click.option("--metrics", default=None, help="Only these metric columns, comma-separated.")
@click.option("--sort", "sort_key", default=None, help="Sort by this column, e.g. val/acc.")
@click.option("--reverse", is_flag=True, help="Sort descending.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@pass_ctx
def results(c: Context, status: str | None, sweep_id: str | None, tags: str | None, metrics: str | None,
            sort_key: str | None, reverse: bool, fmt: str) -> None:
    """The results table: parameters, final metrics, job id, status and duration."""
    records = c.exp.list(status=status, sweep_id=sweep_id, tags=tags)
    rows = result_rows(records, [m for m in metrics.split(",") if m] if metrics else None)
    if sort_key:
        rows = sort_rows(rows, sort_key, reverse)
    cols = columns_of(rows)
    if fmt == "json":
        print_json(rows)
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    elif rows:
        print_table(rows, cols, max_width=40)
    else:
        click.echo("no jobs")
