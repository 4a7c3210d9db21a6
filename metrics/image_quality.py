"""PSNR and SSIM over the whole crop and over the redrawn (mouth) region."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.functional.image import structural_similarity_index_measure

SSIM_BORDER = 5  # half of the 11-tap Gaussian window


class ImageQuality(Metric):
    """Per-frame PSNR (dB) and SSIM (Gaussian window 11, σ 1.5) of frames in [0, 1], averaged over frames.

    With a mask (1 = the region the renderer redrew) also ``psnr_mask`` (MSE over the masked pixels)
    and ``ssim_mask`` (the SSIM map averaged over them); frames with an empty mask are left out of
    those two. Sums reduce across processes.
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, mask_threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.mask_threshold = mask_threshold
        for name in ("psnr_sum", "ssim_sum", "frames", "psnr_mask_sum", "ssim_mask_sum", "mask_frames"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    @staticmethod
    def _psnr(mse: torch.Tensor) -> torch.Tensor:
        return 10 * torch.log10(1.0 / mse.clamp(min=1e-10))

    def update(self, preds: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Frames [N, 3, H, W] in [0, 1]; mask [N, 1, H, W]."""
        preds, target = preds.detach().double().clamp(0, 1), target.detach().double().clamp(0, 1)
        # float32 convolutions (float64 ones are many times slower on CPU); the sums stay float64
        _, ssim_map = structural_similarity_index_measure(preds.float(), target.float(), data_range=1.0, reduction="none", return_full_image=True)
        ssim_map = ssim_map.double()
        b = SSIM_BORDER  # like Wang et al. and skimage: the border the window overhangs is left out of the mean
        ssim = ssim_map[..., b:-b, b:-b].mean((1, 2, 3))
        self.psnr_sum += self._psnr((preds - target).pow(2).mean((1, 2, 3))).sum()
        self.ssim_sum += ssim.sum()
        self.frames += len(preds)
        if mask is None:
            return
        m = (mask.detach() > self.mask_threshold).double().expand_as(preds)
        count = m.sum((1, 2, 3))
        keep = count > 0
        if not keep.any():
            return
        mse = ((preds - target).pow(2) * m).sum((1, 2, 3)) / count.clamp(min=1)
        self.psnr_mask_sum += self._psnr(mse[keep]).sum()
        self.ssim_mask_sum += ((ssim_map * m).sum((1, 2, 3)) / count.clamp(min=1))[keep].sum()
        self.mask_frames += keep.sum()

    def compute(self) -> dict[str, torch.Tensor]:
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        n = self.frames if self.frames > 0 else nan
        nm = self.mask_frames if self.mask_frames > 0 else nan
        return {"psnr": self.psnr_sum / n, "ssim": self.ssim_sum / n, "psnr_mask": self.psnr_mask_sum / nm, "ssim_mask": self.ssim_mask_sum / nm}
