"""``dr_exp system ...``: worker and launcher."""

from __future__ import annotations

import sys

import click

from dr_exp.api import Experiment
from dr_exp.cli.base import Context, cli, pass_ctx
from dr_exp.errors import DrExpError


@cli.group()
def system() -> None:
    """Run workers."""


@system.command()
@click.option("--worker-id", default=None, help="Default: <host>-<pid>-<random>.")
@click.option("--idle-timeout", type=float, default=60.0, show_default=True,
              help="Exit after the queue stays empty this long (s).")
@click.option("--max-jobs", type=int, default=None, help="Exit after this many jobs.")
@click.option("--max-hours", type=float, default=None, help="Stop claiming after this many hours.")
@click.option("--gpu", default=None, help="Pin the worker to this GPU (sets CUDA_VISIBLE_DEVICES).")
@click.option("--gpus", type=int, default=None,
              help="GPUs this worker holds: it claims only jobs needing at most that many (default: those visible).")
@click.option("--lease-seconds", type=float, default=None, help="Lease expiry (env DR_EXP_LEASE_SECONDS, default 60).")
@click.option("--heartbeat-seconds", type=float, default=None,
              help="Lease refresh interval (env DR_EXP_HEARTBEAT_SECONDS, default 10).")
@click.option("--preload", default="", help="Comma-separated modules the fork server imports once (e.g. torch).")
@pass_ctx
def worker(c: Context, worker_id: str | None, idle_timeout: float, max_jobs: int | None, max_hours: float | None,
           gpu: str | None, gpus: int | None, lease_seconds: float | None, heartbeat_seconds: float | None,
           preload: str) -> None:
    """Claim and run jobs until the queue stays empty, max jobs or max hours."""
    from dr_exp.worker import Worker, WorkerOptions

    opts = WorkerOptions(idle_timeout=idle_timeout, max_jobs=max_jobs, max_hours=max_hours, gpu=gpu, gpus=gpus,
                         preload=tuple(m for m in preload.split(",") if m))
    if worker_id:
        opts.worker_id = worker_id
    if lease_seconds is not None:
        opts.lease_seconds = lease_seconds
    if heartbeat_seconds is not None:
        opts.heartbeat_seconds = heartbeat_seconds
    sys.exit(Worker(c.exp, opts).run())


@system.command()
@click.option("--workers-per-gpu", type=int, default=1, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Workers on a machine without GPUs.")
@click.option("--max-hours", type=float, default=None, help="Hand jobs back and stop after this many hours.")
@click.option("--idle-timeout", type=float, default=60.0, show_default=True)
@click.option("--requeue-allocation", is_flag=True,
              help="Under SLURM: after a pre-emption signal, also `scontrol requeue` this allocation.")
@click.option("--max-restarts", type=click.IntRange(min=0), default=20, show_default=True,
              help="Give up on a worker slot after this many deaths in a row.")
@click.option("--gpus-per-worker", default=None, metavar="K|K1,K2,...",
              help="GPUs per worker: K for groups of K, or a layout such as 4,1,1,1,1 (default 1).")
@click.argument("worker_args", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def launcher(c: Context, workers_per_gpu: int, workers: int, max_hours: float | None, idle_timeout: float,
             requeue_allocation: bool, max_restarts: int, gpus_per_worker: str | None,
             worker_args: tuple[str, ...]) -> None:
    """Start and supervise workers: N per visible GPU, or --workers on a CPU machine.

    Arguments after `--` go to every worker (e.g. `-- --preload torch`)."""
    from dr_exp.launcher import Launcher, LauncherOptions

    opts = LauncherOptions(workers_per_gpu=workers_per_gpu, workers=workers, max_hours=max_hours,
                           idle_timeout=idle_timeout, worker_args=list(worker_args),
                           requeue_allocation=requeue_allocation, max_restarts=max_restarts,
                           gpus_per_worker=_gpu_layout(gpus_per_worker))
    sys.exit(Launcher(c.exp, opts).run())


@system.command("slurm-submit")
@click.option("--array", "--nodes", "array", type=int, default=1, show_default=True,
              help="Number of allocations (an sbatch array when > 1).")
@click.option("--gpus-per-job", type=int, default=1, show_default=True, help="GPUs per allocation (0: CPU only).")
@click.option("--gpus-per-worker", default=None, metavar="K|K1,K2,...",
              help="GPUs per worker inside each allocation (see `system launcher`).")
@click.option("--workers-per-gpu", type=int, default=1, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Workers per CPU-only allocation.")
@click.option("--cpus-per-task", type=int, default=4, show_default=True)
@click.option("--time", "time_", default="48:00:00", show_default=True, help="SLURM time limit.")
@click.option("--partition", default=None)
@click.option("--max-hours", type=float, default=None, help="Launcher hours (default: until the time-limit signal).")
@click.option("--idle-timeout", type=float, default=600.0, show_default=True)
@click.option("--requeue-allocation", is_flag=True, help="Requeue the allocation itself when pre-empted.")
@click.option("--dry-run", is_flag=True, help="Print the sbatch script instead of submitting it.")
@click.argument("sbatch_args", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def slurm_submit(c: Context, array: int, gpus_per_job: int, gpus_per_worker: str | None, workers_per_gpu: int,
                 workers: int, cpus_per_task: int,
                 time_: str, partition: str | None, max_hours: float | None, idle_timeout: float,
                 requeue_allocation: bool, dry_run: bool, sbatch_args: tuple[str, ...]) -> None:
    """Submit sbatch allocations of the launcher for this experiment. Arguments after `--` are
    extra sbatch options (e.g. `-- --account=lab --qos=long`)."""
    from dr_exp.slurm import SlurmRequest, render_script, submit

    req = SlurmRequest(array=array, gpus_per_job=gpus_per_job, gpus_per_worker=_gpu_layout(gpus_per_worker),
                       workers_per_gpu=workers_per_gpu, workers=workers,
                       cpus_per_task=cpus_per_task, time=time_, partition=partition, max_hours=max_hours,
                       idle_timeout=idle_timeout, requeue_allocation=requeue_allocation,
                       extra_sbatch=list(sbatch_args))
    if dry_run:
        click.echo(render_script(c.exp, req), nl=False)
        return
    for job_id in submit(c.exp, req):
        click.echo(f"submitted SLURM job {job_id}" + (f" (array of {array})" if array > 1 else ""))


def print_allocations(exp: Experiment) -> None:
    """SLURM allocations recorded for this experiment, if any (see `system slurm-submit`)."""
    from dr_exp.slurm import allocation_status

    rows = allocation_status(exp)
    if rows:
        from dr_exp.cli.output import print_table

        click.echo("")
        print_table(rows, list(rows[0].keys()))


def _gpu_layout(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise DrExpError(f"--gpus-per-worker {text!r}: give a number of GPUs per worker, or a layout such as 4,1,1") from None
    if any(k < 1 for k in sizes):
        raise DrExpError(f"--gpus-per-worker {text!r}: every worker needs at least one GPU")
    return sizes
