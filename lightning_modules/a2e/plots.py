"""Predicted vs true mouth opening over a held-out clip: the plot people look at for lip sync."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from lightning_modules.a2e.inference import predict_expressions
from lightning_modules.tracking.run_logger import artifact_folder, log_artifact
from preprocess.figures import pyplot, save_figure
from preprocess.media import VIDEO_FPS


def mouth_opening_figure(true_mm: np.ndarray, pred_mm: np.ndarray, title: str, out: Path) -> Path:
    plt = pyplot()
    t = np.arange(len(true_mm)) / VIDEO_FPS
    corr = float(np.corrcoef(true_mm, pred_mm)[0, 1]) if len(t) > 1 and true_mm.std() > 0 and pred_mm.std() > 0 else float("nan")
    fig, ax = plt.subplots(figsize=(9, 3))
    ax.plot(t, true_mm, label="true (fitted 3DMM)", color="black")
    ax.plot(t, pred_mm, label="predicted (A2E, sliding windows)", color="tab:red")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("inner-lip opening (mm)")
    ax.set_title(f"{title}   r = {corr:.3f}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out)


@torch.no_grad()
def clip_mouth_opening(module: L.LightningModule, clip: dict) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) inner-lip opening in mm over a whole clip, predicted with sliding windows."""
    fm, device = module.face_model, module.device
    arrays = {k: torch.as_tensor(clip[k], device=device) for k in ("audio", "shape_ref", "history", "shape", "exp")}
    was_training = module.training
    module.eval()
    pred = predict_expressions(module.net, arrays["audio"], arrays["shape_ref"], arrays["history"], module.hparams.window, module.hparams.inference_overlap)
    module.train(was_training)
    true = fm.mouth_opening(fm.vertices(arrays["shape"], arrays["exp"]))
    pred = fm.mouth_opening(fm.vertices(arrays["shape"], pred))
    return true.cpu().numpy(), pred.cpu().numpy()


class MouthOpeningPlot(Callback):
    """At the end of training, plot predicted vs true mouth opening of one held-out clip.

    The PNG goes next to the run's checkpoints and into the MLflow run (``plots/``).

    Args:
        split: the split the clip comes from.
        index: which clip of that split.
    """

    def __init__(self, split: str = "val", index: int = 0) -> None:
        self.split, self.index = split, index

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.datamodule is None or not hasattr(trainer.datamodule, "example_clip"):
            return
        clip = trainer.datamodule.example_clip(self.split, self.index)
        true, pred = clip_mouth_opening(pl_module, clip)
        name = f"mouth_opening_{clip['key']}_step{trainer.global_step}.png"
        path = mouth_opening_figure(true, pred, f"{clip['key']} ({self.split}), step {trainer.global_step}", artifact_folder(trainer) / name)
        log_artifact(trainer, path, "plots")
