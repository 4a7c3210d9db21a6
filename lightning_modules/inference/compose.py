"""The renderer applied to crops, and the redrawn crop pasted back into the full-resolution frame.

Paste-back is seamless by construction: the blend weight is the renderer's region mask,
upsampled to the crop, feathered inwards and multiplied by a taper that falls smoothly to 0 over
the crop's outer ``edge`` fraction, so the weight is never cut by the crop border (the neck region
reaches the crop's bottom edge). Where the weight is 0 the source pixel is copied, unchanged.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from datamodules.face_masks import FaceMasker
from datamodules.renderer_frames import scale_camera, to_images
from lightning_modules.renderer.generator import FIARenderer, blend, coefficient_vector


@torch.no_grad()
def region(masker: FaceMasker, shape: torch.Tensor, exp: torch.Tensor, exp_fitted: torch.Tensor, pose: torch.Tensor, camera: torch.Tensor, size: int) -> torch.Tensor:
    """The redrawn region [n, 1, size, size]: the union of the masks of the predicted and the fitted expression."""
    return torch.maximum(masker(shape, exp, pose, camera, size)[0], masker(shape, exp_fitted, pose, camera, size)[0])


@torch.no_grad()
def redraw(
    net: FIARenderer,
    masker: FaceMasker,
    source: torch.Tensor,
    reference: torch.Tensor | list[torch.Tensor],
    shape: torch.Tensor,
    exp: torch.Tensor,
    exp_fitted: torch.Tensor,
    pose: torch.Tensor,
    camera: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(blended frames [n, 3, s, s] in [-1, 1], region mask [n, 1, s, s]) for sources at the renderer's size ``s``.

    The region is the union of the masks of the predicted and the fitted expression, so neither the
    old mouth shows through nor the new one is cut. ``reference`` is the reference image [1, 3, s, s]
    or its encoder features (:meth:`FIARenderer.encode_reference`); ``camera`` is in ``s``-pixel crops.
    ``mask`` is :func:`region` computed beforehand (to time it apart).
    """
    if mask is None:
        mask = region(masker, shape, exp, exp_fitted, pose, camera, source.shape[-1])
    coeffs = coefficient_vector(shape, exp, pose)
    sketch = masker.sketch(shape, exp, pose, camera, source.shape[-1]) if net.sketch_channels else None  # the predicted mouth
    if isinstance(reference, torch.Tensor):
        out = net(source * (1 - mask), mask, reference.expand(len(source), -1, -1, -1), coeffs, sketch)
    else:
        out = net.render(source * (1 - mask), mask, reference, coeffs, sketch)
    return blend(source, out.float(), mask), mask


def border_taper(size: int, edge: float = 0.06) -> np.ndarray:
    """[size, size] weights: 1 inside, a smoothstep to 0 over the outer ``edge`` fraction of each side."""
    width = max(1.0, edge * size)
    d = np.minimum(np.arange(size) + 0.5, size - 0.5 - np.arange(size)) / width
    ramp = np.clip(d, 0, 1)
    ramp = ramp * ramp * (3 - 2 * ramp)
    return np.outer(ramp, ramp).astype(np.float32)


def paste_weight(mask: np.ndarray, feather: float = 0.02, edge: float = 0.06) -> np.ndarray:
    """Blend weights [n, S, S] from region masks at crop size: feathered inwards, tapered at the crop border.

    ``min(mask, blur(mask))`` softens the edge over ~2σ (σ = ``feather`` of the side) on the inside
    only: outside the region the renderer's output is the downsampled source, which must not bleed out.
    """
    size = mask.shape[-1]
    sigma = feather * size
    soft = np.stack([np.minimum(m, cv2.GaussianBlur(m, (0, 0), sigma)) for m in mask.astype(np.float32)])
    return soft * border_taper(size, edge)


class CropRenderer:
    """Redraws the lower face of an avatar's crops; the reference frame is encoded once (or every call, to compare).

    Args:
        net, image_size, mask: the renderer network, its input side and FaceMasker settings (from its checkpoint).
        face_model: path of the face model (None = shipped).
        reference_crop: uint8 [S, S, 3] crop of the reference frame.
        device: where the network runs.
        cache_reference: keep the reference's encoder features instead of encoding it with every batch.
    """

    def __init__(self, net: FIARenderer, image_size: int, mask: dict, face_model: str | None, reference_crop: np.ndarray,
                 device: torch.device, cache_reference: bool = True) -> None:
        self.net, self.size, self.device = net.to(device), image_size, device
        self.masker = FaceMasker(face_model, **mask).to(device)
        self.reference = to_images(reference_crop[None], image_size).to(device)
        self.cache_reference = cache_reference
        self.reference_features = net.encode_reference(self.reference) if cache_reference else None

    @torch.no_grad()
    def __call__(self, crops: np.ndarray, coeffs: dict[str, np.ndarray], exp: torch.Tensor, seconds: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Redrawn crops (float RGB [n, S, S, 3] in [0, 255]) and blend weights [n, S, S] for uint8 crops [n, S, S, 3].

        ``seconds`` gets the time of the ``mask`` and ``renderer`` steps added.
        """
        dev = self.device
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(dev)  # noqa: E731
        crop = crops.shape[1]
        t = time.perf_counter()
        shape, exp, fitted, pose = as_t(coeffs["shape"]), exp.to(dev), as_t(coeffs["exp"]), as_t(coeffs["pose"])
        camera = as_t(scale_camera(coeffs["camera"], crop, self.size))
        mask = region(self.masker, shape, exp, fitted, pose, camera, self.size)
        t_mask = time.perf_counter()
        reference = self.reference_features if self.cache_reference else self.reference
        out, mask = redraw(self.net, self.masker, to_images(crops, self.size).to(dev), reference, shape, exp, fitted, pose, camera, mask)
        out, mask = to_crop_size(out, mask, crop)
        rgb = out.clamp(-1, 1).add(1).mul(127.5).permute(0, 2, 3, 1).cpu().numpy()
        if seconds is not None:
            seconds["mask"] += t_mask - t
            seconds["renderer"] += time.perf_counter() - t_mask
        return rgb, paste_weight(mask[:, 0].clamp(0, 1).cpu().numpy())


def to_crop_size(image: torch.Tensor, region: torch.Tensor, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The renderer's image [N, 3, S, S] and region [N, 1, S, S] at the crop's size (unchanged when S is it).

    The image is scaled bicubically, not bilinearly: a perfect 128 px rendering scaled into a 256 crop keeps 0.39 of
    the source's sharpness bicubically and 0.24 bilinearly (docs/one_speaker.md, "Sharpness"); it may overshoot a
    little, so callers clamp it. The region is a blend weight and is scaled bilinearly, which keeps it in [0, 1].
    """
    if image.shape[-1] == crop:
        return image, region
    return (F.interpolate(image, size=(crop, crop), mode="bicubic", align_corners=False),
            F.interpolate(region, size=(crop, crop), mode="bilinear", align_corners=False))


def paste(frame: np.ndarray, crop_rgb: np.ndarray, weight: np.ndarray, crop_matrix: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int], np.ndarray]:
    """``frame`` with ``crop_rgb`` warped back in under ``weight`` (both [S, S(, 3)] in crop pixels), as a new array,
    with the box (x0, y0, x1, y1) that was touched and the blend weight [y1 − y0, x1 − x0] over it.

    Only the crop's bounding box in the frame is warped (a 1080p frame costs what its face costs).
    """
    h, w = frame.shape[:2]
    s = crop_rgb.shape[0]
    inverse = cv2.invertAffineTransform(crop_matrix.astype(np.float64))  # crop -> source
    corners = inverse @ np.array([[0, s, 0, s], [0, 0, s, s], [1, 1, 1, 1]], np.float64)
    x0, y0 = max(0, int(np.floor(corners[0].min()))), max(0, int(np.floor(corners[1].min())))
    x1, y1 = min(w, int(np.ceil(corners[0].max())) + 1), min(h, int(np.ceil(corners[1].max())) + 1)
    out = frame.copy()
    if x1 <= x0 or y1 <= y0:
        return out, (0, 0, 0, 0), np.zeros((0, 0), np.float32)
    local = inverse.copy()
    local[:, 2] -= (x0, y0)
    roi = (x1 - x0, y1 - y0)
    patch = cv2.warpAffine(crop_rgb.astype(np.float32), local, roi, flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(weight.astype(np.float32), local, roi, flags=cv2.INTER_LINEAR, borderValue=0)[..., None]
    region = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.where(alpha > 0, region + alpha * (patch - region), region).round().clip(0, 255).astype(np.uint8)
    return out, (x0, y0, x1, y1), alpha[..., 0]
