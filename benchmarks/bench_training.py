"""Training-step throughput of decon_cnn (Lightning + DrExpMetricsCallback + StructuredLogger)
against a hand-written PyTorch loop on the same model, data, batch size and machine.

Both train the same model for the same epochs; the first epoch is warm-up and not timed.

    python -m benchmarks.bench_training [--model small_cnn] [--epochs 4] [--device cpu|cuda]
    python -m benchmarks.bench_training --model resnet18_cifar --device cuda --precision bf16-mixed \
        --channels-last [--compile] --batch 512 --images 50000

Both loops do the same work: no gradient clipping, no validation; decon_cnn keeps its per-epoch
summary, metrics logger and sanity checks, which are part of what it costs.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time

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
    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t0)


def lightning_run(args: argparse.Namespace, n_images: int) -> float:
    accelerator = "cpu" if args.device == "cpu" else "gpu"
    config = compose_one("exp_configs", "quickstart", [
        f"model={args.model}", f"trainer.max_epochs={args.epochs}", f"data.batch_size={args.batch}",
        f"data.synthetic.num_train={n_images}", "data.synthetic.image_size=32", "+trainer.limit_val_batches=0",
        "lr_scheduler=none", f"trainer.accelerator={accelerator}", "data.num_workers=0", "trainer.gradient_clip_val=null",
        f"trainer.precision={args.precision}", f"channels_last={str(args.channels_last).lower()}",
        f"compile={str(args.compile).lower()}", "test=false"]).config
    config.pop("_target_")
    timer = EpochTimer()
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
    args = parser.parse_args()
    print(f"machine: {machine()}; device {args.device}; torch {torch.__version__}")
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
