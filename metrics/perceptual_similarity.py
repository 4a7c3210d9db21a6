"""LPIPS (v0.1 linear heads; AlexNet, the paper's, or VGG16) over the whole crop and over the redrawn region."""

from __future__ import annotations

from pathlib import Path

import torch
from torchmetrics import Metric
from torchmetrics.functional.image.lpips import _LPIPS

from metrics.backbones import load_state
from preprocess.weights import MissingWeightsError, weight_file

LPIPS_NETS = {"alex": "alexnet", "vgg": "vgg16"}
"""LPIPS backbone -> its converted ImageNet convolutions in the weights store."""


def load_lpips_backbone(lpips_net: torch.nn.Module, net: str, weights: str | None) -> Path:
    """ImageNet convolutions into an LPIPS backbone (torchmetrics' or the lpips package's: both keep torchvision's layer indices).

    ``weights``: a ``.safetensors`` or torchvision ``.pth`` with ``features.<i>.*`` keys (None = the weights store).
    """
    path = weight_file(LPIPS_NETS[net], weights)
    state = load_state(path)
    loaded = 0
    for slice_ in (lpips_net.net.slice1, lpips_net.net.slice2, lpips_net.net.slice3, lpips_net.net.slice4, lpips_net.net.slice5):
        for index, layer in slice_.named_children():
            params = {k.removeprefix(f"features.{index}."): v for k, v in state.items() if k.startswith(f"features.{index}.")}
            if params:
                layer.load_state_dict(params)
                loaded += 1
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in lpips_net.net.modules())
    if loaded != convs:
        raise MissingWeightsError(f"{path} holds {loaded} of the {convs} {net} convolutions LPIPS needs")
    return path


class PerceptualSimilarity(Metric):
    """Mean LPIPS of frames in [0, 1]; with a mask also ``lpips_mask``, the spatial LPIPS map averaged over it.

    Args:
        net: ``alex`` (the paper's LPIPS) or ``vgg``.
        weights: the backbone's ImageNet convolutions (None = the weights store, see ``make weights``). The
            v0.1 linear heads ship with torchmetrics (the same values as the lpips package's).
        pretrained: False = a random backbone on purpose (tests only; such numbers mean nothing).
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(self, net: str = "alex", weights: str | None = None, pretrained: bool = True, mask_threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        if net not in LPIPS_NETS:
            raise ValueError(f"LPIPS net must be one of {sorted(LPIPS_NETS)}, got {net!r}")
        self.net = _LPIPS(pretrained=True, net=net, pnet_rand=True).eval().requires_grad_(False)
        if pretrained:
            load_lpips_backbone(self.net, net, weights)
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
