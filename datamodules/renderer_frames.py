"""Renderer examples: what the loader sends (uint8 crops and coefficients) and what the device makes of them.

The loader process only decodes the frames an example uses and indexes the coefficients; resizing, colour
jitter, the region and teeth masks (and the module's mouth sketch) are batched tensor work, done where
the batch lands (:func:`finish_batch`, the datamodule's ``on_after_batch_transfer``): on a GPU it costs
well under a millisecond per batch, where on the loader's CPU it cost more than the decode.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.face_masks import FaceMasker

COEFFS = ("shape", "exp", "pose", "camera")
IMAGES = ("source", "reference", "partner")
"""uint8 [3, S, S] crops in a loader item: the frame, the identity reference, and (evaluation) the partner frame
whose β the mouth-response metric swaps in."""


def unit_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images [K, 3, H, W] -> float [K, 3, size, size] in [-1, 1] (antialiased resize when needed)."""
    x = x.float().div_(127.5).sub_(1)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp_(-1, 1)
    return x


def to_images(frames: np.ndarray, size: int) -> torch.Tensor:
    """uint8 frames [K, H, W, 3] -> float [K, 3, size, size] in [-1, 1] (see :func:`unit_images`)."""
    return unit_images(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2), size)


def scale_camera(camera: np.ndarray | torch.Tensor, crop_size: int, size: int) -> np.ndarray | torch.Tensor:
    """Camera (px per mm, cx, cy) of a ``crop_size`` crop rescaled to a ``size`` crop."""
    return camera * (size / crop_size)


def valid_frames(sample: dict[str, Any]) -> np.ndarray:
    """Indices of the frames whose face was seen (interpolated frames are no training targets)."""
    return np.flatnonzero(sample["coeffs"]["valid"])


def jitter_draws(count: int, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Per example one colour change [count, 2, 3]: gains exp(U(±strength)) and offsets U(±strength/2) per channel."""
    gain = np.exp(rng.uniform(-strength, strength, (count, 3)))
    offset = rng.uniform(-strength / 2, strength / 2, (count, 3))
    return np.stack([gain, offset], 1).astype(np.float32)


def colour_jitter(images: torch.Tensor, jitter: torch.Tensor) -> torch.Tensor:
    """Images [K, 3, S, S] in [-1, 1] recoloured by each example's gain and offset (``jitter`` [K, 2, 3], offsets in [0, 1] units).

    Source and reference of an example get the same change, so the colours of the redrawn lower face can only
    be learnt from the reference and the visible upper face, not remembered per training identity.
    """
    gain, offset = jitter[:, 0, :, None, None], jitter[:, 1, :, None, None]
    return ((images + 1) / 2 * gain + offset).clamp(0, 1) * 2 - 1


def loader_items(sample: dict[str, Any], frames: dict[int, np.ndarray], **index: np.ndarray) -> list[dict[str, Any]]:
    """One loader item per entry of ``index["source"]``: the uint8 crops named in ``index`` (source, reference,
    partner: frame numbers decoded into ``frames``) and the coefficients of the source (and partner) frame."""
    c, n = sample["coeffs"], len(index["source"])
    crop = lambda t: torch.from_numpy(frames[int(t)]).permute(2, 0, 1)  # noqa: E731  a view; the collate copies
    coeff = lambda name, t: torch.from_numpy(np.asarray(c[name][t], np.float32))  # noqa: E731
    items = []
    for i in range(n):
        item: dict[str, Any] = {k: crop(v[i]) for k, v in index.items()}
        item |= {k: coeff(k, index["source"][i]) for k in COEFFS}
        if "partner" in index:
            item |= {f"partner_{k}": coeff(k, index["partner"][i]) for k in COEFFS}
        item |= {"key": sample["__key__"], "frame": int(index["source"][i])}
        items.append(item)
    return items


@torch.no_grad()
def finish_batch(batch: dict[str, Any], size: int, masker: FaceMasker) -> dict[str, Any]:
    """A collated loader batch, on its device, made into the renderer's batch, in place.

    Images become float in [-1, 1] at ``size`` (recoloured by ``jitter`` when present), cameras are
    rescaled from the crop to ``size``, and ``mask`` and ``teeth`` (and ``partner_teeth``) [B, 1, size, size]
    are drawn from the coefficients.
    """
    crop = batch["source"].shape[-1]
    for name in IMAGES:
        if name in batch:
            batch[name] = unit_images(batch[name], size)
    if (jitter := batch.pop("jitter", None)) is not None:
        batch["source"], batch["reference"] = colour_jitter(batch["source"], jitter), colour_jitter(batch["reference"], jitter)
    masker = masker.to(batch["source"].device)
    for prefix in ("", "partner_") if "partner" in batch else ("",):
        batch[f"{prefix}camera"] = scale_camera(batch[f"{prefix}camera"], crop, size)
        mask, teeth = masker(*(batch[f"{prefix}{k}"] for k in COEFFS), size)
        batch[f"{prefix}teeth"] = teeth
        if not prefix:
            batch["mask"] = mask
    return batch
