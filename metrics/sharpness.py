"""How sharp a redrawn region is beside the same region of the source: the ratio of their high-frequency energy."""

from __future__ import annotations

import torch
from kornia.filters import laplacian
from torchmetrics import Metric

LUMA = (0.299, 0.587, 0.114)


def luma_laplacian(frames: torch.Tensor) -> torch.Tensor:
    """The 3×3 Laplacian of the frames' luma: [N, 1, H, W] from [N, 3, H, W] (any value range; it is linear)."""
    luma = (frames * frames.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return laplacian(luma, 3, border_type="replicate", normalized=False)


def laplacian_energy(frames: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Per frame, the mean squared Laplacian (3×3) of the luma over ``region`` (weights in [0, 1]): [N].

    Frames [N, 3, H, W] in [0, 1]. A soft image (upscaled, blurred) has little energy at the highest frequencies.
    """
    edges = luma_laplacian(frames)
    return (edges.pow(2) * region).flatten(1).sum(1) / region.flatten(1).sum(1).clamp_min(1e-6)


class Sharpness(Metric):
    """Σ Laplacian energy of the generated frames in the redrawn region / the same of the source frames.

    1: as sharp as the video around it; below 1: softer (what a 128 px crop scaled up into a 512 px frame
    looks like); above 1: noisier than the source. Regions are the masks passed to ``update`` (the same for
    both); frames with an empty region count for nothing. Sums reduce across processes.
    """

    higher_is_better = True  # up to 1
    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("generated", "source"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, generated: torch.Tensor, source: torch.Tensor, region: torch.Tensor) -> None:
        """Frames [N, 3, H, W] in [0, 1] and the redrawn region [N, 1, H, W]."""
        region = region.float()
        self.generated += laplacian_energy(generated.float(), region).double().sum()
        self.source += laplacian_energy(source.float(), region).double().sum()

    def compute(self) -> torch.Tensor:
        return self.generated / self.source if self.source > 0 else torch.tensor(float("nan"), dtype=torch.float64)
