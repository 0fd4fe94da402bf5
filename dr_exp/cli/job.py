"""``dr_exp job ...``: submit, sweep, list, show, cancel, retry, recover, run-one, logs."""

from __future__ import annotations

import heapq
import sys
import time
from operator import itemgetter
from typing import Any

import click

from dr_exp.api import SubmitResult
from dr_exp.cli.base import Context, cli, pass_ctx
from dr_exp.cli.output import fmt_time, print_json, print_table, stream_json
from dr_exp.compose import SEARCHPATH_ENV
from dr_exp.errors import DrExpError
from dr_exp.job import DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_WORKER_LOSSES, DEFAULT_PRIORITY, JobRecord
from dr_exp.state import FINISHED, Status

_SUBMIT_OPTIONS = [
    click.option("--priority", type=int, default=DEFAULT_PRIORITY, show_default=True,
                 help="0-1000; higher runs first, FIFO among equals."),
    click.option("--tags", default=None, help="Comma-separated tags, e.g. baseline,seed-study."),
    click.option("--force", is_flag=True, help="Submit even if an identical run is pending, running or done."),
    click.option("--max-attempts", type=int, default=None,
                 help=f"Attempts before a job is failed (default {DEFAULT_MAX_ATTEMPTS})."),
    click.option("--timeout", type=float, default=None,
                 help="Seconds an attempt may run; a timeout is a failed attempt (retried while attempts last)."),
    click.option("--max-worker-losses", type=int, default=None,
                 help=f"Lost workers (lease expired) before a job is failed (default {DEFAULT_MAX_WORKER_LOSSES})."),
    click.option("--searchpath", "searchpath", multiple=True, metavar="DIR",
                 help=f"Another directory of config groups (repeatable; also {SEARCHPATH_ENV})."),
]


def submit_options(func):  # type: ignore[no-untyped-def]
    """The queueing options shared by `submit` and `sweep`, passed on as ``**queueing``."""
    for option in reversed(_SUBMIT_OPTIONS):
        func = option(func)
    return pass_ctx(func)


@cli.group()
def job() -> None:
    """Submit and manage jobs."""


def report_submitted(result: SubmitResult) -> None:
    if result.sweep_id:
        click.echo(f"sweep {result.sweep_id}: submitted {len(result.submitted)} jobs, "
                   f"skipped {len(result.skipped)} duplicates")
    for rec in result.submitted:
        click.echo(rec.id)
    for point, existing in result.skipped:
        click.echo(f"skipped {point or '(no overrides)'}: same config as job {existing} (use --force to submit anyway)", err=True)


@job.command()
@click.option("--config-path", default=None, help="Directory of job configs, e.g. exp_configs.")
@click.option("--config-name", default=None, help="Config name in that directory (without .yaml).")
@click.option("--overrides", default=None, help='Hydra overrides, e.g. "optimizer.lr=0.01 seed=1".')
@click.option("--from-bundle", "bundle", default=None, metavar="FILE.zip",
              help="Queue the run a bundle holds (`job bundle`), with its exact composed config.")
@submit_options
def submit(c: Context, config_path: str | None, config_name: str | None, overrides: str | None, bundle: str | None,
           **queueing: Any) -> None:
    """Compose a config with Hydra and queue it; prints the job id."""
    if bundle is not None:
        if config_path or config_name or overrides or queueing["searchpath"]:
            raise DrExpError("--from-bundle reruns the bundle's config as it was; drop --config-path/--config-name/"
                             "--overrides/--searchpath (or submit a config without --from-bundle)")
        from dr_exp.bundle import submit_bundle

        result, notes = submit_bundle(c.exp, bundle, tags=queueing["tags"], priority=queueing["priority"],
                                      max_attempts=queueing["max_attempts"], timeout=queueing["timeout"])
        report_submitted(result)
        for note in notes:
            click.echo(f"note: {note}", err=True)
        return
    if not config_path or not config_name:
        raise DrExpError("give --config-path DIR and --config-name NAME (or --from-bundle FILE.zip)")
    report_submitted(c.exp.submit(config_path, config_name, overrides, **queueing))


_SEARCH_OPTIONS = ("sampler", "trials", "parallel", "metric", "mode", "pruner", "seed")


@job.command()
@click.option("--config", "config", required=True, help="Job config file, e.g. exp_configs/noop.yaml.")
@click.option("--params", default=None, help='Grid, as in hydra -m: "model=a,b optimizer.lr=0.1,0.01 seed=range(0,3)".')
@click.option("--overrides", default=None, help="Fixed overrides applied to every point.")
@click.option("--search", default=None,
              help='Adaptive sweep over "lr=tag(log,interval(1e-4,1e-1)) wd=interval(0,1e-3) model=choice(a,b)" '
                   "(with --params: one study per grid point).")
@click.option("--sampler", default=None, help="tpe (default), random, grid or cmaes [name:option=value,...].")
@click.option("--trials", type=int, default=None, help="Trials per study (with --search).")
@click.option("--parallel", type=int, default=None, help="Trials queued or running at a time (default 4).")
@click.option("--metric", default=None, help="The metric to optimise, as the trainer reports it, e.g. val/acc.")
@click.option("--mode", default=None, help="max or min: whether a higher or a lower --metric is better.")
@click.option("--pruner", default=None, help="none (default), asha, hyperband or median [name:option=value,...].")
@click.option("--seed", type=int, default=None, help="Seed of the sampler (default: a random one, recorded).")
@submit_options
def sweep(c: Context, config: str, params: str | None, overrides: str | None, search: str | None, **options: Any) -> None:
    """Queue the cartesian product of PARAMS (every point is composed before any is written), or
    an adaptive sweep over SEARCH whose trials are jobs (`dr_exp study show ID` follows it)."""
    searching = {k: options.pop(k) for k in _SEARCH_OPTIONS}
    given = {k: v for k, v in searching.items() if v is not None}
    if search is None:
        if given:
            raise DrExpError(f"--{next(iter(given))} goes with --search (an adaptive sweep); "
                             "a grid sweep takes --params alone")
        if params is None:
            raise DrExpError('give --params "key=v1,v2" (a grid) or --search "key=interval(lo,hi)" (an adaptive sweep)')
        report_submitted(c.exp.sweep(config, params, overrides, **options))
        return
    from dr_exp.study import sweep as study_sweep

    for needed in ("trials", "metric", "mode"):
        if needed not in given:
            raise DrExpError(f"--search needs --{needed} (e.g. --trials 64 --metric val/acc --mode max)")
    options.pop("force")  # every trial is a run of its own, even with the same parameters as another
    result = study_sweep(c.exp, config, search, params=params, overrides=overrides, **given, **options)
    for name in result.studies:
        click.echo(f"study {name}: {result.trials} trials; follow it with `dr_exp study show {name}`")
    click.echo(f"sweep {result.sweep_id}: submitted {len(result.submitted)} jobs (the first trials)")
    for rec in result.submitted:
        click.echo(rec.id)


def _row(row: dict, verbose: bool) -> dict:
    """A `job list` row from a summary row (see dr_exp.summary)."""
    out = {"id": row["id"], "status": row["status"], "prio": row.get("priority"),
           "att": f"{row.get('attempts')}/{row.get('max_attempts')}", "sweep": row.get("sweep") or "-",
           "tags": ",".join(row.get("tags") or []) or "-",
           "params": " ".join(f"{k}={v}" for k, v in (row.get("params") or {}).items()) or "-",
           "updated": fmt_time(row.get("updated"))}
    if row.get("flags"):
        out["flags"] = ",".join(row["flags"])
    if verbose:
        out.update(worker=row.get("worker") or "-", host=row.get("host") or "-", error=row.get("error") or "-",
                   resume_from=row.get("resume_from") or "-", sync=row.get("sync") or "-")
    return out


def _failures(rec: JobRecord) -> int:
    """Attempts (since the last retry) that ended in a failure: the running or successful
    attempt counts against the budget but has not failed."""
    return rec.failed_attempts - (1 if rec.status in ("running", "completed", "pruned") else 0)


def _sync_text(sync: dict) -> str:
    if not sync:
        return "-"
    state = sync.get("state", "-")
    if state == "synced":
        return f"synced {fmt_time(sync.get('at'))} ({sync.get('objects', 0)} objects)"
    if state == "error":
        return f"error: {sync.get('message', '')}"
    return state


@job.command("list")
@click.option("--status", default=None, help="Filter by state(s), comma-separated.")
@click.option("--tags", default=None, help="Only jobs carrying all these tags.")
@click.option("--sweep", "sweep_id", default=None, help="Only jobs of this sweep id (prefix ok).")
@click.option("--verbose", "-v", is_flag=True, help="Also worker, host, error, resume point and sync state.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many jobs (the first in claim order).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "jsonl"]), default="table", show_default=True,
              help="json/jsonl: the full records, streamed.")
@pass_ctx
def list_jobs(c: Context, status: str | None, tags: str | None, sweep_id: str | None, verbose: bool,
              limit: int | None, fmt: str) -> None:
    """List jobs in claim order (from the summary: no record is read for the table)."""
    problems: list[str] = []
    def order(row: dict) -> tuple[int, int]:
        return -row.get("priority", 0), row.get("seq", 0)

    summaries = c.exp.summaries(status=status, tags=tags, sweep_id=sweep_id, problems=problems)
    # Only what is printed is kept (not whole summary rows): memory grows with the listing, not the experiment.
    keep = (lambda r: r["id"]) if fmt in ("json", "jsonl") else (lambda r: _row(r, verbose))
    keyed = ((order(r), keep(r)) for r in summaries)
    rows = [kept for _, kept in (heapq.nsmallest(limit, keyed, key=itemgetter(0)) if limit
                                 else sorted(keyed, key=itemgetter(0)))]
    for p in problems:
        click.echo(f"warning: {p}", err=True)
    if fmt in ("json", "jsonl"):
        records = (c.exp.read_or_none(job_id) for job_id in rows)
        stream_json((rec.to_dict() for rec in records if rec is not None), lines=fmt == "jsonl")
        return
    if not rows:
        click.echo("no jobs" + (" match" if status or tags or sweep_id else f" in {c.exp.store.root}"))
        return
    columns = list(dict.fromkeys(k for r in rows for k in r))
    print_table(rows, columns, max_width=200 if verbose else 48)


@job.command()
@click.argument("job_id")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@pass_ctx
def show(c: Context, job_id: str, fmt: str) -> None:
    """Show one job: state, config source, result or error, history."""
    rec = c.exp.get(job_id)
    if fmt == "json":
        print_json(rec.to_dict())
        return
    run = c.exp.run_dir(rec)
    source = f"{rec.config_path}/{rec.config_name}.yaml" if rec.config_name else "(submitted from Python)"
    lines = [f"job        {rec.id}", f"status     {rec.status}", f"priority   {rec.priority}",
             f"tags       {','.join(rec.tags) or '-'}", f"config     {source}",
             f"overrides  {' '.join(rec.overrides) or '-'}", f"sweep      {rec.sweep_id or '-'} {rec.sweep_params or ''}",
             f"hash       {rec.config_hash[:16]}",
             (f"attempts   {rec.attempts} ({_failures(rec)} failed of {rec.max_attempts} allowed, "
             f"{rec.preemptions} handed back, {rec.worker_losses} workers lost of {rec.max_worker_losses} allowed)"),
             f"worker     {rec.worker_id or '-'} on {rec.host or '-'}",
             f"created    {fmt_time(rec.created_at)}   started {fmt_time(rec.started_at)}   finished {fmt_time(rec.finished_at)}",
             f"run dir    {run.root}", f"resume     {rec.resume_from or '-'}",
             f"sync       {_sync_text(rec.sync or {})}"]
    if rec.timeout:
        lines.insert(9, f"timeout    {rec.timeout:g}s per attempt")
    if rec.result:
        lines.append(f"metrics    {rec.result.get('metrics')}")
        peak = (rec.result.get("metrics") or {}).get("gpu/peak_memory_mb")
        if peak is not None:
            lines.append(f"gpu peak   {peak:,.0f} MiB allocated")
        for key in ("stop_reason", "flags"):
            if rec.result.get(key):
                lines.append(f"{key.replace('_', ' '):<10} {rec.result[key]}")
    from dr_exp.provenance import describe

    lines.extend(f"{label:<10} {text}" for label, text in describe(rec.provenance, run))
    if rec.error:
        lines.append(f"error      {rec.error.get('type')}: {rec.error.get('message')}")
        if rec.error.get("traceback_path"):
            lines.append(f"           details in {c.exp.store.root / rec.error['traceback_path']}")
    lines.append("history")
    for h in rec.history:
        lines.append(f"  {fmt_time(h.get('at'))}  {h.get('from', '?'):>9} -> {h.get('to', '?'):<9} {h.get('reason', '')}")
    click.echo("\n".join(lines))


@job.command()
@click.argument("job_ids", nargs=-1, required=True)
@pass_ctx
def cancel(c: Context, job_ids: tuple[str, ...]) -> None:
    """Cancel jobs: pending ones at once, running ones within seconds."""
    for job_id in job_ids:
        rec = c.exp.cancel(job_id)
        click.echo(f"cancelled {rec.id}")


@job.command()
@click.argument("job_ids", nargs=-1)
@click.option("--status", "status", type=click.Choice(["failed", "cancelled"]), default=None,
              help="Retry every job in this state.")
@pass_ctx
def retry(c: Context, job_ids: tuple[str, ...], status: str | None) -> None:
    """Put failed or cancelled jobs back in the queue."""
    if not job_ids and not status:
        raise DrExpError("give job ids or --status failed")
    ids = list(job_ids) + ([r.id for r in c.exp.list(status=status)] if status else [])
    for job_id in ids:
        rec = c.exp.retry(job_id)
        click.echo(f"retrying {rec.id}")
    if not ids:
        click.echo("nothing to retry")


@job.command()
@pass_ctx
def recover(c: Context) -> None:
    """Re-queue jobs whose worker stopped heartbeating (lease expired); advance adaptive sweeps."""
    done = c.exp.recover(full_scan=True)
    for job_id, what in done:
        click.echo(f"{job_id}: {what}")
    click.echo(f"recovered {len(done)} jobs")
    from dr_exp.study import repair_studies

    for line in repair_studies(c.exp):  # trials whose end was recorded but not told to their study
        click.echo(line)


@job.command("run-one")
@click.argument("job_id")
@pass_ctx
def run_one(c: Context, job_id: str) -> None:
    """Run one pending job in the foreground, through the worker's code path."""
    from dr_exp.worker import Worker, WorkerOptions

    worker = Worker(c.exp, WorkerOptions(idle_timeout=0))
    what = worker.run_one(job_id)
    rec = c.exp.get(job_id)
    click.echo(f"job {rec.id}: {what}; log: {c.exp.run_dir(rec).train_log}")
    if rec.status != Status.COMPLETED:
        sys.exit(1)


@job.command()
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing as the log grows, until the job ends.")
@pass_ctx
def logs(c: Context, job_id: str, follow: bool) -> None:
    """Print a job's train.log (the child's stdout and stderr)."""
    rec = c.exp.get(job_id)
    run = c.exp.run_dir(rec)
    path = run.train_log
    pos = 0
    finished = False
    while True:
        try:
            with open(path, "rb") as fh:
                fh.seek(pos)
                chunk = fh.read()
                pos = fh.tell()
            if chunk:
                click.echo(chunk.decode(errors="replace"), nl=False)
        except FileNotFoundError:
            try:  # a packed run (`dr_exp pack`): the log is in its archive
                click.echo(run.read(path).decode(errors="replace"), nl=False)
                return
            except FileNotFoundError:
                pass
            if not follow:
                raise DrExpError(f"job {rec.id} has no log yet at {path} (it is {rec.status})") from None
        if not follow or finished:
            return
        time.sleep(0.5)
        finished = c.exp.get(rec.id).status in FINISHED
