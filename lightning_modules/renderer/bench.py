"""``python -m lightning_modules.renderer.bench``: FIA renderer inference and training throughput.

Inference at 256×256 (paper: 30.8 ms per frame on a V100): latency at batch 1 and throughput at
batch 32, fp32 and bf16 autocast, eager and ``torch.compile``, on CPU and on CUDA when present;
the Table 7 variants (1 and 3 residual blocks) as ratios to the default in the same run. On a
GPU also the training step (generator + critic + perceptual loss, bf16-mixed, through
Lightning) in images per second.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml

from lightning_modules.renderer.discriminator import PatchDiscriminator
from lightning_modules.renderer.generator import FIARenderer
from lightning_modules.renderer.loss import PerceptualLoss, RendererLoss
from lightning_modules.renderer.module import RendererModule
from lightning_modules.throughput import fit_rate
from preprocess.bench import _cpu_name, _timed, format_table

SHAPE_DIM, EXP_DIM = 9, 64  # the shipped face model's widths
DEMO_PRESET = Path(__file__).resolve().parents[2] / "configs" / "experiment" / "renderer_demo.yaml"


def _inputs(batch: int, size: int, device: str) -> tuple[torch.Tensor, ...]:
    x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    mask = torch.zeros(batch, 1, size, size, device=device)
    mask[..., size // 2 :, :] = 1
    return x * (1 - mask), mask, x, torch.randn(batch, SHAPE_DIM + EXP_DIM + 6, device=device)


def _inference(net: torch.nn.Module, batch: int, size: int, device: str, bf16: bool, repeats: int) -> float:
    """Median seconds per forward pass (the first calls, compilation included, are warm-up)."""
    args = _inputs(batch, size, device)
    amp = torch.autocast(device, dtype=torch.bfloat16) if bf16 else nullcontext()

    def call() -> None:
        with torch.inference_mode(), amp:
            net(*args)
        if device == "cuda":
            torch.cuda.synchronize()

    call()
    seconds = _timed(call, repeats)
    print(f"  {device} {'bf16' if bf16 else 'fp32'} batch {batch}: {seconds * 1e3:,.1f} ms", file=sys.stderr, flush=True)  # progress: CPU cases take minutes
    return seconds


def training_batches(batch: int, size: int, count: int) -> list[dict[str, torch.Tensor]]:
    """``count`` renderer training batches of random frames (speed does not depend on the content)."""
    data = [dict(zip(("source", "mask", "reference"), _inputs(batch, size, "cpu")[:3])) for _ in range(min(count, 4))]
    for d in data:
        d |= {"teeth": d["mask"], "shape": torch.zeros(batch, SHAPE_DIM), "exp": torch.zeros(batch, EXP_DIM), "pose": torch.zeros(batch, 6)}
    return [data[i % len(data)] for i in range(count)]


def paper_size_module(perceptual: PerceptualLoss) -> RendererModule:
    """The paper-size renderer (blocks=2) with the default critic, the critic on from the first step."""
    return RendererModule(FIARenderer(SHAPE_DIM, EXP_DIM), PatchDiscriminator(), RendererLoss(perceptual), disc_start_step=0)


def _training(batch: int, size: int, steps: int, device: str, module: RendererModule | None = None, precision: str = "bf16-mixed") -> float:
    """Images per second of full GAN training steps (critic on); default the paper-size renderer in bf16-mixed."""
    module = module or paper_size_module(PerceptualLoss("vgg16"))
    return fit_rate(module, training_batches(batch, size, steps + 3), batch, device, precision, warmup=3)[0]


def perceptual_backbones(steps: int) -> list[list[str]]:
    """CPU fp32 training steps of the demo preset's renderer with each perceptual backbone, in one run; ratio to EfficientNet-Lite0."""
    preset = yaml.safe_load(DEMO_PRESET.read_text())
    model, data = preset["model"]["init_args"], preset["data"]["init_args"]
    size, batch = data["image_size"], data["batch_size"]
    rows, base = [], None
    for backbone in ("efficientnet_lite0", "vgg16"):
        torch.manual_seed(0)
        module = RendererModule(
            FIARenderer(SHAPE_DIM, EXP_DIM, **model["net"]["init_args"]), PatchDiscriminator(**model["discriminator"]["init_args"]),
            RendererLoss(PerceptualLoss(backbone)), disc_start_step=0,
        )
        ips = _training(batch, size, steps, "cpu", module, precision="32-true")
        base = base or ips
        print(f"  cpu training step, perceptual {backbone}: {ips:,.1f} images/s", file=sys.stderr, flush=True)
        rows.append([backbone, f"{size}px, batch {batch}", f"{ips:,.1f}", f"{1e3 * batch / ips:,.0f}", f"{base / ips:.2f}x"])
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="image side")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="frames per forward pass")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per case (default: 20 on CUDA, 3 on CPU, 1 for CPU batches > 1)")
    ap.add_argument("--cpu-precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32"],
                    help="CPU autocast precisions (default fp32: bf16 on a CPU without bf16 instructions is emulated, minutes per "
                         "256-px call); CUDA always runs fp32 and bf16")
    ap.add_argument("--cpu-compile", action="store_true", help="add torch.compile rows on the CPU too (compiling takes minutes there)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows everywhere")
    ap.add_argument("--train-steps", type=int, default=20, help="timed training steps (CUDA only)")
    ap.add_argument("--perceptual-steps", type=int, default=10, help="timed CPU training steps of the demo preset per perceptual backbone (0 = skip)")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    nets = {b: FIARenderer(SHAPE_DIM, EXP_DIM, blocks=b) for b in (2, 1, 3)}
    params = {b: sum(p.numel() for p in n.parameters()) / 1e6 for b, n in nets.items()}
    print(f"FIA renderer at {args.size}x{args.size}: {params[2]:.2f} M parameters (blocks=2; paper 69.24 M), "
          f"blocks=1 {params[1]:.2f} M (52.53), blocks=3 {params[3]:.2f} M (85.96)")
    print(f"machine: {_cpu_name()}, {os.cpu_count()} cores" + (f"; GPU: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "; no GPU"))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        eager = {b: n.to(device).eval() for b, n in nets.items()}
        compile_here = not args.no_compile and (device == "cuda" or args.cpu_compile)
        modes = [("eager", eager[2])] + ([("compile", torch.compile(eager[2]))] if compile_here else [])
        precisions = ["fp32", "bf16"] if device == "cuda" else args.cpu_precisions
        for batch in args.batches:
            repeats = args.repeats or (20 if device == "cuda" else 3 if batch == 1 else 1)
            times = {}
            for bf16 in (p == "bf16" for p in precisions):
                for mode, net in modes:
                    t = times[bf16, mode] = _inference(net, batch, args.size, device, bf16, repeats)
                    rows.append([device, "bf16" if bf16 else "fp32", mode, str(batch), "blocks=2", f"{t * 1e3:,.1f}", f"{t * 1e3 / batch:,.1f}", f"{batch / t:,.1f}", "1.00x"])
            if batch == 1 and (False, "eager") in times:  # Table 7 variants against the fp32 eager blocks=2 row above
                base = times[False, "eager"]
                for b in (1, 3):
                    t = _inference(eager[b], 1, args.size, device, False, repeats)
                    rows.append([device, "fp32", "eager", "1", f"blocks={b}", f"{t * 1e3:,.1f}", f"{t * 1e3:,.1f}", f"{1 / t:,.1f}", f"{t / base:.2f}x"])
    print(format_table(["device", "precision", "mode", "batch", "model", "ms / call", "ms / frame", "frames / s", "vs blocks=2"], rows))
    if args.perceptual_steps:
        print(f"\nperceptual loss backbone, CPU fp32 GAN training step of {DEMO_PRESET.name}'s renderer ({args.perceptual_steps} steps each):")
        print(format_table(["backbone", "input", "images / s", "ms / step", "step time vs efficientnet_lite0"], perceptual_backbones(args.perceptual_steps)))
    if torch.cuda.is_available():
        for batch in (8, 16):
            print(f"training step, cuda bf16-mixed, batch {batch} at {args.size}px: {_training(batch, args.size, args.train_steps, 'cuda'):,.1f} images/s")


if __name__ == "__main__":
    main()
