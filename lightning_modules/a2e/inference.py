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


class ExpressionStream:
    """β̂ frame by frame as audio features arrive: the windowing of :func:`predict_expressions`, incrementally.

    Windows start every hop = ``window − overlap`` frames. At :meth:`finish` the last window is put
    flush with the end, as offline; that window starts after the last hop window run so far, so a
    frame is final once a hop window starting after it has run: at most ``window + hop − 1`` frames
    of audio after it. Any split of the same features into :meth:`push` calls gives the same β̂ (up
    to float rounding of batch sizes).

    Args:
        net: the trained transformer (in eval mode).
        shape: α [shape_dim] of the video; history: β [N, exp_dim] from the video's frames.
        window, overlap: as trained (``window``, ``inference_overlap`` of the A2E module).
        max_batch: windows per forward pass.
    """

    def __init__(self, net: A2ETransformer, shape: torch.Tensor, history: torch.Tensor, window: int = 16, overlap: int = 8, max_batch: int = 256) -> None:
        window_starts(window + 1, window, overlap)  # checks overlap
        self.net, self.shape, self.history = net, shape, history
        self.window, self.hop, self.overlap, self.max_batch = window, window - overlap, overlap, max_batch
        self.weights = blend_weights(window, overlap).to(shape.device)[:, None]
        self.rows = shape.new_zeros(0, 0)  # takes the features' width on the first push
        self.total = shape.new_zeros(0, net.head.out_features)
        self.norm = shape.new_zeros(0, 1)
        self.next_start = 0  # first window not yet run
        self.emitted = 0  # frames already returned

    @property
    def lookahead_frames(self) -> int:
        """Frames of audio after a frame that may be needed before it is final, at most."""
        return self.window + self.hop - 1

    def _run(self, starts: list[int]) -> None:
        if not starts:
            return
        need = 2 * (max(starts) + self.window)
        rows = self.rows if len(self.rows) >= need else torch.cat([self.rows, self.rows.new_zeros(need - len(self.rows), self.rows.shape[1])])
        chunks = torch.stack([rows[2 * s : 2 * (s + self.window)] for s in starts])
        with torch.no_grad():
            preds = torch.cat([
                self.net(c, self.shape.expand(len(c), -1), self.history.expand(len(c), -1, -1)) for c in chunks.split(self.max_batch)
            ]).float()
        end = max(starts) + self.window
        if len(self.total) < end:
            grow = end - len(self.total)
            self.total = torch.cat([self.total, self.total.new_zeros(grow, self.total.shape[1])])
            self.norm = torch.cat([self.norm, self.norm.new_zeros(grow, 1)])
        for s, p in zip(starts, preds):
            self.total[s : s + self.window] += self.weights * p
            self.norm[s : s + self.window] += self.weights

    def _emit(self, upto: int) -> torch.Tensor:
        out = self.total[self.emitted : upto] / self.norm[self.emitted : upto]
        self.emitted = max(self.emitted, upto)
        return out

    def push(self, rows: torch.Tensor) -> torch.Tensor:
        """Append audio feature rows [2k, audio_dim]; β̂ [n, exp_dim] of the frames that became final."""
        rows = rows.to(self.rows)
        self.rows = torch.cat([self.rows, rows]) if len(self.rows) else rows
        starts = []
        while 2 * (self.next_start + self.window) <= len(self.rows):
            starts.append(self.next_start)
            self.next_start += self.hop
        self._run(starts)
        # a flush window at finish() would start after the last hop window run (next_start - hop)
        return self._emit(max(self.emitted, self.next_start - self.hop + 1) if starts or self.next_start else self.emitted)

    def finish(self, num_frames: int) -> torch.Tensor:
        """The audio has ended after ``num_frames`` frames: β̂ of the frames not yet returned."""
        if num_frames == 0:
            return self.total.new_zeros(0, self.total.shape[1])
        starts = [s for s in window_starts(num_frames, self.window, self.overlap) if s >= self.next_start or s % self.hop]
        self.next_start = max(self.next_start, num_frames)
        self._run(starts)
        return self._emit(num_frames)


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
    stream = ExpressionStream(net, shape, history, window, overlap, max_batch)
    t = audio.shape[0] // 2
    return torch.cat([stream.push(audio[: 2 * t]), stream.finish(t)])


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
