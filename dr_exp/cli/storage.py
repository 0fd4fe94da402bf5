"""``dr_exp du`` and ``dr_exp pack``: what an experiment costs on disk, and making it cost less."""

from __future__ import annotations

import click

from dr_exp.cli.base import Context, cli, pass_ctx
from dr_exp.cli.output import print_table
from dr_exp.errors import DrExpError


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@cli.command()
@pass_ctx
def du(c: Context) -> None:
    """Files (inodes) and bytes per part of the experiment, and per job."""
    from dr_exp.disk import usage

    parts = usage(c.exp)
    jobs = c.exp.store.count_records()
    total_files = sum(u.files + u.dirs for u in parts)
    rows = [{"part": u.part, "files": u.files, "dirs": u.dirs, "size": _size(u.bytes)} for u in parts]
    rows.append({"part": "total", "files": sum(u.files for u in parts), "dirs": sum(u.dirs for u in parts),
                 "size": _size(sum(u.bytes for u in parts))})
    click.echo(f"experiment {c.exp.name} at {c.exp.store.root}: {jobs} jobs")
    print_table(rows, ["part", "files", "dirs", "size"])
    if jobs:
        storage = next((u for u in parts if u.part == "storage"), None)
        db = sum(u.files for u in parts if u.part in ("jobs", "queue", "claimed", "leases"))
        click.echo(f"per job: {db / jobs:.2f} files in the job database, "
                   f"{(storage.files + storage.dirs) / jobs if storage else 0:.2f} in run directories, "
                   f"{total_files / jobs:.2f} inodes in all (`dr_exp pack` packs finished runs' small files)")


@cli.command()
@click.option("--sweep", "sweep_id", default=None, help="Only the runs of this sweep.")
@click.option("--tags", default=None, help="Only jobs with all these tags.")
@click.option("--status", default="completed,failed,cancelled,pruned", show_default=True,
              help="Which finished jobs (running and pending ones are never packed).")
@pass_ctx
def pack(c: Context, sweep_id: str | None, tags: str | None, status: str) -> None:
    """Pack finished runs' small files (metrics, events, logs, config, result) into one archive
    per run; every reader (job logs, results, curves, the dashboard, bundles) reads inside it."""
    from dr_exp.disk import pack_runs
    from dr_exp.state import ACTIVE

    c.exp.require()
    if any(s.strip() in {a.value for a in ACTIVE} for s in status.split(",")):
        raise DrExpError("--status: only finished jobs can be packed (completed, failed, cancelled, pruned)")
    ids = [row["id"] for row in c.exp.summaries(status=status, tags=tags, sweep_id=sweep_id)]
    if not ids:
        raise DrExpError("no finished job matches; see `dr_exp job list`")
    runs, removed = pack_runs(c.exp, ids)
    click.echo(f"packed {runs} of {len(ids)} runs; {removed} files fewer")
