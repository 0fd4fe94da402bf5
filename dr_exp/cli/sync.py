"""``dr_exp sync ...``: configure, run, status, pull."""

from __future__ import annotations

import sys
import time

import click

from dr_exp.cli.base import Context, cli, pass_ctx
from dr_exp.errors import DrExpError, SyncError


@cli.group()
def sync() -> None:
    """Mirror run directories to S3 (or an S3-compatible store)."""


def _handler(c: Context):
    from dr_exp.sync import SyncHandler, load_config

    c.exp.require()
    config = load_config(c.exp.store)
    if config is None:
        raise SyncError(f"sync is not configured for {c.exp.store.root}; run "
                        "`dr_exp sync configure --s3-uri s3://bucket/prefix` (or set DR_EXP_S3_URI)")
    return SyncHandler(c.exp.store, config)


@sync.command()
@click.option("--s3-uri", required=True, help="s3://bucket[/prefix]; runs go to <prefix>/<experiment>/run_<id>/.")
@click.option("--endpoint-url", default=None, help="For MinIO, Ceph, ...: e.g. http://127.0.0.1:9000.")
@click.option("--region", default=None)
@click.option("--include-checkpoints", type=click.Choice(["best", "last", "all", "none"]), default="all", show_default=True)
@click.option("--no-check", is_flag=True, help="Save without checking that the bucket is reachable.")
@pass_ctx
def configure(c: Context, s3_uri: str, endpoint_url: str | None, region: str | None, include_checkpoints: str,
              no_check: bool) -> None:
    """Store the experiment's sync settings (never credentials: boto3's usual chain provides them)."""
    from dr_exp.sync import SyncConfig, SyncHandler, save_config

    config = SyncConfig(s3_uri=s3_uri, endpoint_url=endpoint_url, region=region,
                        include_checkpoints=include_checkpoints).validate()
    if not no_check:
        SyncHandler(c.exp.store, config).check_bucket()
    save_config(c.exp.store, config)
    click.echo(f"sync configured: runs of {c.exp.name} go to s3://{config.bucket}/"
               f"{(config.prefix + '/') if config.prefix else ''}{c.exp.name}/run_<id>/")


@sync.command("run")
@click.option("--job", "job_id", default=None, help="Only this job (queued first if it is not).")
@click.option("--once/--follow", default=True, help="Drain once (default) or keep draining until interrupted.")
@pass_ctx
def run_sync(c: Context, job_id: str | None, once: bool) -> None:
    """Upload what the sync queue holds; failures stay queued for the next run."""
    from dr_exp.sync import SyncQueue

    handler = _handler(c)
    queue = SyncQueue(c.exp)
    if job_id:
        job_id = c.exp.get(job_id).id
        queue.enqueue(job_id, "manual")
    while True:
        report = queue.drain(handler, job_id=job_id, respect_backoff=not once)
        for jid, uploaded in report.done:
            click.echo(f"synced {jid} ({uploaded} files uploaded)")
        if report.fatal is not None:
            raise report.fatal
        for jid, message in report.errors:
            click.echo(f"error {jid}: {message}", err=True)
        if once:
            left = len(queue.entries())
            click.echo(f"{len(report.done)} runs synced, {left} still queued")
            if report.errors:
                sys.exit(1)
            return
        time.sleep(2.0)


@sync.command("status")
@pass_ctx
def sync_status(c: Context) -> None:
    """Queued, failing and synced runs, and the last errors."""
    from dr_exp.sync import SyncQueue, load_config

    c.exp.require()
    config = load_config(c.exp.store)
    st = SyncQueue(c.exp).status()
    click.echo(f"target:  {config.s3_uri if config else '(not configured)'}"
               + (f" via {config.endpoint_url}" if config and config.endpoint_url else ""))
    click.echo(f"queued:  {st['pending']}\nfailing: {st['failing']}\nsynced:  {st['synced_runs']} runs")
    for jid, message, attempts in st["last_errors"]:
        click.echo(f"  {jid} (attempt {attempts}): {message}")


@sync.command()
@click.option("--job", "job_id", default=None, help="Restore this job's run directory.")
@click.option("--sweep", "sweep_id", default=None, help="Restore every run of this sweep.")
@pass_ctx
def pull(c: Context, job_id: str | None, sweep_id: str | None) -> None:
    """Restore run directories (and job records) from the bucket."""
    if bool(job_id) == bool(sweep_id):
        raise DrExpError("give exactly one of --job ID or --sweep ID")
    c.exp.store.ensure()
    handler = _handler(c)
    if job_id:
        ids = [job_id] if len(job_id) == 36 else [j for j in handler.list_runs() if j.startswith(job_id)]
    else:
        ids = [j for j in handler.list_runs() if (handler.fetch_record(j) or {}).get("sweep_id", "").startswith(sweep_id)]
    if not ids:
        raise DrExpError(f"no run in the bucket matches {job_id or sweep_id!r}")
    for jid in ids:
        click.echo(f"pulled {jid}: {handler.pull(jid)} files")
