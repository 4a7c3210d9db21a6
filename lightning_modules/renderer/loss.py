"""Renderer losses: λ1·L1 + λ2·perceptual + λ3·adversarial + λ4·teeth L1 (RealTalk §3.2), an optional detail term
(ours), and the critic's hinge loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metrics.backbones import FeaturePyramid
from metrics.sharpness import luma_laplacian


class PerceptualLoss(nn.Module):
    """Mean L1 distance between frozen backbone activations of two images, averaged over the tap layers.

    Args:
        backbone: ``vgg19`` (the paper's; its weights are not obtainable offline, so only from a path), ``vgg16``
            (relu1_2 … relu5_3; weights from ``make weights``: the closest to the paper's that exists offline, the
            paper-size default) or ``efficientnet_lite0`` (weights ship with pip; much cheaper on a CPU).
        weights: checkpoint path (None = the standard place; see :mod:`metrics.backbones`).
        pretrained: false = random weights, only when a config says so explicitly (tests).
    """

    def __init__(self, backbone: str = "efficientnet_lite0", weights: str | None = None, pretrained: bool = True) -> None:
        super().__init__()
        self.features = FeaturePyramid(backbone, weights, pretrained)

    def forward(self, fake: torch.Tensor, real: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
        """The distance for the batch, or one per sample [B] (their mean is the batch's)."""
        feats = self.features(torch.cat([fake, real]))
        if per_sample:
            return torch.stack([(f[: len(fake)] - f[len(fake) :]).abs().flatten(1).mean(1) for f in feats]).mean(0)
        return torch.stack([F.l1_loss(f[: len(fake)], f[len(fake) :]) for f in feats]).mean()


def masked_l1(
    fake: torch.Tensor, real: torch.Tensor, mask: torch.Tensor, per_sample: bool = False, power: int = 1, pixels: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean |fake − real|^power over the pixels of ``mask`` and the channels (0 where the mask is empty).

    One value for the batch, or one per sample [B] with ``per_sample`` (``power=2`` gives the masked MSE).
    ``pixels``: divide by this mask sum instead of the batch's own (a micro-batch's share of its whole batch's).
    """
    weight = mask.expand_as(fake)
    err = (fake - real).abs().pow(power) * weight
    dims = tuple(range(1, fake.dim())) if per_sample else tuple(range(fake.dim()))
    total = weight.sum(dims) if pixels is None else pixels * fake.shape[1]
    return err.sum(dims) / total.clamp_min(1.0)


def detail_amplitude(images: torch.Tensor, patch: int) -> torch.Tensor:
    """RMS of the luma's Laplacian in each ``patch``×``patch`` tile: how much fine detail each tile holds [B, 1, H/p, W/p]."""
    return F.avg_pool2d(luma_laplacian(images).square(), patch).add(1e-6).sqrt()


def detail_loss(fake: torch.Tensor, real: torch.Tensor, patch: int, per_sample: bool = False) -> torch.Tensor:
    """L1 between the tiles' detail amplitudes of two images: asks for as much fine detail as the target has, where it
    has it, without asking where in the tile each edge lies (which pixel losses do, and average to a blur when unsure)."""
    err = (detail_amplitude(fake, patch) - detail_amplitude(real, patch)).abs()
    return err.flatten(1).mean(1) if per_sample else err.mean()


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


class RendererLoss(nn.Module):
    """Generator objective; returns ``(total, {f"{stage}/loss/{name}": value})`` as every loss here does.

    Args:
        perceptual: the perceptual-loss network (injected so configs choose the backbone).
        lambda_l1: λ1, L1 over the whole output.
        lambda_perceptual: λ2.
        lambda_adversarial: λ3 (hinge generator loss, only once the discriminator has started).
        lambda_teeth: λ4, L1 over the teeth mask M′.
        lambda_detail: weight of :func:`detail_loss` (not in the paper; 0 = off): the sharpness term of
            docs/one_speaker.md, measured there.
        detail_patch: its tile side in px.
        perceptual_autocast: run the perceptual network under the training's mixed precision instead of
            fp32 (its distances, not its activations, are what the loss uses; docs/training.md "GPU options" has the
            measured difference); the distances themselves are taken in fp32 either way.
    """

    def __init__(
        self, perceptual: PerceptualLoss, lambda_l1: float = 1.0, lambda_perceptual: float = 1.0, lambda_adversarial: float = 0.1, lambda_teeth: float = 1.0,
        perceptual_autocast: bool = False, lambda_detail: float = 0.0, detail_patch: int = 8,
    ) -> None:
        super().__init__()
        self.perceptual = perceptual
        self.perceptual_autocast = perceptual_autocast
        self.detail_patch = detail_patch
        self.lambdas = {"l1": lambda_l1, "perceptual": lambda_perceptual, "adversarial": lambda_adversarial, "teeth": lambda_teeth,
                        "detail": lambda_detail}

    def forward(
        self, fake: torch.Tensor, real: torch.Tensor, teeth: torch.Tensor, fake_logits: torch.Tensor | None, stage: str, teeth_pixels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total, logs); ``teeth_pixels``: the teeth term's denominator when this is a micro-batch (see :func:`masked_l1`)."""
        device = fake.device.type
        amp = torch.is_autocast_enabled(device) and self.perceptual_autocast
        amp_dtype = torch.get_autocast_dtype(device)
        with torch.autocast(device, enabled=False):  # losses in fp32 under mixed precision
            fake, real = fake.float(), real.float()
            with torch.autocast(device, dtype=amp_dtype, enabled=amp):
                perceptual = self.perceptual(fake, real)
            parts = {"l1": F.l1_loss(fake, real), "perceptual": perceptual.float(), "teeth": masked_l1(fake, real, teeth.float(), pixels=teeth_pixels)}
            if self.lambdas["detail"]:
                parts["detail"] = detail_loss(fake, real, self.detail_patch)
            if fake_logits is not None:
                parts["adversarial"] = -fake_logits.float().mean()
        total = sum(self.lambdas[k] * v for k, v in parts.items())
        logs = {f"{stage}/loss/{k}": v.detach() for k, v in parts.items()}
        logs[f"{stage}/loss/total"] = total.detach()
        return total, logs

    @torch.no_grad()
    def per_frame(self, fake: torch.Tensor, real: torch.Tensor, teeth: torch.Tensor, stage: str) -> dict[str, torch.Tensor]:
        """Validation/test losses of each frame [B] (no adversarial term), keyed like :meth:`forward`'s logs.

        Their means over a split do not depend on how its frames were batched or dealt to ranks, which
        the batch's masked teeth L1 would (a ratio of sums over the batch).
        """
        with torch.autocast(fake.device.type, enabled=False):
            fake, real = fake.float(), real.float()
            parts = {"l1": (fake - real).abs().flatten(1).mean(1), "perceptual": self.perceptual(fake, real, per_sample=True),
                     "teeth": masked_l1(fake, real, teeth.float(), per_sample=True)}
            if self.lambdas["detail"]:
                parts["detail"] = detail_loss(fake, real, self.detail_patch, per_sample=True)
        parts["total"] = sum(self.lambdas[k] * v for k, v in parts.items())
        return {f"{stage}/loss/{k}": v for k, v in parts.items()}
