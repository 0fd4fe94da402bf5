"""A job's ranks: multi-process (DDP) training inside the job's own process group.

When a job's trainer config asks for N processes on this node (:func:`local_world_size`), the
job's process becomes rank 0 and starts ranks 1..N-1 itself, as ``python -m dr_exp.ranks``
children in its process group, each running the same trainer call. Nothing re-runs the worker's
command line (Lightning's own launcher would: in a job, ``sys.argv`` is the worker's).

Every rank gets the environment ``torchrun`` gives its workers (``MASTER_ADDR=127.0.0.1``, a free
``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``,
``TORCHELASTIC_RUN_ID``), so Lightning picks its ``TorchElasticEnvironment`` (which it prefers to
SLURM's, so this holds inside an ``sbatch`` allocation too), sees the processes as launched
externally and starts none; a plain ``torch.distributed.init_process_group()`` works as well.
``DR_EXP_RANK`` tells dr_exp's own code which rank it runs in: only rank 0 writes the run
directory (:class:`~dr_exp.logging.structured_logger.StructuredLogger` drops writes elsewhere).

Rank 0 watches the others: a rank that dies (a signal, or an exit status other than 0) stops the
whole job at once, reported as failed with the rank and the reason (``rank 1 of 2 killed by
SIGKILL``). A rank never outlives rank 0 (``PR_SET_PDEATHSIG``, and a watch on rank 0's pid), and
the worker kills the job's process group once the job's process has exited.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dr_exp.errors import ConfigError

_SPAWNING = ("ddp_spawn", "ddp_fork", "ddp_notebook")


def visible_gpus() -> int:
    """CUDA devices this process may use (torch's count: CUDA_VISIBLE_DEVICES applied); 0
    without torch or a driver. torch is imported only here, when a config's answer needs it."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _count_devices(devices: Any, on_gpu: bool, gpus: Callable[[], int]) -> int | None:
    """``trainer.devices`` as a number of processes, as Lightning reads it (None: let it decide)."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto":
            return gpus() if on_gpu else 1
        if "," in text:
            return len([d for d in text.split(",") if d.strip()])
        try:
            devices = int(text)
        except ValueError:
            return None
    if isinstance(devices, int):
        if devices == -1:
            return gpus() if on_gpu else None
        return devices if devices >= 1 else None
    return None


def local_world_size(config: Mapping[str, Any], gpus: Callable[[], int] = visible_gpus) -> int:
    """How many processes (ranks) a job's config asks for on this node; 1 for a single process.

    The rule, read from the config's ``trainer:`` section with Lightning's meaning of each key:

    - a strategy of the DDP family (``ddp``, ``ddp_find_unused_parameters_true``, ...), ``fsdp``
      or ``auto`` runs one rank per device; any other strategy (or no ``trainer:``) one process;
    - the devices are GPUs when ``accelerator`` is ``gpu``/``cuda``, or ``auto`` and a GPU is
      visible; otherwise CPU processes (``accelerator=cpu devices=2 strategy=ddp``: 2 ranks, gloo);
    - ``devices`` is a count, a list or comma-separated string of GPU ids, ``auto`` or ``-1``
      (every visible GPU; one process on the CPU).

    Refused with a :class:`ConfigError` (the job fails at once, it would fail again): asking for
    more GPUs than are visible (with none visible, a one-device GPU config falls back to one CPU
    process, as decon_cnn does); ``ddp_spawn``/``ddp_fork``/``ddp_notebook`` with more than one
    device (they start processes themselves: use ``ddp``); ``fsdp`` without GPUs; ``num_nodes`` > 1.
    """
    trainer = config.get("trainer")
    if not isinstance(trainer, Mapping):
        return 1
    strategy = trainer.get("strategy", "auto")
    if not isinstance(strategy, str):
        return 1
    strategy = strategy.strip().lower()
    if not (strategy == "auto" or strategy.startswith(("ddp", "fsdp"))):
        return 1
    num_nodes = trainer.get("num_nodes", 1)
    if num_nodes not in (1, "1", None):
        raise ConfigError(f"trainer.num_nodes={num_nodes}: a dr_exp job runs on one node; set trainer.num_nodes=1")
    accelerator = str(trainer.get("accelerator", "auto")).strip().lower()
    if accelerator not in ("auto", "gpu", "cuda", "cpu"):
        return 1  # mps, tpu, ...: one process, as Lightning runs them here
    devices = trainer.get("devices", "auto")
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpus() > 0)
    if strategy.startswith("fsdp") and not on_gpu:
        raise ConfigError(f"trainer.strategy={strategy} needs CUDA GPUs; use trainer.strategy=ddp on the CPU")
    n = _count_devices(devices, on_gpu, gpus)
    if n is None or n <= 1:
        return 1
    if on_gpu:
        visible = gpus()
        if n > visible:
            seen = os.environ.get("CUDA_VISIBLE_DEVICES")
            where = f" (CUDA_VISIBLE_DEVICES={seen})" if seen is not None else ""
            raise ConfigError(f"trainer.devices={devices} asks for {n} GPUs but {visible or 'none'} "
                              f"{'is' if visible <= 1 else 'are'} visible{where}; lower trainer.devices or run "
                              "the job where that many GPUs are visible")
    if strategy.startswith(_SPAWNING):
        raise ConfigError(f"trainer.strategy={strategy} starts its own processes, which cannot work inside a job; "
                          "use trainer.strategy=ddp (dr_exp starts the ranks)")
    return n


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_env(rank: int, world_size: int, port: int, run_id: str) -> dict[str, str]:
    """The environment of one rank: what ``torchrun`` sets for its workers, plus ``DR_EXP_RANK``."""
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world_size),
            "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world_size), "GROUP_RANK": "0",
            "ROLE_RANK": str(rank), "ROLE_WORLD_SIZE": str(world_size), "NODE_RANK": "0",
            "TORCHELASTIC_RUN_ID": run_id, "DR_EXP_RANK": str(rank)}


def current_rank() -> int:
    """This process's rank in its job (0 outside multi-rank jobs)."""
    try:
        return int(os.environ.get("DR_EXP_RANK", "0"))
    except ValueError:
        return 0


def killed_by(code: int) -> str:
    """``killed by SIGKILL (out of memory?)`` for a process that a signal ended (``code`` < 0)."""
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")


def _describe(rank: int, world_size: int, code: int, report: dict[str, Any] | None) -> dict[str, Any]:
    """How a rank ended, as the job's failure outcome."""
    who = f"rank {rank} of {world_size}"
    if code < 0:
        return {"status": "failed", "type": "RankDied", "message": f"{who} {killed_by(code)}", "rank": rank,
                "fatal": False}
    if report:
        return {"status": "failed", "type": report.get("type") or "RankFailed", "rank": rank,
                "message": f"{who} failed: {report.get('type')}: {report.get('message')}",
                "fatal": bool(report.get("fatal")), "traceback": report.get("traceback")}
    return {"status": "failed", "type": "RankDied", "message": f"{who} exited with status {code}", "rank": rank,
            "fatal": False}


class RankGroup:
    """Ranks 1..N-1 of one job, started and watched by rank 0 (the job's process)."""

    def __init__(self, world_size: int, procs: list[subprocess.Popen], reports: list[int]) -> None:
        self.world_size = world_size
        self.procs = procs
        self._reports = reports
        self._read: dict[int, dict[str, Any] | None] = {}
        self._watching = threading.Event()

    @classmethod
    def start(cls, spec: Mapping[str, Any], world_size: int) -> RankGroup:
        """Make this process rank 0 (its environment) and start the other ranks with ``spec``
        (the runner's job spec: config, ids, run directory, the resolved ``resume_from``)."""
        port = free_port()
        run_id = f"{spec['job_id']}-{spec['attempt']}"
        os.environ.update(rank_env(0, world_size, port, run_id))
        procs, reports = [], []
        # sys.path too, as multiprocessing's spawn does: the trainer must import as it did here.
        payload = json.dumps({**spec, "rank0_pid": os.getpid(), "sys_path": sys.path}, default=str).encode()
        # Blocked until a rank has its handler: a pre-emption signal sent to the job's process
        # group meanwhile waits instead of killing the rank (a blocked mask survives exec).
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        try:
            for rank in range(1, world_size):
                read_end, write_end = os.pipe()
                env = {**os.environ, **rank_env(rank, world_size, port, run_id), "DR_EXP_RANK_REPORT_FD": str(write_end)}
                try:
                    proc = subprocess.Popen([sys.executable, "-m", "dr_exp.ranks"], stdin=subprocess.PIPE, env=env,
                                            pass_fds=(write_end,))
                finally:
                    os.close(write_end)
                os.set_blocking(read_end, False)
                procs.append(proc)
                reports.append(read_end)
                assert proc.stdin is not None
                try:
                    proc.stdin.write(payload)
                    proc.stdin.close()
                except BrokenPipeError:
                    pass  # the rank died at once; the watch reports how
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return cls(world_size, procs, reports)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _report_of(self, i: int) -> dict[str, Any] | None:
        """What rank i+1 wrote about its exception before it exited (read once, kept)."""
        if i not in self._read:
            try:
                data = os.read(self._reports[i], 1 << 20)
                report = json.loads(data.decode(errors="replace")) if data else None
            except (OSError, ValueError):
                report = None
            self._read[i] = report if isinstance(report, dict) else None
        return self._read[i]

    def _first_failure(self) -> dict[str, Any] | None:
        for i, proc in enumerate(self.procs):
            code = proc.poll()
            if code:
                return _describe(i + 1, self.world_size, code, self._report_of(i))
        return None

    def watch(self, on_failure: Callable[[dict[str, Any]], None], interval: float = 0.2, grace: float = 1.0) -> None:
        """Call ``on_failure(outcome)`` (from a thread) when a rank dies while rank 0 still runs.
        ``grace`` lets rank 0 report a failure of its own first (it stops the watch)."""
        self._watching.set()

        def loop() -> None:
            while self._watching.is_set():
                time.sleep(interval)
                failure = self._first_failure()
                if failure is not None:
                    time.sleep(grace)
                    if self._watching.is_set():
                        on_failure(failure)
                    return

        threading.Thread(target=loop, name="dr_exp-ranks", daemon=True).start()

    def stop_watching(self) -> None:
        self._watching.clear()

    def failure(self, wait: float) -> dict[str, Any] | None:
        """After rank 0 failed: how another rank ended, if one failed within ``wait`` seconds
        (or had already); None once every rank exited cleanly or the time is up."""
        self.stop_watching()
        deadline = time.monotonic() + wait
        while True:
            failure = self._first_failure()
            if failure is not None or all(p.poll() is not None for p in self.procs):
                return failure
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def finish(self, timeout: float) -> dict[str, Any] | None:
        """After rank 0's trainer returned: wait for the other ranks to exit; how one failed, if
        one did. A rank still running after ``timeout`` seconds is killed."""
        self.stop_watching()
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"[dr_exp] rank (pid {proc.pid}) still running {timeout:g}s after rank 0 finished; killing it",
                      flush=True)
                proc.kill()
                proc.wait()
        return self._first_failure()


def merge_failure(own: dict[str, Any], other: dict[str, Any] | None) -> dict[str, Any]:
    """Rank 0's failure report, or another rank's when that one is the cause: a rank that died
    (a signal, an exit without a report), or one whose error differs from rank 0's (whose own
    error is then most likely the broken connection to that rank)."""
    if other is None:
        return own
    if other.get("type") != "RankDied":
        own_text = f"{own.get('type')}: {own.get('message')}"
        if own_text in str(other.get("message")):
            return own  # every rank raised the same error
    merged = dict(other)
    merged["message"] = f"{other['message']} (rank 0: {own.get('type')}: {str(own.get('message'))[:300]})"
    merged["traceback"] = other.get("traceback") or own.get("traceback")
    return merged


# -- the rank process ------------------------------------------------------------------------
def _rank_main() -> int:
    """``python -m dr_exp.ranks``: one rank > 0 of a job; the spec comes on stdin."""
    from dr_exp import preemption
    from dr_exp.runner import TrainerExit, _call_trainer, _die_with, _is_fatal
    from dr_exp.study import Pruned

    spec = json.loads(sys.stdin.buffer.read())
    sys.path[:] = [p for p in spec.get("sys_path", []) if isinstance(p, str)] or sys.path
    preemption.install_handler(signal.SIGUSR1)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})  # blocked by rank 0 until now
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rank0 = int(spec["rank0_pid"])
    if os.getppid() != rank0:  # rank 0 died before we got here
        return 1
    _die_with(rank0)
    report_fd = int(os.environ.pop("DR_EXP_RANK_REPORT_FD", "-1"))
    if report_fd >= 0:
        os.set_inheritable(report_fd, False)  # for rank 0's ears only, not for what the trainer runs
    rank, world = current_rank(), os.environ.get("WORLD_SIZE")
    print(f"[dr_exp] job {spec['job_id']} rank {rank} of {world} (pid {os.getpid()})", flush=True)
    runtime = {"job_id": spec["job_id"], "worker_id": spec["worker_id"], "storage_path": spec["run_dir"],
               "resume_from": spec.get("resume_from"), "attempt": int(spec["attempt"])}
    try:
        _call_trainer(spec["config"], runtime)
    except (preemption.Preempted, Pruned):  # rank 0 reports the job's ending
        return 0
    except BaseException as exc:  # noqa: BLE001 - reported to rank 0, which fails the job
        if isinstance(exc, SystemExit):
            exc = TrainerExit(f"trainer called sys.exit({exc.code!r}) instead of returning a result")
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        print(f"[dr_exp] rank {rank} failed:\n{text}", file=sys.stderr, flush=True)
        if report_fd >= 0:
            try:
                os.write(report_fd, json.dumps({"type": type(exc).__name__, "message": str(exc)[:2000] or repr(exc),
                                                "fatal": _is_fatal(exc), "traceback": text[-8000:]}).encode())
            except OSError:
                pass
        return 1
    return 0


if __name__ == "__main__":
    code = _rank_main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
