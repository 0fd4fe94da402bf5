"""Celery's filesystem broker (kombu's ``filesystem://`` transport) as a baseline for the queue
benchmark: submit rate and drain rate of the same shape as dr_exp's, measured the same way.

Messages look like Celery's (protocol 2: task name and id in the headers; args, kwargs and
embed in a JSON body) on Celery's default queue, exchange and routing key (``celery``), and
each carries a composed job config of about 1.1 KB of JSON. Consumers get and ack one message
at a time, as a Celery worker does with a prefetch of one, and decode its body.

What the transport does (kombu/transport/filesystem.py), so the numbers are read fairly:

- publishing reads the exchange table (a file, under a shared flock) and writes one file per
  message (open, flock, write, close). Nothing is fsynced and nothing is renamed into place: a
  power cut can lose or truncate messages, and a consumer can take a file still being written;
- every get lists and sorts the whole queue folder (so a get costs more the longer the queue),
  renames the first file into the temp directory (only one renamer wins; here the temp
  directory is inside ``workdir``, so this stays a rename), reads it and deletes it;
- the message is gone from disk before it is acked: an ack only updates the consumer's memory,
  and unacked messages are put back only on a clean shutdown, so a consumer killed while
  running a task loses it. There are no priorities, leases or result records either.

dr_exp's records, in contrast, are written whole and fsynced, and a claim is a lease that
outlives a crash of its worker.

    python -m benchmarks.kombu_baseline [--drain-jobs 4000] [--submit 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import machine, table

# `jq .config jobs/<id>.json` of a job submitted from exp_configs/step00_baseline.yaml.
JOB_CONFIG: dict[str, Any] = {
    "model": {"name": "resnet18_cifar"},
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.0005},
    "lr_scheduler": {"name": "cosine", "warmup_epochs": 5, "warmup_start_factor": 0.1, "min_lr": 0.0},
    "transforms": {"name": "cifar10_augmented", "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616],
                   "train": ["random_crop", "horizontal_flip"]},
    "machine": {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed", "num_workers": 4},
    "paths": {"data_dir": "./data", "output_dir": "./outputs"},
    "seed": 0,
    "channels_last": False,
    "data": {"dataset": "cifar10", "batch_size": 128, "num_workers": 4, "download": False,
             "synthetic": {"num_train": 4096, "num_val": 1024, "num_classes": 10, "image_size": 32, "channels": 3,
                           "noise": 1.0}},
    "trainer": {"max_epochs": 100, "accelerator": "gpu", "devices": 1, "precision": "bf16-mixed", "strategy": "auto",
                "gradient_clip_val": None, "accumulate_grad_batches": 1, "log_every_n_steps": 50,
                "enable_progress_bar": False, "enable_model_summary": False},
    "callback": {"every_n_batches": 0},
    "_target_": "dr_exp.trainers.decon_trainer.train_classification",
}
TASK = "dr_exp.run_job"


def _kombu() -> Any:
    try:
        import kombu
    except ImportError:
        raise SystemExit("the kombu baseline needs kombu: pip install 'kombu>=5.3'") from None
    return kombu


def _celery_queue() -> Any:
    kombu = _kombu()
    return kombu.Queue("celery", kombu.Exchange("celery", type="direct"), routing_key="celery")


def _connection(folder: Path) -> Any:
    """A connection to the broker in ``folder``; producers and consumers share one message folder."""
    return _kombu().Connection("filesystem://", transport_options={
        "data_folder_in": str(folder / "queue"), "data_folder_out": str(folder / "queue"),
        "control_folder": str(folder / "control")})


def _fresh_broker(workdir: str | os.PathLike[str]) -> Path:
    _kombu()
    from kombu.transport.filesystem import Transport

    # kombu remembers declared bindings per process, not per folder: without this, a second
    # broker in the same process would get no binding file, and its messages would be dropped.
    Transport.global_state.clear()
    folder = Path(tempfile.mkdtemp(prefix="kombu-", dir=workdir))
    for sub in ("queue", "control", "tmp"):
        (folder / sub).mkdir()
    return folder


def _publish(folder: Path, configs: list[dict[str, Any]]) -> float:
    """Publish one task message per config as Celery's ``apply_async`` does; returns seconds."""
    queue = _celery_queue()
    with _connection(folder) as conn:
        producer = conn.Producer(serializer="json")
        queue(producer.channel).declare()
        t0 = time.perf_counter()
        for config in configs:
            task_id = str(uuid.uuid4())
            producer.publish(
                [[], {"config": config}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}],
                exchange=queue.exchange, routing_key=queue.routing_key, delivery_mode=2,
                headers={"lang": "py", "task": TASK, "id": task_id, "root_id": task_id, "parent_id": None,
                         "group": None, "retries": 0, "eta": None, "expires": None, "origin": f"submit@{os.getpid()}"})
        return time.perf_counter() - t0


def _configs(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        config = copy.deepcopy(JOB_CONFIG)
        config["seed"] = i
        out.append(config)
    return out


def kombu_submit_rate(n: int, workdir: str | os.PathLike[str], cleanup: bool = True) -> float:
    """Jobs/s publishing ``n`` task messages to a fresh filesystem broker in ``workdir`` (left
    there with ``cleanup=False``: deleting files right before another measurement slows it)."""
    folder = _fresh_broker(workdir)
    try:
        return n / _publish(folder, _configs(n))
    finally:
        if cleanup:
            shutil.rmtree(folder, ignore_errors=True)


def _consume(folder: Path, go: Any, counter: Any) -> None:
    # kombu moves a message into the temp directory before reading it: keep that on this filesystem.
    tempfile.tempdir = str(folder / "tmp")
    with _connection(folder) as conn:
        queue = conn.SimpleQueue(_celery_queue())
        go.wait()
        done = 0
        while True:
            try:
                message = queue.get_nowait()
            except queue.Empty:
                break
            assert message.payload[1]["config"]["_target_"]
            message.ack()
            done += 1
        queue.close()
    with counter.get_lock():
        counter.value += done


def kombu_drain_rate(n_jobs: int, processes: int, workdir: str | os.PathLike[str]) -> float:
    """Jobs/s of ``processes`` consumers taking and acking ``n_jobs`` pre-filled messages until
    the queue is empty, timed from a common start signal until the last consumer has exited."""
    folder = _fresh_broker(workdir)
    try:
        _publish(folder, _configs(n_jobs))
        os.sync()
        ctx = mp.get_context("fork")
        go, counter = ctx.Event(), ctx.Value("i", 0)
        consumers = [ctx.Process(target=_consume, args=(folder, go, counter)) for _ in range(processes)]
        for p in consumers:
            p.start()
        time.sleep(0.5)  # connected and waiting
        t0 = time.perf_counter()
        go.set()
        for p in consumers:
            p.join()
        elapsed = time.perf_counter() - t0
        assert counter.value == n_jobs, (counter.value, n_jobs)
        return n_jobs / elapsed
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _summary(rates: list[float]) -> dict[str, str]:
    return {"rounds": str(len(rates)), "median_jobs_per_s": f"{statistics.median(rates):.0f}",
            "min_max_jobs_per_s": f"{min(rates):.0f}-{max(rates):.0f}"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--drain-jobs", type=int, default=4000)
    parser.add_argument("--submit", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    kombu = _kombu()
    print(f"machine: {machine()}; kombu {kombu.__version__}")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        rows = [{"what": f"submit {args.submit} messages, 1 process", "processes": "1",
                 **_summary([kombu_submit_rate(args.submit, tmp) for _ in range(args.rounds)])}]
        for procs in (1, 2, 4):
            rates = [kombu_drain_rate(args.drain_jobs, procs, tmp) for _ in range(args.rounds)]
            rows.append({"what": f"drain {args.drain_jobs} messages (get + ack)", "processes": str(procs),
                         **_summary(rates)})
    print("\nkombu filesystem:// transport (Celery's filesystem broker), no fsync")
    print(table(rows, ["what", "processes", "rounds", "median_jobs_per_s", "min_max_jobs_per_s"]))


if __name__ == "__main__":
    main()
