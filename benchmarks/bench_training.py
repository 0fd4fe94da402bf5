"""Training-step throughput of decon_cnn (Lightning + DrExpMetricsCallback + StructuredLogger)
against a hand-written PyTorch loop on the same model, data, batch size and machine.

Both train the same model for the same epochs; the first epoch is warm-up and not timed.

    python -m benchmarks.bench_training [--model small_cnn] [--epochs 4] [--device cpu|cuda]
    python -m benchmarks.bench_training --model resnet18_cifar --device cuda --precision bf16-mixed \
        --channels-last [--compile] --batch 512 --images 50000
    python -m benchmarks.bench_training --share 1,2,4 --device cuda [--epochs 6]

Both loops do the same work: no gradient clipping, no validation; decon_cnn keeps its per-epoch
summary, metrics logger and sanity checks, which are part of what it costs.

``--share 1,2,4`` answers "how many workers per GPU?" (``launcher --workers-per-gpu``): K
processes train the decon_cnn loop at once on the same device (as K workers pinned to one GPU
do), started together after each has built its model and data; aggregate images/s over the
window in which they all trained, against one process alone.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from benchmarks.common import machine, table
from decon_cnn import models
from decon_cnn.data import ImageDataModule
from decon_cnn.factory import create_optimizer
from decon_cnn.train import RunOptions, train
from dr_exp.compose import compose_one
from dr_exp.logging import StructuredLogger

MODELS = {"small_cnn": models.SmallCNN, "resnet18_cifar": models.resnet18_cifar, "resnet50_cifar": models.resnet50_cifar}


class EpochTimer(pl.Callback):
    """Times each training epoch; with ``barrier``, waits at the start of training until the
    parent says go (so that processes sharing a device train at the same time)."""

    def __init__(self, barrier: Path | None = None) -> None:
        self.times: list[float] = []
        self.spans: list[tuple[float, float]] = []  # wall-clock (start, end) of each epoch
        self._t0 = self._wall0 = 0.0
        self.barrier = barrier

    def on_train_start(self, trainer, pl_module) -> None:
        if self.barrier is not None:
            (self.barrier / f"ready-{os.getpid()}").touch()
            while not (self.barrier / "go").exists():
                time.sleep(0.01)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._t0, self._wall0 = time.perf_counter(), time.time()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t0)
        self.spans.append((self._wall0, time.time()))


def lightning_run(args: argparse.Namespace, n_images: int, timer: EpochTimer | None = None) -> float:
    accelerator = "cpu" if args.device == "cpu" else "gpu"
    config = compose_one("exp_configs", "quickstart", [
        f"model={args.model}", f"trainer.max_epochs={args.epochs}", f"data.batch_size={args.batch}",
        f"data.synthetic.num_train={n_images}", "data.synthetic.image_size=32", "+trainer.limit_val_batches=0",
        "lr_scheduler=none", f"trainer.accelerator={accelerator}", "data.num_workers=0", "trainer.gradient_clip_val=null",
        f"trainer.precision={args.precision}", f"channels_last={str(args.channels_last).lower()}",
        f"compile={str(args.compile).lower()}", "test=false"]).config
    config.pop("_target_")
    timer = timer or EpochTimer()
    with tempfile.TemporaryDirectory() as tmp:
        train(OmegaConf.create(config), RunOptions(logger=StructuredLogger(tmp, "bench", "bench"), callbacks=[timer]))
    return n_images * (args.epochs - 1) / sum(timer.times[1:])


def hand_loop(args: argparse.Namespace, n_images: int) -> float:
    torch.manual_seed(0)
    device = torch.device(args.device)
    dm = ImageDataModule("synthetic", synthetic={"num_train": n_images, "num_val": 16, "image_size": 32},
                         batch_size=args.batch)
    dm.setup()
    model = MODELS[args.model](num_classes=10).to(device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    if args.compile:
        model.compile()
    bf16 = args.precision.startswith("bf16")
    opt = create_optimizer(model, functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, nesterov=True,
                                                    weight_decay=5e-4))
    times = []
    for _ in range(args.epochs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.train()
        for x, y in dm.train_dataloader():
            x, y = x.to(device, non_blocking=True).contiguous(memory_format=fmt), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return n_images * (args.epochs - 1) / sum(times[1:])


def shared_device(args: argparse.Namespace, counts: list[int]) -> None:
    """K processes training at once on one device, for each K in ``counts``."""
    rows, base = [], None
    for k in counts:
        with tempfile.TemporaryDirectory() as barrier:
            cmd = [sys.executable, "-m", "benchmarks.bench_training", "--one", barrier, "--model", args.model,
                   "--epochs", str(args.epochs), "--batch", str(args.batch), "--images", str(args.images),
                   "--device", args.device, "--precision", args.precision]
            cmd += ["--channels-last"] * args.channels_last + ["--compile"] * args.compile
            procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(k)]
            while len(list(Path(barrier).glob("ready-*"))) < k:
                if any(p.poll() not in (None, 0) for p in procs):
                    raise SystemExit(f"a training process failed: {cmd}")
                time.sleep(0.05)
            (Path(barrier) / "go").touch()
            spans = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        start, end = max(s["start"] for s in spans), min(s["end"] for s in spans)  # all of them training
        images = sum(s["images"] * max(0.0, end - start) / (s["end"] - s["start"]) for s in spans)
        rate = images / (end - start) if end > start else float("nan")
        base = base or rate
        rows.append({"processes": k, "aggregate_images_per_s": f"{rate:.0f}", "per_process": f"{rate / k:.0f}",
                     "vs_one": f"{rate / base:.2f}"})
    print(f"{args.model}, batch {args.batch}, {args.images} images/epoch, device {args.device}, "
          f"precision {args.precision}, channels_last {args.channels_last}, compile {args.compile}")
    print(table(rows, ["processes", "aggregate_images_per_s", "per_process", "vs_one"]))


def one_of_several(args: argparse.Namespace) -> None:
    """A child of --share: train, then print the timed epochs' window and image count as JSON."""
    timer = EpochTimer(Path(args.one))
    lightning_run(args, args.images, timer)
    start, end = timer.spans[1][0], timer.spans[-1][1]  # the first epoch is warm-up
    print(json.dumps({"start": start, "end": end, "images": args.images * (len(timer.spans) - 1)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32-true", help="32-true or bf16-mixed (GPU)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (both loops)")
    parser.add_argument("--share", help="K1,K2,...: K processes training at once on one device (e.g. 1,2,4)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one process of --share
    args = parser.parse_args()
    if args.one:
        return one_of_several(args)
    print(f"machine: {machine()}; device {args.device}; torch {torch.__version__}")
    if args.share:
        return shared_device(args, [int(k) for k in args.share.split(",")])
    hand = hand_loop(args, args.images)
    light = lightning_run(args, args.images)
    hand2 = hand_loop(args, args.images)  # again, so drift on a shared machine shows
    base = (hand + hand2) / 2
    rows = [{"loop": "hand-written PyTorch", "images_per_s": f"{base:.0f}", "ratio": "1.00"},
            {"loop": "decon_cnn (Lightning + callback + logger)", "images_per_s": f"{light:.0f}",
             "ratio": f"{light / base:.2f}"}]
    print(f"{args.model}, batch {args.batch}, {args.images} images/epoch, {args.epochs - 1} timed epochs, "
          f"precision {args.precision}, channels_last {args.channels_last}, compile {args.compile}")
    print(table(rows, ["loop", "images_per_s", "ratio"]))


if __name__ == "__main__":
    main()
