"""Timing helpers shared by the benches and the GPU check: a synchronised call timer with peak memory, and training throughput."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from statistics import median
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_mib(device: str) -> float | None:
    """Peak allocated device memory since the last reset (None on CPU: not tracked)."""
    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def timed_call(fn: Callable[[], Any], device: str, repeats: int, warmup: int = 1) -> tuple[float, float | None]:
    """(median seconds per call, peak MiB) of ``fn`` after ``warmup`` calls (compilation happens there)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    reset_peak(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t)
    return median(times), peak_mib(device)


class _StepTimer(L.Callback):
    """Starts the clock after ``warmup`` batches (cuDNN autotuning, allocator growth, compilation)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.batches = warmup, 0.0, 0

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        synchronize(trainer.strategy.root_device.type)
        self.batches += 1
        if self.batches == self.warmup:
            self.start = time.perf_counter()


def fit_rate(module: L.LightningModule, batches: Sequence[dict[str, torch.Tensor]], items_per_batch: int, device: str,
             precision: str, warmup: int = 3) -> tuple[float, float | None]:
    """(items per second, peak MiB) of real training steps (one epoch over ``batches``, the first ``warmup`` untimed).

    One epoch over a finite list rather than ``max_steps``: a manually optimised GAN counts two
    optimizer steps per batch, so steps would not say how many batches ran.
    """
    if len(batches) <= warmup:
        raise ValueError(f"need more than {warmup} batches, got {len(batches)}")
    timer = _StepTimer(warmup)
    trainer = L.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision=precision, max_epochs=1, logger=False,
                        callbacks=[timer], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0)
    reset_peak(device)
    trainer.fit(module, train_dataloaders=DataLoader(list(batches), batch_size=None))
    seconds = time.perf_counter() - timer.start
    return (timer.batches - warmup) * items_per_batch / seconds, peak_mib(device)
