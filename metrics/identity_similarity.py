"""CSIM: cosine similarity of identity embeddings, generated frame vs a ground-truth or reference frame."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torchmetrics import Metric

from metrics.dlib_face import DlibFaces, to_uint8_hwc


class IdentityEmbedder(Protocol):
    """What CSIM needs: :class:`DlibFaces` (128-d, offline) or :class:`metrics.arcface.ArcFaceIdentity` (512-d)."""

    def box(self, image: np.ndarray):  # noqa: ANN201 - a face box or None
        ...

    def identity(self, image: np.ndarray, box=None) -> np.ndarray | None:  # noqa: ANN001
        ...


class IdentitySimilarity(Metric):
    """Mean cosine similarity of identity embeddings: dlib's 128-d descriptors by default, ArcFace when given.

    Reconstruction compares each generated frame with its ground truth; cross-audio with the
    reference frame the renderer was given. A generated frame where dlib finds no face is embedded
    inside the other frame's box (the crops are aligned); pairs whose other frame has no face are
    counted in ``skipped``. Sums reduce across processes.

    Args:
        faces: the identity network (default: dlib's, from the pip package's files).
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, faces: IdentityEmbedder | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.faces = faces if faces is not None else DlibFaces()
        for name in ("cos_sum", "frames", "skipped"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, other: torch.Tensor) -> None:
        """Frames [N, 3, H, W] in [0, 1]; ``other`` [N, ...] or one frame [1, ...] for all (a reference)."""
        other_np = to_uint8_hwc(other)
        cache: dict[int, tuple] = {}
        for i, p in enumerate(to_uint8_hwc(preds)):
            j = 0 if len(other_np) == 1 else i
            if j not in cache:
                box = self.faces.box(other_np[j])
                cache = {j: (box, None if box is None else self.faces.identity(other_np[j], box))}
            box, e_other = cache[j]
            if e_other is None:
                self.skipped += 1
                continue
            own = self.faces.box(p)
            e_pred = self.faces.identity(p, own if own is not None else box)
            cos = float(e_pred @ e_other / max(np.linalg.norm(e_pred) * np.linalg.norm(e_other), 1e-12))
            self.cos_sum += cos
            self.frames += 1

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.frames if self.frames > 0 else torch.tensor(float("nan"), dtype=torch.float64)
        return {"csim": self.cos_sum / n, "skipped": self.skipped}
