"""Image grids of the renderer during training: masked source | reference | mask (| mouth sketch) | output | ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torchvision.utils import make_grid, save_image

from lightning_modules.tracking.run_logger import artifact_folder, log_artifact


def renderer_grid(batch: dict[str, torch.Tensor], output: torch.Tensor, out: Path, rows: int = 4, sketch: torch.Tensor | None = None) -> Path:
    """One row per example: masked source, reference, mask, the mouth sketch (if given; lips red, open mouth
    green), output, ground truth; written as PNG."""
    n = min(rows, len(output))
    src, mask = batch["source"][:n].float(), batch["mask"][:n].float()
    as_rgb = lambda x: x * 2 - 1  # noqa: E731  [0, 1] -> the images' [-1, 1]
    columns = [src * (1 - mask), batch["reference"][:n].float(), as_rgb(mask).expand(-1, 3, -1, -1)]
    if sketch is not None:
        columns.append(as_rgb(torch.cat([sketch[:n, :2].float(), torch.zeros_like(sketch[:n, :1])], 1)))
    columns += [output[:n].float(), src]
    tiles = torch.stack(columns, 1).flatten(0, 1)  # row-major: example by example
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(make_grid((tiles.clamp(-1, 1) + 1) / 2, nrow=len(columns), padding=2), out)
    return out


class RendererImageGrid(Callback):
    """Every ``every_n_steps`` iterations (and at the end of training), a grid of the current training batch.

    The PNG goes next to the run's checkpoints (``grids/``) and into the MLflow run (``images/``).

    Args:
        every_n_steps: iterations between grids.
        rows: examples per grid.
    """

    def __init__(self, every_n_steps: int = 500, rows: int = 4) -> None:
        self.every_n_steps, self.rows = every_n_steps, rows
        self._last: dict[str, torch.Tensor] | None = None

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict[str, torch.Tensor]) -> None:
        step = trainer.global_step
        was_training = pl_module.training
        pl_module.eval()
        rows = {k: v[: self.rows] if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.no_grad():
            output = pl_module(rows)
        pl_module.train(was_training)
        path = renderer_grid(batch, output, artifact_folder(trainer) / "grids" / f"step{step:07d}.png", self.rows, pl_module.sketch(rows))
        log_artifact(trainer, path, "images")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        self._last = batch
        if trainer.global_step % self.every_n_steps == 0:
            self._write(trainer, pl_module, batch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self._last is not None and trainer.global_step % self.every_n_steps:
            self._write(trainer, pl_module, self._last)
