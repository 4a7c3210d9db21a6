"""``python -m lightning_modules.renderer.train_bench``: what the GAN training options cost and save, measured here.

On this machine's CPU, in one run, as ratios (the GPU check measures the rest on a lent device):
  - the generator EMA's overhead per iteration (the CPU real-time renderer at 128 px, batch 8, fp32);
  - the gradient bytes DDP all-reduces per iteration, and the iteration time, with ``ddp`` (one wrapper,
    find_unused_parameters) against ``ddp_networks`` (one per network): 2 gloo processes, counted by a
    communication hook;
  - how far the perceptual loss under bf16 autocast is from fp32's, per frame (real corpus-like crops
    when given shards, else the bundled samples' frames).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

import lightning_modules.ddp_networks  # noqa: F401 - registers the strategy name
from lightning_modules.renderer.bench import EXP_DIM, SHAPE_DIM, training_batches
from lightning_modules.renderer.discriminator import PatchDiscriminator
from lightning_modules.renderer.generator import FIARenderer
from lightning_modules.renderer.loss import PerceptualLoss, RendererLoss
from lightning_modules.renderer.module import RendererModule
from lightning_modules.throughput import fit_rate

PRESET = Path(__file__).resolve().parents[2] / "configs" / "experiment" / "renderer_cpu_realtime.yaml"
SIZE, BATCH = 128, 8


def cpu_realtime_module(**options: object) -> RendererModule:
    """The CPU real-time preset's renderer (0.66 M parameters), EfficientNet-Lite0 perceptual loss, critic on."""
    init = yaml.safe_load(PRESET.read_text())["model"]["init_args"]
    torch.manual_seed(0)
    return RendererModule(FIARenderer(SHAPE_DIM, EXP_DIM, **init["net"]["init_args"]), PatchDiscriminator(**init["discriminator"]["init_args"]),
                          RendererLoss(PerceptualLoss("efficientnet_lite0")), disc_start_step=0, **options)


def ema_overhead(steps: int) -> tuple[float, float]:
    """(images/s without, with EMA 0.999): the same batches, one process."""
    rates = [fit_rate(cpu_realtime_module(**options), training_batches(BATCH, SIZE, steps + 3), BATCH, "cpu", "32-true")[0]
             for options in ({}, {"ema_decay": 0.999})]
    return rates[0], rates[1]


class CountAllReduce(L.Callback):
    """Bytes and calls DDP all-reduces, through a communication hook on every wrapper."""

    def __init__(self) -> None:
        self.bytes = self.calls = 0

    def hook(self, state, bucket):  # noqa: ANN001, ANN201 - DDP checks the annotations against its own classes, which strings are not
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        self.bytes += bucket.buffer().numel() * bucket.buffer().element_size()
        self.calls += 1
        return allreduce_hook(None, bucket)

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        from torch.nn.parallel import DistributedDataParallel

        for wrapper in list(getattr(module, "ddp_wrappers", {}).values()) or [trainer.strategy.model]:
            if isinstance(wrapper, DistributedDataParallel):
                wrapper.register_comm_hook(None, self.hook)


def ddp_worker(strategy: str, steps: int, out: str) -> None:
    """One 2-process run (this process and the one Lightning starts): bytes and seconds per iteration, written by rank 0."""
    counter, timer_start = CountAllReduce(), {}

    class Clock(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
            if trainer.global_step == 2:  # after warm-up
                timer_start["t"], timer_start["bytes"] = time.perf_counter(), counter.bytes

    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[counter, Clock()],
                        use_distributed_sampler=False)
    trainer.fit(cpu_realtime_module(), train_dataloaders=DataLoader(training_batches(BATCH, SIZE, steps), batch_size=None))
    if trainer.is_global_zero:
        timed = steps - 2
        Path(out).write_text(json.dumps({"bytes_per_iteration": (counter.bytes - timer_start["bytes"]) / timed,
                                         "seconds_per_iteration": (time.perf_counter() - timer_start["t"]) / timed}))


def ddp_bytes(steps: int) -> dict[str, dict[str, float]]:
    results = {}
    for strategy in ("ddp_find_unused_parameters_true", "ddp_networks"):
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            subprocess.run([sys.executable, "-m", "lightning_modules.renderer.train_bench", "--ddp-worker", strategy, "--steps", str(steps), "--out", f.name],
                           check=True, capture_output=True, text=True)
            results[strategy] = json.loads(Path(f.name).read_text())
    return results


def perceptual_autocast_gap() -> list[tuple[str, float, float]]:
    """(backbone, mean relative gap of the batch loss, max per frame) of bf16 autocast against fp32, frames from the bundled samples."""
    from datamodules.renderer_frames import to_images
    from preprocess.bench import SAMPLES
    from preprocess.media import iter_frames
    from preprocess.weights import weights_available

    frames = np.stack([f[16:272, 52:308] for p in sorted(SAMPLES.glob("*.mpg")) for f in list(iter_frames(p))[::15]])
    x = to_images(frames, SIZE)
    noisy = (x + 0.05 * torch.randn_like(x, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)  # a near miss, as a good renderer's output
    rows = []
    for backbone in ("efficientnet_lite0", *(("vgg16",) if weights_available("vgg16") else ())):
        loss = PerceptualLoss(backbone)
        with torch.no_grad():
            full = loss(noisy, x, per_sample=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                half = loss(noisy, x, per_sample=True).float()
        rows.append((backbone, float((half.mean() - full.mean()).abs() / full.mean()), float(((half - full).abs() / full).max())))
    return rows


def main(argv: list[str] | None = None) -> None:
    from preprocess.bench import _cpu_name, format_table

    ap = argparse.ArgumentParser(prog="python -m lightning_modules.renderer.train_bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12, help="iterations per case (the first 3 untimed)")
    ap.add_argument("--ddp-worker", help=argparse.SUPPRESS)  # internal: one 2-process run of this strategy
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ddp_worker:
        return ddp_worker(args.ddp_worker, args.steps, args.out)
    torch.set_num_threads(1)
    plain, ema = ema_overhead(args.steps)
    ddp = ddp_bytes(args.steps)
    old, new = ddp["ddp_find_unused_parameters_true"], ddp["ddp_networks"]
    rows = [
        ["EMA 0.999 (one process)", f"{plain:.1f} -> {ema:.1f} images/s", f"{ema / plain:.2f}x"],
        ["all-reduce per iteration, ddp -> ddp_networks (2 gloo)", f"{old['bytes_per_iteration'] / 2**20:.2f} -> {new['bytes_per_iteration'] / 2**20:.2f} MiB",
         f"{new['bytes_per_iteration'] / old['bytes_per_iteration']:.2f}x"],
        ["iteration time, ddp -> ddp_networks (2 gloo)", f"{old['seconds_per_iteration'] * 1e3:.0f} -> {new['seconds_per_iteration'] * 1e3:.0f} ms",
         f"{new['seconds_per_iteration'] / old['seconds_per_iteration']:.2f}x"],
    ]
    rows += [[f"perceptual loss, {b}: bf16 autocast vs fp32", f"batch mean {mean:.2%}, worst frame {worst:.2%}", ""] for b, mean, worst in perceptual_autocast_gap()]
    print(f"GAN training options: the CPU real-time renderer, {SIZE} px, batch {BATCH}, critic on, fp32; {_cpu_name()}, {time.strftime('%Y-%m-%d')}\n")
    print(format_table(["case", "measured", "ratio"], rows))


if __name__ == "__main__":
    main()
