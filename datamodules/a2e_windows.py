"""A2E training examples cut from one decoded clip (ARCHITECTURE §1, shard contract §3).

A window covers T consecutive video frames and the 2T audio-feature rows that belong to them
(rows 2t and 2t+1 <-> frame t). Clips shorter than T give one window padded with zeros whose
``mask`` is False on the padding, so the loss and the metrics ignore it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from preprocess.audio_features import ROWS_PER_FRAME


def clip_arrays(sample: dict[str, Any]) -> dict[str, np.ndarray]:
    """The float32 arrays a window needs, from a sample decoded by ``preprocess.schema.decode_sample``."""
    c = sample["coeffs"]
    return {
        "audio": sample["audio_feats"].astype(np.float32),
        "exp": c["exp"].astype(np.float32),
        "pose": c["pose"].astype(np.float32),
        "shape": c["shape"].astype(np.float32),
        "valid": c["valid"].astype(bool),
    }


def history_frames(num_frames: int, start: int, window: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``count`` historical frames drawn from the clip outside [start, start + window).

    Frames outside the window never leak the targets; a clip with no frame outside the window
    (as long as one window, or shorter) draws from the whole clip. With replacement only when the
    pool is smaller than ``count``.
    """
    pool = np.concatenate([np.arange(0, start), np.arange(start + window, num_frames)])
    if len(pool) == 0:
        pool = np.arange(num_frames)
    return rng.choice(pool, size=count, replace=len(pool) < count)


def make_window(clip: dict[str, np.ndarray], start: int, window: int, num_history: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One training example: frames [start, start + window) of ``clip`` (see module docstring)."""
    n = len(clip["exp"])
    stop = min(start + window, n)
    pad = window - (stop - start)

    def frames(a: np.ndarray) -> np.ndarray:
        part = a[start:stop]
        return np.concatenate([part, np.zeros((pad, *a.shape[1:]), a.dtype)]) if pad else part

    rows = clip["audio"][ROWS_PER_FRAME * start : ROWS_PER_FRAME * stop]
    if pad:
        rows = np.concatenate([rows, np.zeros((ROWS_PER_FRAME * pad, rows.shape[1]), rows.dtype)])
    valid = clip["valid"]
    return {
        "audio": rows,
        "exp": frames(clip["exp"]),
        "pose": frames(clip["pose"]),
        "shape": frames(clip["shape"]),
        "shape_ref": clip["shape"][0],  # α_1: the clip's first frame
        "history": clip["exp"][history_frames(n, start, window, num_history, rng)],
        "mask": frames(valid),  # padding is False too
        # the trivial predictor's answer (every frame = the clip's mean expression), for comparison
        "exp_mean": clip["exp"][valid].mean(0) if valid.any() else clip["exp"].mean(0),
        "start": np.int64(start),
    }


def random_windows(clip: dict[str, np.ndarray], window: int, num_history: int, rng: np.random.Generator) -> Iterator[dict[str, np.ndarray]]:
    """Training: ceil(n / window) windows at random starts, so a clip is covered about once per pass."""
    n = len(clip["exp"])
    for _ in range(max(1, -(-n // window))):
        yield make_window(clip, int(rng.integers(0, max(1, n - window + 1))), window, num_history, rng)


def fixed_windows(clip: dict[str, np.ndarray], window: int, num_history: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
    """Evaluation: consecutive non-overlapping windows from frame 0 (the last one padded), fixed history draws."""
    rng = np.random.default_rng(seed)
    for start in range(0, len(clip["exp"]), window):
        yield make_window(clip, start, window, num_history, rng)
