"""``python -m lightning_modules.a2e.bench``: A2E transformer inference latency and throughput.

One 16-frame window (batch 1: the streaming case, paper: 2.3 ms on a V100) and batches of
windows (offline dubbing), on CPU (all cores and one thread) and on CUDA when present
(fp32 and bf16 autocast). The ablation variants run in the same process and are reported as
ratios to the default model.
"""

from __future__ import annotations

import argparse
import os
from contextlib import nullcontext

import torch

from lightning_modules.a2e.transformer import A2ETransformer, parameter_count
from preprocess.bench import _cpu_name, _timed, format_table

WINDOW, AUDIO_DIM, HISTORY = 16, 384, 16


def _case(net: A2ETransformer, batch: int, device: str, bf16: bool, repeats: int) -> float:
    """Median seconds per forward pass."""
    net = net.to(device).eval()
    audio = torch.randn(batch, 2 * WINDOW, AUDIO_DIM, device=device)
    shape, hist = torch.randn(batch, 9, device=device), torch.randn(batch, HISTORY, 64, device=device)
    amp = torch.autocast(device, dtype=torch.bfloat16) if bf16 else nullcontext()

    def call() -> None:
        with torch.inference_mode(), amp:
            net(audio, shape, hist)
        if device == "cuda":
            torch.cuda.synchronize()

    return _timed(call, repeats)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per case (median reported)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256], help="windows per forward pass")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    variants = {
        "default": A2ETransformer(),
        "no priors": A2ETransformer(use_shape=False, use_history=False),
    }
    setups = [("cpu", os.cpu_count() or 1, False), ("cpu", 1, False)]
    if torch.cuda.is_available():
        setups += [("cuda", 0, False), ("cuda", 0, True)]
    print(f"A2E transformer: {parameter_count(variants['default']) / 1e6:.2f} M parameters (default), window {WINDOW} frames, "
          f"audio {AUDIO_DIM}-d, {HISTORY} history tokens")
    print(f"machine: {_cpu_name()}, {os.cpu_count()} cores" + (f"; GPU: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "; no GPU"))
    header = ["device", "precision", "batch", "model", "ms / call", "windows / s", "vs default"]
    rows = []
    for device, threads, bf16 in setups:
        if device == "cpu":
            torch.set_num_threads(threads)
        dev_name = f"cpu x{threads}" if device == "cpu" else "cuda"
        for batch in args.batches:
            base = None
            for name, net in variants.items():
                t = _case(net, batch, device, bf16, args.repeats if batch < 256 or device == "cuda" else max(3, args.repeats // 4))
                base = base or t
                rows.append([dev_name, "bf16" if bf16 else "fp32", str(batch), name, f"{t * 1e3:.2f}", f"{batch / t:,.0f}", f"{t / base:.2f}x"])
    print(format_table(header, rows))


if __name__ == "__main__":
    main()
