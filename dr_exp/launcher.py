"""The launcher: N workers per visible GPU (or ``--workers`` on a CPU machine), kept alive.

It pins each worker to its GPU with ``CUDA_VISIBLE_DEVICES``, restarts a worker that died
(with backoff), forwards SIGTERM/SIGUSR1 to every worker (so each hands its job back with a
checkpoint), sends them SIGUSR1 itself when its hours run out, and exits when all workers have.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from dr_exp.api import Experiment
from dr_exp.errors import DrExpError
from dr_exp.gpus import visible_gpus
from dr_exp.logging.files import attach_log_file
from dr_exp.progress import foreground_line

FORWARDED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
HEALTHY_SECONDS = 60.0  # a worker that ran this long before dying restarts with the shortest back-off
MAX_BACKOFF = 32.0


def restart_delay(deaths_in_a_row: int) -> float:
    """Seconds before restarting a worker that died this many times in a row: 1, 2, 4 ... 32."""
    return min(MAX_BACKOFF, 2.0 ** min(deaths_in_a_row, 6) / 2)


@dataclass
class _Slot:
    index: int
    gpu: str | None
    proc: subprocess.Popen | None = None
    restarts: int = 0        # in all (names the worker: w<N>r<restarts>)
    deaths_in_a_row: int = 0  # since it last ran healthily (sets the back-off)
    started_at: float = 0.0
    restart_at: float = 0.0
    done: bool = False


@dataclass
class LauncherOptions:
    workers_per_gpu: int = 1
    workers: int = 1
    max_hours: float | None = None
    idle_timeout: float = 60.0
    worker_args: list[str] = field(default_factory=list)
    max_restarts: int = 20
    requeue_allocation: bool = False
    gpus_per_worker: list[int] | None = None  # [K]: groups of K GPUs; [4, 1, 1]: a mixed layout


def layout_slots(gpus: list[str], workers_per_gpu: int, gpus_per_worker: list[int] | None) -> list[str]:
    """The GPU ids (comma-separated) each worker gets. ``gpus_per_worker`` of one number K splits
    the visible GPUs into groups of K; a list of numbers hands out groups of those sizes in order
    (``4,1,1,1,1`` on 8 GPUs: one 4-GPU worker and four 1-GPU workers). Each group gets
    ``workers_per_gpu`` workers."""
    if not gpus_per_worker:
        sizes = [1] * len(gpus)
    elif len(gpus_per_worker) == 1:
        k = gpus_per_worker[0]
        if k < 1 or len(gpus) % k:
            raise DrExpError(f"--gpus-per-worker {k} does not divide the {len(gpus)} visible GPUs ({','.join(gpus)})")
        sizes = [k] * (len(gpus) // k)
    else:
        sizes = list(gpus_per_worker)
        if any(k < 1 for k in sizes) or sum(sizes) > len(gpus):
            raise DrExpError(f"--gpus-per-worker {','.join(map(str, sizes))} needs {sum(sizes)} GPUs; "
                             f"{len(gpus)} are visible ({','.join(gpus) or 'none'})")
    groups, start = [], 0
    for k in sizes:
        groups.append(",".join(gpus[start:start + k]))
        start += k
    return [g for g in groups for _ in range(workers_per_gpu)]


class Launcher:
    def __init__(self, exp: Experiment, options: LauncherOptions) -> None:
        if options.workers_per_gpu < 1 or options.workers < 1:
            raise DrExpError("--workers-per-gpu and --workers must be at least 1")
        self.exp = exp
        self.opts = options
        self.signals: list[int] = []
        self.launcher_id = f"{socket.gethostname()}-{os.getpid()}"
        gpus = visible_gpus()
        if gpus:
            groups = layout_slots(gpus, options.workers_per_gpu, options.gpus_per_worker)
            self.slots = [_Slot(i, group) for i, group in enumerate(groups)]
        elif options.gpus_per_worker:
            raise DrExpError("--gpus-per-worker given, but no GPU is visible (CUDA_VISIBLE_DEVICES, SLURM's GPU "
                             "variables); use --workers on a machine without GPUs")
        else:
            self.slots = [_Slot(i, None) for i in range(options.workers)]
        self.log = logging.getLogger("dr_exp.launcher")

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)

    def _spawn(self, slot: _Slot, hours_left: float | None) -> None:
        env = dict(os.environ)
        cmd = [sys.executable, "-m", "dr_exp", "--base-path", str(self.exp.store.base_path),
               "--experiment", self.exp.name, "system", "worker",
               "--worker-id", f"{self.launcher_id}-w{slot.index}" + (f"r{slot.restarts}" if slot.restarts else ""),
               "--idle-timeout", str(self.opts.idle_timeout), *self.opts.worker_args]
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        if hours_left is not None:
            cmd += ["--max-hours", f"{max(hours_left, 1e-4):.6f}"]
        # Own process group: a Ctrl-C at the terminal reaches the launcher only, which forwards it
        # once; otherwise each worker would get it twice and take it as "stop now".
        slot.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, preexec_fn=os.setpgrp)
        slot.started_at = time.monotonic()
        self.log.info("started worker %d (pid %d, gpu %s)", slot.index, slot.proc.pid, slot.gpu)

    def _forward(self, signum: int) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                try:
                    slot.proc.send_signal(signum)
                except ProcessLookupError:
                    pass

    def run(self) -> int:
        self.exp.store.ensure()
        attach_log_file(self.log, self.exp.layout.launcher_log(self.launcher_id))
        for sig in FORWARDED:
            signal.signal(sig, self._on_signal)
        start = time.monotonic()
        deadline = start + self.opts.max_hours * 3600 if self.opts.max_hours else None
        self.log.info("launcher %s: %d workers (gpus: %s)", self.launcher_id, len(self.slots),
                      ",".join(s.gpu for s in self.slots if s.gpu is not None) or "none")
        for slot in self.slots:
            self._spawn(slot, self.opts.max_hours)
        # A live line (pending/running/done/failed, jobs/min, time to drain) when run in the
        # foreground of a terminal; a no-op under sbatch, nohup or `&`.
        progress = foreground_line(self.exp.store.base_path, self.exp.name)
        stopping = False
        forwarded = 0
        failures = 0
        gave_up = 0
        while True:
            while forwarded < len(self.signals):
                signum = self.signals[forwarded]
                forwarded += 1
                stopping = True
                self.log.info("forwarding %s to workers", signal.Signals(signum).name)
                self._forward(signum)
            if deadline is not None and not stopping and time.monotonic() >= deadline:
                self.log.info("max hours reached: asking workers to hand their jobs back")
                stopping = True
                self._forward(signal.SIGUSR1)
            alive = 0
            for slot in self.slots:
                if slot.done:
                    continue
                if slot.proc is None:
                    if stopping:
                        slot.done = True
                    elif time.monotonic() >= slot.restart_at:
                        left = (deadline - time.monotonic()) / 3600 if deadline else None
                        self._spawn(slot, left)
                    alive += 1
                    continue
                code = slot.proc.poll()
                if code is None:
                    alive += 1
                    continue
                if code == 0 or stopping:
                    self.log.info("worker %d exited (%s)", slot.index, code)
                    slot.done = True
                    continue
                failures += 1
                slot.restarts += 1
                ran = time.monotonic() - slot.started_at
                # A worker that ran healthily for a while starts its back-off afresh.
                slot.deaths_in_a_row = 1 if ran > HEALTHY_SECONDS else slot.deaths_in_a_row + 1
                if slot.deaths_in_a_row > self.opts.max_restarts:
                    self.log.error("worker %d died %d times in a row; giving up on it", slot.index, slot.deaths_in_a_row)
                    slot.done = True
                    gave_up += 1
                    continue
                backoff = restart_delay(slot.deaths_in_a_row)
                self.log.warning("worker %d died (exit %s); restarting in %.0fs", slot.index, code, backoff)
                slot.proc = None
                slot.restart_at = time.monotonic() + backoff
                alive += 1
            if alive == 0:
                break
            progress.tick()
            time.sleep(0.2)
        progress.close()
        if stopping and self.signals and self.opts.requeue_allocation:
            self._requeue_allocation()
        self.log.info("launcher %s exits (%d worker deaths)", self.launcher_id, failures)
        if gave_up == len(self.slots):
            raise DrExpError(f"every worker died {self.opts.max_restarts + 1} times in a row, so the launcher gave up; "
                             f"see the worker logs in {self.exp.layout.logs_dir}")
        return 0

    def _requeue_allocation(self) -> None:
        """Ask SLURM to run this allocation again (same job id) once it has ended."""
        job = os.environ.get("SLURM_JOB_ID")
        if not job:
            self.log.warning("--requeue-allocation: not inside a SLURM job; nothing to requeue")
            return
        proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if proc.returncode == 0:
            self.log.info("requeued SLURM job %s", job)
        else:
            self.log.error("scontrol requeue %s failed: %s", job, proc.stderr.strip())
