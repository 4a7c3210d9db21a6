"""Patch discriminator for the renderer's adversarial loss."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class PatchDiscriminator(nn.Module):
    """PatchGAN with spectral norm: one real/fake score per overlapping patch.

    It is conditioned on the redraw mask (a fourth input channel): the blended output equals
    the source outside the mask, so the mask tells the critic where generated pixels can be and
    keeps it from spending capacity on regions that are real by construction. Spectral norm
    instead of batch norm: no batch statistics to synchronise under DDP, and a Lipschitz bound
    that keeps the hinge loss stable at small batch sizes.

    Args:
        in_channels: image channels plus the mask channel.
        width: channels of the first layer (doubled per layer, up to 8×).
        layers: stride-2 layers; 3 gives a 70×70 receptive field (pix2pix).
    """

    def __init__(self, in_channels: int = 4, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = [spectral_norm(nn.Conv2d(in_channels, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        c = width
        for i in range(1, layers + 1):
            nxt = width * min(2**i, 8)
            mods += [spectral_norm(nn.Conv2d(c, nxt, 4, stride=2 if i < layers else 1, padding=1)), nn.LeakyReLU(0.2)]
            c = nxt
        mods.append(spectral_norm(nn.Conv2d(c, 1, 4, padding=1)))
        self.net = nn.Sequential(*mods)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Patch logits [B, 1, h, w] for images [B, 3, H, W] in [-1, 1] and masks [B, 1, H, W]."""
        return self.net(torch.cat([image, mask], 1))
