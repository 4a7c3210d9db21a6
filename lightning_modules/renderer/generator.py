"""Expression-to-face renderer with Facial Identity Alignment (RealTalk §3.2, ARCHITECTURE §1).

    source (masked) ─┐                 ┌─ 1/16 ─ 1/8 ─ 1/4 ─ 1/2 features ─► skips (optional)
    (+ mouth sketch) │                 │
    reference ───────┴─► shared encoder┤
                                       └─ reference features ─► cross-attention at 1/8, 1/16
    decoder: per stage  upsample → AdaIN(MLP([α, β, ρ])) → residual blocks → cross-attention
    head: upsample to full size → RGB;  blend  Î = (1 − mask)·I_s + mask·out

The encoder sees source and reference as one batch (shared weights, one pass). The first
decoder stage works at the bottleneck's own resolution, so with d = 4 encoder stages the
decoder stages run at 1/16, 1/8, 1/4 and 1/2 and cross-attention can reach the 1/16 features.
The default widths put the two-block model at 69.4 M parameters (paper: 69.24 M).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class ResBlock(nn.Module):
    """Pre-activation residual block (GroupNorm, SiLU, two 3×3 convolutions); GroupNorm has no batch statistics to sync under DDP."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1), _norm(cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class Encoder(nn.Module):
    """Stem at full size, then one stage per width: a stride-2 convolution and ``blocks`` residual blocks."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        stages, cin = [], widths[0]
        for w in widths:
            stages.append(nn.Sequential(nn.Conv2d(cin, w, 3, stride=2, padding=1), *(ResBlock(w, w) for _ in range(blocks))))
            cin = w
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features [stem (1/1), 1/2, 1/4, …] for every stage."""
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        return feats


class AdaIN(nn.Module):
    """Instance norm whose per-channel scale and shift come from a 3-layer MLP over the coefficients."""

    def __init__(self, channels: int, coeff_dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.mlp = nn.Sequential(nn.Linear(coeff_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2 * channels))
        nn.init.zeros_(self.mlp[-1].weight)  # start as plain instance norm
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
        scale, shift = self.mlp(coeffs)[:, :, None, None].chunk(2, dim=1)
        return self.norm(x) * (1 + scale) + shift


class CrossAttention(nn.Module):
    """Multi-head attention from every position of ``x`` to every position of the reference features (residual)."""

    def __init__(self, channels: int, ref_channels: int, heads: int) -> None:
        super().__init__()
        self.norm_q, self.norm_kv = _norm(channels), _norm(ref_channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True, kdim=ref_channels, vdim=ref_channels)

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.norm_q(x).flatten(2).transpose(1, 2)
        kv = self.norm_kv(ref).flatten(2).transpose(1, 2)
        out, _ = self.attn(q, kv, kv, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class FIAStage(nn.Module):
    """One decoder stage: (upsample) → AdaIN → residual blocks → (cross-attention to the reference)."""

    def __init__(
        self, cin: int, cout: int, enc: int, coeff_dim: int, mlp_hidden: int, blocks: int, upsample: bool, attention_heads: int | None, skip: bool,
        skip_after_norm: bool = False,
    ) -> None:
        super().__init__()
        self.upsample, self.skip_after_norm = upsample, skip_after_norm
        self.proj = nn.Conv2d(cin, cout, 3, padding=1) if upsample or cin != cout else nn.Identity()
        self.skip = (nn.Identity() if enc == cout else nn.Conv2d(enc, cout, 1)) if skip else None
        self.adain = AdaIN(cout, coeff_dim, mlp_hidden)
        self.blocks = nn.Sequential(*(ResBlock(cout, cout) for _ in range(blocks)))
        self.cross = CrossAttention(cout, enc, attention_heads) if attention_heads else None

    def forward(self, x: torch.Tensor, coeffs: torch.Tensor, skip: torch.Tensor | None, ref: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = self.proj(x)
        skip = self.skip(skip) if self.skip is not None and skip is not None else None
        if skip is None:
            x = self.adain(x, coeffs)
        elif self.skip_after_norm:  # the source's own statistics (its colour, its light) pass the instance norm
            x = self.adain(x, coeffs) + skip
        else:
            x = self.adain(x + skip, coeffs)
        x = self.blocks(x)
        return self.cross(x, ref) if self.cross is not None else x


class FIARenderer(nn.Module):
    """Redraws the masked lower face of a source frame from coefficients and a reference frame.

    Args:
        shape_dim: α width (linked from the face model by the CLI).
        exp_dim: β width (linked from the face model by the CLI).
        pose_dim: ρ width (axis-angle + translation).
        widths: channels of the d encoder stages (1/2 … 1/2^d).
        decoder_widths: channels of the decoder stages at the same scales (None = ``widths``);
            wider than the encoder by default, which puts the parameters where Table 7 puts them
            (each extra residual block per stage adds about 16.7 M).
        blocks: residual blocks per decoder stage (Table 7: 1, 2 or 3).
        encoder_blocks: residual blocks per encoder stage (paper: 2).
        attention_scales: downsampling factors whose decoder stage cross-attends to the reference (paper: 8 and 16).
        attention_heads: heads of each cross-attention.
        mlp_hidden: hidden width of the AdaIN MLPs.
        source_skips: add the masked source's encoder features to the decoder stage of the same scale.
        skips_after_norm: add those features after each stage's AdaIN and after the head's GroupNorm
            rather than before. Before, the instance norm removes their per-channel means, i.e. the
            colour and light of the frame being redrawn (docs/results.md "Renderer on the corpus": with it the
            corpus renderer's M-LMD fell 7%). False is how checkpoints written before this option
            were trained.
        sketch_channels: extra input channels of the source: the mouth of [α, β, ρ] drawn in the
            crop (:meth:`datamodules.face_masks.FaceMasker.sketch`, 2 channels), so β reaches the
            decoder in image space through the skips, not only as AdaIN's per-channel scale and
            shift. 0 = none (checkpoints written before this option).
    """

    def __init__(
        self,
        shape_dim: int = 64,
        exp_dim: int = 64,
        pose_dim: int = 6,
        widths: tuple[int, ...] = (64, 128, 256, 704),
        decoder_widths: tuple[int, ...] | None = (64, 128, 384, 864),
        blocks: int = 2,
        encoder_blocks: int = 2,
        attention_scales: tuple[int, ...] = (8, 16),
        attention_heads: int = 8,
        mlp_hidden: int = 256,
        source_skips: bool = True,
        skips_after_norm: bool = False,
        sketch_channels: int = 0,
    ) -> None:
        super().__init__()
        if blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {blocks}")
        self.shape_dim, self.exp_dim = shape_dim, exp_dim  # linked from the data: kept in checkpoints
        self.blocks = blocks
        scales = [2 ** (i + 1) for i in range(len(widths))]
        if bad := set(attention_scales) - set(scales):
            raise ValueError(f"attention_scales {sorted(bad)} are not encoder scales {scales}")
        self.coeff_dim = shape_dim + exp_dim + pose_dim
        self.source_skips, self.skips_after_norm = source_skips, skips_after_norm
        self.sketch_channels = sketch_channels
        self.encoder = Encoder(4 + sketch_channels, tuple(widths), encoder_blocks)  # RGB + mask + sketch (zeros for the reference)
        decoder_widths = tuple(decoder_widths or widths)
        if len(decoder_widths) != len(widths):
            raise ValueError(f"decoder_widths {decoder_widths} needs one width per encoder stage {widths}")
        self.scales = scales[::-1]  # decoder order: coarsest first
        dec, enc = decoder_widths[::-1], tuple(widths)[::-1]
        self.stages = nn.ModuleList(
            FIAStage(
                enc[0] if i == 0 else dec[i - 1], dec[i], enc[i], self.coeff_dim, mlp_hidden, blocks,
                upsample=i > 0, attention_heads=attention_heads if s in attention_scales else None, skip=source_skips and i > 0,
                skip_after_norm=skips_after_norm,
            )
            for i, s in enumerate(self.scales)
        )
        stem = decoder_widths[0] // 2
        self.stem_skip = nn.Conv2d(widths[0], stem if skips_after_norm else decoder_widths[0], 1) if source_skips else None
        self.head = nn.Sequential(nn.Conv2d(decoder_widths[0], stem, 3, padding=1), _norm(stem), nn.SiLU(), nn.Conv2d(stem, 3, 3, padding=1), nn.Tanh())

    def attention_stage_scales(self) -> list[int]:
        """Downsampling factors of the decoder stages that have cross-attention."""
        return [s for s, stage in zip(self.scales, self.stages) if stage.cross is not None]

    def forward(
        self, source_masked: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor, coeffs: torch.Tensor, sketch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw generator output [B, 3, H, W] in [-1, 1] (blend it with :func:`blend`); H, W divisible by 2^d.

        ``sketch`` [B, sketch_channels, H, W] is required when the renderer was built to take one.
        """
        b = source_masked.shape[0]
        inputs = torch.cat([self._source_input(source_masked, mask, sketch), self._reference_input(reference)])
        feats = self.encoder(inputs)
        return self.decode([f[:b] for f in feats], [f[b:] for f in feats], coeffs)

    def _source_input(self, source_masked: torch.Tensor, mask: torch.Tensor, sketch: torch.Tensor | None) -> torch.Tensor:
        if not self.sketch_channels:
            return torch.cat([source_masked, mask], 1)
        if sketch is None or sketch.shape[1] != self.sketch_channels:
            got = "none" if sketch is None else f"{sketch.shape[1]} channels"
            raise ValueError(f"this renderer takes a {self.sketch_channels}-channel mouth sketch (FaceMasker.sketch), got {got}")
        return torch.cat([source_masked, mask, sketch.to(source_masked.dtype)], 1)

    def _reference_input(self, reference: torch.Tensor) -> torch.Tensor:
        """The reference with zeros where a source has its mask and sketch: one encoder for both."""
        return torch.cat([reference, reference.new_zeros(reference.shape[0], 1 + self.sketch_channels, *reference.shape[2:])], 1)

    def encode_reference(self, reference: torch.Tensor) -> list[torch.Tensor]:
        """The reference's encoder features (stem, 1/2, …): fixed for a whole video, so a runtime computes them once.

        GroupNorm and convolutions treat every image alone, so encoding the reference apart from
        the sources gives what :meth:`forward`'s joint pass gives (up to float rounding).
        """
        return self.encoder(self._reference_input(reference))

    def render(
        self, source_masked: torch.Tensor, mask: torch.Tensor, reference_features: list[torch.Tensor], coeffs: torch.Tensor, sketch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`forward` with the reference already encoded (features of one image are broadcast to the batch)."""
        b = source_masked.shape[0]
        src = self.encoder(self._source_input(source_masked, mask, sketch))
        return self.decode(src, [f.expand(b, -1, -1, -1) for f in reference_features], coeffs)

    def decode(self, src: list[torch.Tensor], ref: list[torch.Tensor], coeffs: torch.Tensor) -> torch.Tensor:
        x = src[-1]
        for i, stage in enumerate(self.stages):
            level = len(self.stages) - i  # encoder feature index of this stage's scale
            x = stage(x, coeffs, src[level], ref[level])
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.stem_skip is None:
            return self.head(x)
        if self.skips_after_norm:  # head = conv, GroupNorm, SiLU | conv, tanh: the skip joins after the norm
            return self.head[3:](self.head[:3](x) + self.stem_skip(src[0]))
        return self.head(x + self.stem_skip(src[0]))


def blend(source: torch.Tensor, generated: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Î = (1 − mask)·I_s + mask·out: pixels where mask is 0 are the source's, exactly."""
    return torch.where(mask > 0, source + mask * (generated - source), source)


POSE_SCALE = (10.0, 10.0, 10.0, 0.1, 0.1, 0.1)
"""Brings ρ near unit scale for the MLPs: rotations of ~0.1 rad and translations of ~10 mm (α and β
are already roughly unit-variance by the face model's construction)."""


def coefficient_vector(shape: torch.Tensor, exp: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """[α, β, ρ] as one vector per frame, the AdaIN MLPs' input."""
    return torch.cat([shape, exp, pose * pose.new_tensor(POSE_SCALE)], -1)
