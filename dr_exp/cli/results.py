"""``dr_exp results``: one row per job with its parameters and final metrics."""

from __future__ import annotations

import csv
import itertools
import sys
from collections.abc import Iterable

import click

from dr_exp.cli.base import Context, cli, pass_ctx
from dr_exp.cli.output import print_json, print_table, stream_json
from dr_exp.results import columns_of, sort_rows, summary_rows, top_summary_rows


@cli.command()
@click.option("--status", default=None, help="Only jobs in these states (comma-separated).")
@click.option("--sweep", "sweep_id", default=None, help="Only this sweep.")
@click.option("--tags", default=None, help="Only jobs with all these tags.")
@click.option("--metrics", default=None, help="Only these metric columns, comma-separated.")
@click.option("--sort", "sort_key", default=None, help="Sort by this column, e.g. val/acc.")
@click.option("--reverse", is_flag=True, help="Sort descending.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many rows (after sorting).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "jsonl"]), default="table",
              show_default=True, help="csv/json/jsonl stream (memory does not grow with the number of jobs).")
@pass_ctx
def results(c: Context, status: str | None, sweep_id: str | None, tags: str | None, metrics: str | None,
            sort_key: str | None, reverse: bool, limit: int | None, fmt: str) -> None:
    """The results table: parameters, final metrics, job id, status and duration (from the
    summary: no record is read)."""
    problems: list[str] = []
    wanted = [m for m in metrics.split(",") if m] if metrics else None
    found = c.exp.summaries(status=status, sweep_id=sweep_id, tags=tags, problems=problems)
    rows: Iterable[dict]
    if sort_key and limit and not (tags or sweep_id):
        rows = top_summary_rows(lambda: c.exp.summary_blocks(status, problems), sort_key, reverse, limit, wanted)
    elif sort_key and limit:
        rows = sort_rows(summary_rows(found, wanted), sort_key, reverse, limit)
    elif sort_key:
        rows = sort_rows(summary_rows(found, wanted), sort_key, reverse)
    elif limit:
        rows = itertools.islice(summary_rows(found, wanted), limit)
    else:
        rows = summary_rows(found, wanted)
    if fmt in ("json", "jsonl"):
        stream_json(rows, lines=fmt == "jsonl")
    elif fmt == "csv":
        rows = list(rows)
        writer = csv.DictWriter(sys.stdout, fieldnames=columns_of(rows), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    else:
        rows = list(rows)
        if rows:
            print_table(rows, columns_of(rows), max_width=40)
        else:
            click.echo("no jobs")
    for p in dict.fromkeys(problems):  # a second pass over the summary may repeat a warning
        click.echo(f"warning: {p}", err=True)


@cli.command("curves")
@click.argument("metric")
@click.option("--status", default=None, help="Only jobs in these states (comma-separated).")
@click.option("--sweep", "sweep_id", default=None, help="Only this sweep.")
@click.option("--tags", default=None, help="Only jobs with all these tags.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@pass_ctx
def curves_cmd(c: Context, metric: str, status: str | None, sweep_id: str | None, tags: str | None, fmt: str) -> None:
    """METRIC per epoch for every job (e.g. `dr_exp curves val/acc --sweep ID`): one column per job."""
    from dr_exp.results import curves, params_of

    records = {r.id: r for r in c.exp.list(status=status, sweep_id=sweep_id, tags=tags)}
    series = curves(records.values(), metric, c.exp.store.root)
    if fmt == "json":
        print_json([{"job_id": jid, "params": params_of(records[jid]), "points": pts} for jid, pts in series.items()])
        return
    if not series:
        click.echo(f"no job has logged {metric!r} per epoch")
        return
    labels = {jid: " ".join(f"{k}={v}" for k, v in params_of(records[jid]).items()) or jid[:8] for jid in series}
    epochs = sorted({e for pts in series.values() for e, _ in pts})
    rows = [{"epoch": e, **{labels[jid]: dict(pts).get(e) for jid, pts in series.items()}} for e in epochs]
    cols = ["epoch", *labels.values()]
    if fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)
    else:
        print_table(rows, cols, max_width=40)
