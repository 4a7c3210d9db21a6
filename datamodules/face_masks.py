"""The renderer's masks, computed on the fly from face-model coefficients (never stored in shards).

``mask`` marks the region the renderer redraws (1 = regenerate, 0 = keep the source pixel); the
paper's blend Î = M·I_s + (1−M)·out uses M = 1 − mask. Two kinds (Table 6):

- ``learnable``: the face model's vertices for [α, β, ρ] projected into the crop; the polygon of
  the ``lower_face`` contour (cheek → chin → cheek) united with the neck below it (the jaw line
  down to the bottom edge, since an opening mouth moves the chin over the neck), dilated and
  feathered. At inference the same function takes β̂ from A2E, so the region follows the
  predicted jaw rather than the source frame's.
- ``naive``: the lower half of the crop, feathered the same way (not dilated).

``teeth`` is the filled inner-lip loop (hard edge), the region of the λ4 loss.

``sketch`` is the mouth the coefficients describe, drawn in the crop for renderers that take it
(``FIARenderer(sketch_channels=2)``): the lip vertices as soft dots and the filled inner-lip loop.
AdaIN alone gives the renderer β as one scale and shift per channel for the whole image, from
which a small renderer learns an average mouth (docs/results.md "Renderer on the corpus"); the sketch
puts the mouth's shape where it is to be drawn.

Sizes are fractions of the crop side so one config serves 64 px tests and 256 px training.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d

from preprocess.face_model import FaceModel

MaskKind = Literal["learnable", "naive"]


def fill_polygons(points: torch.Tensor, size: int) -> torch.Tensor:
    """Even-odd fill of closed polygons [B, P, 2] (x, y in pixels) -> float masks [B, 1, size, size].

    A pixel (row i, column j) is inside when the point (j, i) is; edges are processed one at a
    time so memory stays [B, size, size] however many vertices the polygon has.
    """
    b = points.shape[0]
    coords = torch.arange(size, device=points.device, dtype=points.dtype)
    ys, xs = coords.view(1, size, 1), coords.view(1, 1, size)
    inside = torch.zeros(b, size, size, dtype=torch.bool, device=points.device)
    nxt = points.roll(-1, dims=1)
    for k in range(points.shape[1]):
        x0, y0 = points[:, k, 0].view(b, 1, 1), points[:, k, 1].view(b, 1, 1)
        x1, y1 = nxt[:, k, 0].view(b, 1, 1), nxt[:, k, 1].view(b, 1, 1)
        straddles = (y0 > ys) != (y1 > ys)
        dy = torch.where(y1 == y0, torch.ones_like(y1), y1 - y0)  # horizontal edges never straddle
        x_cross = x0 + (ys - y0) * (x1 - x0) / dy
        inside ^= straddles & (xs < x_cross)
    return inside.unsqueeze(1).to(points.dtype)


def grow_and_feather(mask: torch.Tensor, dilation: float, feather: float) -> torch.Tensor:
    """Dilate a binary mask [B, 1, H, W] by ``dilation`` and blur its edge by ``feather`` (fractions of H).

    The blur kernel is finite, so pixels farther than dilation + 3·feather stay exactly 0.
    """
    size = mask.shape[-1]
    radius = round(dilation * size)
    if radius > 0:  # a square max filter is a column filter then a row filter: 2k instead of k² comparisons per pixel
        k = 2 * radius + 1
        mask = F.max_pool2d(F.max_pool2d(mask, (k, 1), stride=1, padding=(radius, 0)), (1, k), stride=1, padding=(0, radius))
    sigma = feather * size
    if sigma > 0.3:
        k = 2 * int(3 * sigma) + 1
        mask = gaussian_blur2d(mask, (k, k), (sigma, sigma), border_type="replicate")
    return mask.clamp(0, 1)


SKETCH_CHANNELS = 2
"""Channels of :meth:`FaceMasker.sketch`: lip dots, inner-mouth fill."""


def splat_points(points: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Points [B, P, 2] (x, y in pixels) drawn as Gaussian dots of peak 1 -> [B, 1, size, size] (their maximum).

    Each dot is drawn only in its (2·⌈4σ⌉+1)² window around the nearest pixel (beyond 4σ a dot is
    below 3.4e-4) and the windows are max-scattered into the image at once: B·P·window² work
    instead of B·P·size², which is what keeps the sketch off ``stream``'s frame budget.
    """
    b, p, _ = points.shape
    r = math.ceil(4 * sigma)
    offsets = torch.arange(-r, r + 1, device=points.device, dtype=points.dtype)
    window = points.round().unsqueeze(-1) + offsets  # [B, P, 2, K]: pixel columns (x) and rows (y)
    weight = torch.exp(-((window - points.unsqueeze(-1)) ** 2) / (2 * sigma**2))
    inside = (window >= 0) & (window <= size - 1)  # windows that cross the edge draw only their inside part
    weight = weight * inside
    cols, rows = window.clamp(0, size - 1).long().unbind(2)  # [B, P, K] each
    wx, wy = weight.unbind(2)
    values = wy.unsqueeze(-1) * wx.unsqueeze(-2)  # [B, P, K(rows), K(cols)]
    index = rows.unsqueeze(-1) * size + cols.unsqueeze(-2)
    out = points.new_zeros(b, size * size).scatter_reduce_(1, index.reshape(b, -1), values.reshape(b, -1), "amax")
    return out.view(b, 1, size, size)


class FaceMasker(torch.nn.Module):
    """Region and teeth masks for a batch of frames from their face-model coefficients.

    Args:
        face_model: face model ``.npz`` (None = the shipped default).
        kind: ``learnable`` (projected lower face + neck) or ``naive`` (lower half).
        dilation: growth of the region, as a fraction of the crop side.
        feather: Gaussian sigma of the soft edge, as a fraction of the crop side.
        neck: add the neck below the jaw line to the learnable region.
    """

    def __init__(self, face_model: str | None = None, kind: MaskKind = "learnable", dilation: float = 0.03, feather: float = 0.01, neck: bool = True) -> None:
        super().__init__()
        if kind not in ("learnable", "naive"):  # checked here too: the class is also built outside the CLI
            raise ValueError(f"mask kind must be 'learnable' or 'naive', got {kind!r}")
        self.face_model = FaceModel(face_model)
        self.kind, self.dilation, self.feather, self.neck = kind, dilation, feather, neck

    @torch.no_grad()
    def forward(self, shape: torch.Tensor, exp: torch.Tensor, pose: torch.Tensor, camera: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask, teeth), each [B, 1, size, size] in [0, 1], for coefficients [B, ·] and cameras in ``size``-pixel crops."""
        fm = self.face_model
        pts = fm(shape.float(), exp.float(), pose.float(), camera.float())  # [B, V, 2]
        teeth = fill_polygons(pts[:, fm.index_sets["inner_mouth"]], size)
        if self.kind == "naive":  # a fixed region: nothing to grow
            region = torch.zeros_like(teeth)
            region[..., size // 2 :, :] = 1
            return grow_and_feather(region, 0.0, self.feather), teeth
        jaw = pts[:, fm.index_sets["lower_face"]]
        region = fill_polygons(jaw, size)
        if self.neck:
            bottom = torch.full_like(jaw[:, :1, 1], float(size + 1))
            ends = torch.stack([torch.stack([jaw[:, -1, 0], bottom[:, 0]], -1), torch.stack([jaw[:, 0, 0], bottom[:, 0]], -1)], 1)
            region = torch.maximum(region, fill_polygons(torch.cat([jaw, ends], 1), size))
        return grow_and_feather(region, self.dilation, self.feather), teeth

    @torch.no_grad()
    def sketch(self, shape: torch.Tensor, exp: torch.Tensor, pose: torch.Tensor, camera: torch.Tensor, size: int, dot: float = 0.012) -> torch.Tensor:
        """The mouth of the coefficients drawn in ``size``-pixel crops: [B, 2, size, size] in [0, 1].

        Channel 0: the lip vertices as Gaussian dots (σ = ``dot`` of the side, about a pixel and a
        half at 128 px, so neighbouring lip vertices merge into lines); channel 1: the filled
        inner-lip loop, i.e. where the open mouth is.
        """
        fm = self.face_model
        pts = fm(shape.float(), exp.float(), pose.float(), camera.float())
        lips = splat_points(pts[:, fm.index_sets["mouth"]], size, max(dot * size, 0.5))
        return torch.cat([lips, fill_polygons(pts[:, fm.index_sets["inner_mouth"]], size)], 1)
