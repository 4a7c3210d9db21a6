"""The metric set of one evaluation setting and the Table-2 columns it fills."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from metrics.dlib_face import DlibFaces
from metrics.frechet_distance import fd_effnet, fid_inception
from metrics.identity_similarity import IdentityEmbedder, IdentitySimilarity
from metrics.image_quality import ImageQuality
from metrics.landmark_distance import LandmarkDistance
from metrics.perceptual_similarity import LPIPS_NETS, PerceptualSimilarity
from metrics.sharpness import Sharpness
from preprocess.weights import weights_available

METRICS = ("lmd", "csim", "quality", "sharpness", "fd_effnet", "lpips", "fid")
COLUMNS = ("LMD", "M-LMD", "F-LMD", "FID", "FD_effnet", "LPIPS", "LPIPS mouth", "SSIM", "SSIM mouth", "PSNR", "PSNR mouth", "Sharpness", "CSIM", "Sync conf",
           "ms/frame")
LOWER_IS_BETTER = {"LMD", "M-LMD", "F-LMD", "FID", "FD_effnet", "LPIPS", "LPIPS mouth", "ms/frame"}


def default_metrics(lpips_weights: str | None, fid_weights: str | None, lpips_net: str = "alex") -> list[str]:
    """Every metric whose weights are here: the pip-shipped ones, plus LPIPS / FID once ``make weights`` has run (or their files are given)."""
    chosen = ["lmd", "csim", "quality", "sharpness", "fd_effnet"]
    if lpips_weights or weights_available(LPIPS_NETS[lpips_net]):
        chosen.append("lpips")
    if fid_weights or weights_available("fid-inception"):
        chosen.append("fid")
    return chosen


def every_nth(count: int, first_frame: int, n: int) -> list[int]:
    """Positions in a batch of ``count`` frames starting at clip frame ``first_frame`` whose clip index is a multiple of ``n``."""
    return [i for i in range(count) if (first_frame + i) % n == 0]


@dataclass
class SettingMetrics:
    """Metrics of one setting. ``reconstruction`` compares with the ground truth; cross-audio has none,
    so it scores identity against the reference frame and the Fréchet distance against the real frames.
    """

    reconstruction: bool
    chosen: list[str]
    faces: DlibFaces
    lpips_weights: str | None = None
    fid_weights: str | None = None
    lpips_net: str = "alex"
    identity_every: int = 1
    fd_every: int = 1  # the Fréchet distances on every N-th frame: neighbouring frames add little, Inception is the costliest metric on CPU
    identity: IdentityEmbedder | None = None  # CSIM's network; None = dlib's (``faces``)
    device: torch.device | str = "cpu"  # where the metrics' states and networks live (the frames' device)
    metrics: dict[str, object] = field(default_factory=dict)
    seconds: float = 0.0
    frames: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.chosen) - set(METRICS)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")
        needs_truth = {"lmd", "quality", "lpips"}
        for name in self.chosen:
            if name in needs_truth and not self.reconstruction:
                continue
            self.metrics[name] = {
                "lmd": lambda: LandmarkDistance(self.faces),
                "csim": lambda: IdentitySimilarity(self.identity or self.faces),
                "quality": ImageQuality,
                "sharpness": Sharpness,  # the redrawn region against the same region of the source: both settings have one
                "lpips": lambda: PerceptualSimilarity(self.lpips_net, self.lpips_weights),
                "fd_effnet": fd_effnet,
                "fid": lambda: fid_inception(self.fid_weights),
            }[name]().to(self.device)

    def update(
        self, fake: torch.Tensor, real: torch.Tensor, reference: torch.Tensor | None, mask: torch.Tensor | None, first_frame: int, seconds: float = 0.0
    ) -> None:
        """Frames [N, 3, H, W] in [0, 1] at the crop size: generated, ground truth (the source clip), its
        reference frame [1, ...] (cross-audio identity), the redrawn region [N, 1, H, W] (None: no mouth
        columns); ``first_frame`` is the clip index of the first one; ``seconds`` the time it took to make them."""
        self.frames += len(fake)
        self.seconds += seconds
        m = self.metrics
        if "lmd" in m:
            m["lmd"].update(fake, real)
        if "csim" in m:
            keep = every_nth(len(fake), first_frame, self.identity_every)
            if keep:
                m["csim"].update(fake[keep], real[keep] if self.reconstruction else reference)
        if "quality" in m:
            m["quality"].update(fake, real, mask)
        if "sharpness" in m and mask is not None:
            m["sharpness"].update(fake, real, mask)
        if "lpips" in m:
            m["lpips"].update(fake, real, mask)
        keep = every_nth(len(fake), first_frame, self.fd_every)
        for name in ("fd_effnet", "fid"):
            if name in m and keep:
                m[name].update(real[keep], real=True)
                m[name].update(fake[keep], real=False)

    def row(self) -> dict[str, float | None]:
        """Table-2 columns (None = not measured in this setting / not configured) plus bookkeeping counts."""
        out: dict[str, float | None] = dict.fromkeys(COLUMNS)
        m = self.metrics
        if "lmd" in m:
            v = m["lmd"].compute()
            out |= {"LMD": float(v["lmd"]), "M-LMD": float(v["m_lmd"]), "F-LMD": float(v["f_lmd"]), "frames without a face": float(v["skipped"])}
        if "csim" in m:
            v = m["csim"].compute()
            out |= {"CSIM": float(v["csim"]), "CSIM frames skipped": float(v["skipped"])}
        if "quality" in m:
            v = m["quality"].compute()
            out |= {"SSIM": float(v["ssim"]), "SSIM mouth": float(v["ssim_mask"]), "PSNR": float(v["psnr"]), "PSNR mouth": float(v["psnr_mask"])}
        if "sharpness" in m:
            out["Sharpness"] = float(m["sharpness"].compute())
        if "lpips" in m:
            v = m["lpips"].compute()
            out |= {"LPIPS": float(v["lpips"]), "LPIPS mouth": float(v["lpips_mask"])}
        seconds, frames = self.seconds, self.frames
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # the metrics reduce themselves in compute()
            totals = torch.tensor([seconds, frames], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(totals)
            seconds, frames = float(totals[0]), int(totals[1])
        for name, column in (("fd_effnet", "FD_effnet"), ("fid", "FID")):
            if name in m:  # every rank decides alike (the total), so every rank takes part in compute()'s reduction
                out[column] = float(m[name].compute()) if frames >= 2 else None
        out["ms/frame"] = 1000 * seconds / max(frames, 1)
        out["frames"] = float(frames)
        return out
