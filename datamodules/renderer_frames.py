"""Renderer examples from one decoded clip: source frame, reference frame, coefficients and masks."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.face_masks import FaceMasker


def to_images(frames: np.ndarray, size: int) -> torch.Tensor:
    """uint8 frames [K, H, W, 3] -> float [K, 3, size, size] in [-1, 1] (antialiased resize when needed)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp_(-1, 1)
    return x


def scale_camera(camera: np.ndarray, crop_size: int, size: int) -> np.ndarray:
    """Camera (px per mm, cx, cy) of a ``crop_size`` crop rescaled to a ``size`` crop."""
    return camera * np.float32(size / crop_size)


def valid_frames(sample: dict[str, Any]) -> np.ndarray:
    """Indices of the frames whose face was seen (interpolated frames are no training targets)."""
    return np.flatnonzero(sample["coeffs"]["valid"])


def colour_jitter(source: torch.Tensor, reference: torch.Tensor, strength: float, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Source and reference [K, 3, S, S] in [-1, 1] recoloured by one random per-channel gain and offset per example.

    Both images of an example get the same change, so the colours of the redrawn lower face can only
    be learnt from the reference and the visible upper face, not remembered per training identity.
    Gains are exp(U(-strength, strength)), offsets U(-strength, strength) / 2 in [0, 1] units.
    """
    k = source.shape[0]
    gain = torch.from_numpy(np.exp(rng.uniform(-strength, strength, (k, 3, 1, 1))).astype(np.float32))
    offset = torch.from_numpy(rng.uniform(-strength / 2, strength / 2, (k, 3, 1, 1)).astype(np.float32))
    recolour = lambda x: ((x + 1) / 2 * gain + offset).clamp(0, 1) * 2 - 1  # noqa: E731
    return recolour(source), recolour(reference)


def frame_examples(
    sample: dict[str, Any], sources: np.ndarray, references: np.ndarray, size: int, masker: FaceMasker,
    jitter: float = 0.0, rng: np.random.Generator | None = None,
) -> list[dict[str, Any]]:
    """One example per source index; the masks are computed here, from the source frame's coefficients.

    Keys: ``source`` (the ground-truth frame, which the model masks itself), ``reference``, ``mask``
    (1 = redraw), ``teeth``, ``shape``/``exp``/``pose``/``camera`` of the source frame, ``key``, ``frame``.
    ``jitter`` > 0 recolours source and reference together (:func:`colour_jitter`, draws from ``rng``).
    """
    c = sample["coeffs"]
    crop = int(sample["meta"]["crop_size"])
    coeffs = {k: torch.from_numpy(c[k][sources].astype(np.float32)) for k in ("shape", "exp", "pose")}
    coeffs["camera"] = torch.from_numpy(scale_camera(c["camera"][sources].astype(np.float32), crop, size))
    mask, teeth = masker(coeffs["shape"], coeffs["exp"], coeffs["pose"], coeffs["camera"], size)
    src, ref = to_images(sample["frames"][sources], size), to_images(sample["frames"][references], size)
    if jitter > 0:
        if rng is None:  # the draws must come from the loader's seeded generator, or runs stop being repeatable
            raise ValueError("colour jitter needs the caller's random generator")
        src, ref = colour_jitter(src, ref, jitter, rng)
    return [
        {"source": src[i], "reference": ref[i], "mask": mask[i], "teeth": teeth[i], **{k: v[i] for k, v in coeffs.items()}, "key": sample["__key__"], "frame": int(t)}
        for i, t in enumerate(sources)
    ]
