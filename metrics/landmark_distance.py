"""LMD, M-LMD and F-LMD: mean Euclidean distance of 68-point landmarks, generated vs ground truth."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from metrics.dlib_face import FACE, MOUTH, DlibFaces, LandmarkDetector, to_uint8_hwc


class LandmarkDistance(Metric):
    """Landmark distances in pixels of the frames given (the 256 crop in evaluation).

    ``compute()`` returns ``lmd`` (all 68 points), ``m_lmd`` (mouth, points 48–67), ``f_lmd``
    (the other 48) averaged over scored frames, and ``skipped``: frames whose ground truth has no
    detectable face. Those are counted, never scored as zero. Sums reduce across processes.

    Args:
        detector: anything with ``pair(target, pred)`` (default: :class:`DlibFaces`).
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(self, detector: LandmarkDetector | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.detector = detector if detector is not None else DlibFaces()
        for name in ("all_sum", "mouth_sum", "face_sum", "frames", "skipped"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Frames [N, 3, H, W] in [0, 1]."""
        for p, t in zip(to_uint8_hwc(preds), to_uint8_hwc(target)):
            found = self.detector.pair(t, p)
            if found is None:
                self.skipped += 1
            else:
                self.update_landmarks(torch.from_numpy(found[1])[None], torch.from_numpy(found[0])[None])

    def update_landmarks(self, pred_lmk: torch.Tensor, target_lmk: torch.Tensor) -> None:
        """Landmarks [N, 68, 2] found elsewhere (e.g. by another detector)."""
        d = (pred_lmk.double() - target_lmk.double()).norm(dim=-1)
        self.all_sum += d.mean(-1).sum()
        self.mouth_sum += d[:, MOUTH].mean(-1).sum()
        self.face_sum += d[:, FACE].mean(-1).sum()
        self.frames += len(d)

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.frames if self.frames > 0 else torch.tensor(float("nan"), dtype=torch.float64)
        return {"lmd": self.all_sum / n, "m_lmd": self.mouth_sum / n, "f_lmd": self.face_sum / n, "skipped": self.skipped}

