"""LPIPS (AlexNet, v0.1 linear heads) over the whole crop and over the redrawn region."""

from __future__ import annotations

from pathlib import Path

import torch
from torchmetrics import Metric
from torchmetrics.functional.image.lpips import _LPIPS

from metrics.backbones import weights_file

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's IMAGENET1K_V1 checkpoint name


def load_alexnet_features(lpips_net: _LPIPS, weights: str | None) -> Path:
    """Copy torchvision AlexNet ImageNet weights into the LPIPS backbone (it keeps torchvision's layer indices)."""
    path = weights_file(
        weights, ALEXNET_FILE, "AlexNet ImageNet weights for LPIPS",
        "they are not on PyPI, so LPIPS is left out offline (pretrained: false = random weights, tests only)",
    )
    state = torch.load(path, map_location="cpu", weights_only=True)
    for slice_ in (lpips_net.net.slice1, lpips_net.net.slice2, lpips_net.net.slice3, lpips_net.net.slice4, lpips_net.net.slice5):
        for index, layer in slice_.named_children():
            params = {k.removeprefix(f"features.{index}."): v for k, v in state.items() if k.startswith(f"features.{index}.")}
            if params:
                layer.load_state_dict(params)
    return path


class PerceptualSimilarity(Metric):
    """Mean LPIPS of frames in [0, 1]; with a mask also ``lpips_mask``, the spatial LPIPS map averaged over it.

    Args:
        weights: AlexNet ``.pth`` (None = the torch hub cache). The linear heads ship with torchmetrics.
        pretrained: False = a random AlexNet on purpose (tests only; such numbers mean nothing).
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(self, weights: str | None = None, pretrained: bool = True, mask_threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.net = _LPIPS(pretrained=True, net="alex", pnet_rand=True).eval().requires_grad_(False)
        if pretrained:
            load_alexnet_features(self.net, weights)
        self.mask_threshold = mask_threshold
        for name in ("lpips_sum", "frames", "lpips_mask_sum", "mask_frames"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    @torch.no_grad()
    def update(self, preds: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Frames [N, 3, H, W] in [0, 1]; mask [N, 1, H, W]."""
        preds, target = preds.float().clamp(0, 1), target.float().clamp(0, 1)
        self.net.spatial = False
        self.lpips_sum += self.net(preds, target, normalize=True).double().sum()
        self.frames += len(preds)
        if mask is None:
            return
        self.net.spatial = True
        lpips_map = self.net(preds, target, normalize=True).double()
        m = (mask > self.mask_threshold).double()
        count = m.sum((1, 2, 3))
        keep = count > 0
        self.lpips_mask_sum += ((lpips_map * m).sum((1, 2, 3)) / count.clamp(min=1))[keep].sum()
        self.mask_frames += keep.sum()

    def compute(self) -> dict[str, torch.Tensor]:
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        return {
            "lpips": self.lpips_sum / (self.frames if self.frames > 0 else nan),
            "lpips_mask": self.lpips_mask_sum / (self.mask_frames if self.mask_frames > 0 else nan),
        }
