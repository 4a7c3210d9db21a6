"""A2E inference over audio of any length: overlapping windows, cross-faded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from lightning_modules.a2e.transformer import A2ETransformer


def window_starts(num_frames: int, window: int, overlap: int) -> list[int]:
    """Window starts covering [0, num_frames): a hop of window - overlap, the last window flush with the end."""
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window); got overlap={overlap}, window={window}")
    if num_frames <= window:
        return [0]
    hop = window - overlap
    starts = list(range(0, num_frames - window, hop))
    return starts + [num_frames - window]


def blend_weights(window: int, overlap: int) -> torch.Tensor:
    """Per-frame weights [window]: linear ramps over the overlap at both ends, 1 in between."""
    i = torch.arange(window, dtype=torch.float32)
    ramp = (torch.minimum(i + 1, window - i) / (overlap + 1)).clamp(max=1.0)
    return ramp


@torch.no_grad()
def predict_expressions(
    net: A2ETransformer, audio: torch.Tensor, shape: torch.Tensor, history: torch.Tensor, window: int = 16, overlap: int = 8, max_batch: int = 256
) -> torch.Tensor:
    """β̂ [T, exp_dim] for every video frame of one clip.

    Args:
        net: the trained transformer (put in eval mode by the caller).
        audio: features [2T, audio_dim] (rows 2t, 2t + 1 belong to frame t).
        shape: α_1 [shape_dim], the reference video's first frame.
        history: β [N, exp_dim] taken from the reference video's frames.
        window: frames per window, as trained.
        overlap: frames shared by neighbouring windows, cross-faded linearly.
        max_batch: windows per forward pass.
    """
    t = audio.shape[0] // 2
    if t == 0:
        return audio.new_zeros(0, net.head.out_features)
    if audio.shape[0] < 2 * window:  # shorter than one window: zero-pad the audio, keep the first t frames
        audio = torch.cat([audio, audio.new_zeros(2 * window - audio.shape[0], audio.shape[1])])
    starts = window_starts(t, window, overlap)
    chunks = torch.stack([audio[2 * s : 2 * (s + window)] for s in starts])
    preds = torch.cat([
        net(c, shape.expand(len(c), -1), history.expand(len(c), -1, -1)) for c in chunks.split(max_batch)
    ]).float()
    weights = blend_weights(window, overlap).to(preds.device)
    total = preds.new_zeros(max(t, window), preds.shape[-1])
    norm = preds.new_zeros(max(t, window), 1)
    for s, p in zip(starts, preds):
        total[s : s + window] += weights[:, None] * p
        norm[s : s + window] += weights[:, None]
    return (total / norm)[:t]


class ExpressionWriter(BasePredictionWriter):
    """``predict`` output: one ``<key>.npz`` per clip with ``exp_pred`` (β̂) and ``exp`` (the fitted β), [T, De].

    Args:
        output_dir: folder for the files (created).
    """

    def __init__(self, output_dir: str = "predictions/a2e") -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:  # noqa: ANN001
        self.output_dir.mkdir(parents=True, exist_ok=True)
        np.savez(self.output_dir / f"{prediction['key']}.npz", exp_pred=prediction["exp_pred"].numpy(), exp=prediction["exp"].numpy())
