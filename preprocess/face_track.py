"""One face track per clip, and the smoothed square crop that follows it.

Coordinates are continuous pixels (pixel i spans [i, i+1)), the convention of
MediaPipe's normalised landmarks, so the crop transform is a plain scale + shift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from preprocess.errors import ClipError
from preprocess.landmarks import NUM_MESH_POINTS


@dataclass
class TrackConfig:
    """How the face track is chosen and what happens when it is lost."""

    max_gap: int = 5
    """Frames in a row without the face that are bridged by interpolation (marked invalid)."""
    on_face_lost: Literal["split", "drop"] = "split"
    """A longer gap: ``split`` the clip into sub-clips around it, or ``drop`` the clip."""
    multi_face: Literal["main", "skip"] = "main"
    """Several faces: keep the ``main`` one (largest, most central; others counted in meta) or ``skip`` the clip."""
    min_iou: float = 0.3
    """Box overlap with the previous frame needed to continue the track."""


@dataclass
class CropConfig:
    """Square crop around the face with room for chin and neck."""

    size: int = 256
    """Output side in pixels."""
    scale: float = 1.5
    """Crop side / larger side of the face-mesh bounding box."""
    shift_down: float = 0.1
    """Crop centre moved down by this fraction of the face height (chin and neck in view)."""
    sigma_center: float = 2.0
    """Temporal Gaussian smoothing of the crop centre, in frames (removes jitter)."""
    sigma_size: float = 12.0
    """Temporal Gaussian smoothing of the crop size, in frames."""


@dataclass
class Segment:
    """A run of frames [start, end) of one clip with the face tracked."""

    start: int
    end: int
    landmarks: np.ndarray  # [n, 478, 3] source pixels; interpolated where not valid
    valid: np.ndarray  # [n] bool: the face was really seen in this frame


@dataclass
class Track:
    segments: list[Segment]
    max_faces: int = 0
    frames_with_other_faces: int = 0


def _box(lmk: np.ndarray) -> np.ndarray:
    mesh = lmk[:NUM_MESH_POINTS, :2]
    return np.concatenate([mesh.min(0), mesh.max(0)])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _main_face(faces: list[np.ndarray], width: int, height: int) -> int:
    """Largest, most central face: size discounted by distance from the image centre."""
    centre = np.array([width / 2, height / 2])
    diag = float(np.hypot(width, height))

    def score(f: np.ndarray) -> float:
        b = _box(f)
        size = np.sqrt(max((b[2] - b[0]) * (b[3] - b[1]), 1e-6))
        dist = np.linalg.norm((b[:2] + b[2:]) / 2 - centre) / diag
        return float(size / (1.0 + 4.0 * dist))

    return int(np.argmax([score(f) for f in faces]))


def track_face(faces_per_frame: list[list[np.ndarray]], width: int, height: int, cfg: TrackConfig) -> Track:
    """Follow the main face through a clip; bridge short gaps, split or drop on long ones."""
    n = len(faces_per_frame)
    chosen: list[np.ndarray | None] = [None] * n
    prev_box: np.ndarray | None = None
    since_seen = 0
    track = Track(segments=[])
    for t, faces in enumerate(faces_per_frame):
        track.max_faces = max(track.max_faces, len(faces))
        track.frames_with_other_faces += int(len(faces) > 1)
        if not faces:
            since_seen += 1
            continue
        if prev_box is None or since_seen > cfg.max_gap:
            k = _main_face(faces, width, height)  # (re)acquire
        else:
            ious = [_iou(prev_box, _box(f)) for f in faces]
            k = int(np.argmax(ious))
            if ious[k] < cfg.min_iou:
                since_seen += 1
                continue
        chosen[t] = faces[k]
        prev_box = _box(faces[k])
        since_seen = 0

    if cfg.multi_face == "skip" and track.frames_with_other_faces > 0.1 * n:
        raise ClipError("face", f"{track.max_faces} faces in {track.frames_with_other_faces}/{n} frames (multi_face=skip)")
    seen = np.array([c is not None for c in chosen])
    if not seen.any():
        raise ClipError("face", "no face detected in any frame")

    # runs of seen frames, merged across gaps of at most max_gap frames
    idx = np.flatnonzero(seen)
    runs: list[list[int]] = [[int(idx[0]), int(idx[0])]]
    for t in idx[1:]:
        if t - runs[-1][1] - 1 <= cfg.max_gap:
            runs[-1][1] = int(t)
        else:
            runs.append([int(t), int(t)])
    lost = n - sum(e - s + 1 for s, e in runs)
    if cfg.on_face_lost == "drop" and (len(runs) > 1 or runs[0][0] > cfg.max_gap or n - 1 - runs[0][1] > cfg.max_gap):
        raise ClipError("face", f"face lost for {lost} of {n} frames (on_face_lost=drop)")
    for s, e in runs:
        valid = seen[s : e + 1].copy()
        lmk = np.stack([c if c is not None else np.zeros_like(chosen[s]) for c in chosen[s : e + 1]])
        if not valid.all():
            # linear interpolation of every coordinate over the bridged frames
            tt = np.arange(len(valid))
            flat = lmk.reshape(len(valid), -1)
            for j in range(flat.shape[1]):
                flat[~valid, j] = np.interp(tt[~valid], tt[valid], flat[valid, j])
        track.segments.append(Segment(s, e + 1, lmk, valid))
    return track


def crop_boxes(landmarks: np.ndarray, cfg: CropConfig) -> np.ndarray:
    """Smoothed square crop boxes [T, 3] = (x0, y0, side) in source pixels, side an integer."""
    mesh = landmarks[:, :NUM_MESH_POINTS, :2]
    lo, hi = mesh.min(1), mesh.max(1)
    wh = hi - lo
    centre = (lo + hi) / 2 + np.stack([np.zeros(len(wh)), cfg.shift_down * wh[:, 1]], 1)
    side = cfg.scale * wh.max(1)
    if len(side) > 1:
        centre = gaussian_filter1d(centre, cfg.sigma_center, axis=0, mode="nearest")
        side = gaussian_filter1d(side, cfg.sigma_size, mode="nearest")
    side = np.maximum(np.round(side), 8)
    x0y0 = np.round(centre - side[:, None] / 2)
    return np.concatenate([x0y0, side[:, None]], 1).astype(np.float64)


def crop_matrix(box: np.ndarray, out: int) -> np.ndarray:
    """2x3 affine from source pixels to crop pixels for one box (x0, y0, side)."""
    k = out / box[2]
    return np.array([[k, 0.0, -k * box[0]], [0.0, k, -k * box[1]]], dtype=np.float32)


def apply_crop(frame: np.ndarray, box: np.ndarray, out: int) -> np.ndarray:
    """Cut the box out of the frame (black outside the image) and resize to out x out."""
    x0, y0, side = (int(v) for v in box)
    h, w = frame.shape[:2]
    patch = np.zeros((side, side, 3), dtype=frame.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if sx1 > sx0 and sy1 > sy0:
        patch[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = frame[sy0:sy1, sx0:sx1]
    interp = cv2.INTER_AREA if side > out else cv2.INTER_LINEAR
    return cv2.resize(patch, (out, out), interpolation=interp)
