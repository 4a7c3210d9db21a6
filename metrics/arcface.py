"""ArcFace identity embeddings for CSIM, when the user has the weights (they are not on PyPI).

The network is the improved ResNet (IResNet-18/34/50/100) of the InsightFace ``arcface_torch``
recipe; its depth is read from the checkpoint's keys, and the checkpoint must load strictly, so a
file of another architecture stops with an error instead of giving numbers. Faces are aligned
to the standard 112×112 five-point template (eye centres, nose tip and mouth corners from dlib's
68 landmarks) and scaled to [-1, 1].
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from metrics.backbones import MissingWeightsError
from metrics.dlib_face import DlibFaces

TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)


def five_points(landmarks68: np.ndarray) -> np.ndarray:
    """Image-left eye centre, image-right eye centre, nose tip, left and right mouth corner."""
    return np.stack([landmarks68[36:42].mean(0), landmarks68[42:48].mean(0), landmarks68[30], landmarks68[48], landmarks68[54]]).astype(np.float32)


def align_112(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The face warped by the similarity transform that best maps ``points`` onto the template."""
    matrix, _ = cv2.estimateAffinePartial2D(points, TEMPLATE_112, method=cv2.LMEDS)
    return cv2.warpAffine(image, matrix, (112, 112), borderValue=0.0)


class _Block(nn.Module):
    """Pre-activation-style residual block: BN, 3×3 conv, BN, PReLU, 3×3 conv (strided), BN."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = nn.PReLU(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return y + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """112×112 face -> 512-d embedding; ``depths`` blocks per stage (50: 3, 4, 14, 3; 100: 3, 13, 30, 3)."""

    def __init__(self, depths: tuple[int, int, int, int], features: int = 512) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        cin = 64
        for i, (n, cout) in enumerate(zip(depths, (64, 128, 256, 512)), 1):
            blocks = [_Block(cin, cout, 2)] + [_Block(cout, cout, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            cin = cout
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(512 * 7 * 7, features)
        self.features = nn.BatchNorm1d(features, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.features(self.fc(self.dropout(self.bn2(x).flatten(1))))


def depths_of(state: dict[str, torch.Tensor]) -> tuple[int, int, int, int]:
    """Blocks per stage, read from the ``layerI.J.`` keys of a checkpoint."""
    counts = [0, 0, 0, 0]
    for key in state:
        if m := re.match(r"layer([1-4])\.(\d+)\.", key):
            counts[int(m[1]) - 1] = max(counts[int(m[1]) - 1], int(m[2]) + 1)
    if not all(counts):
        raise MissingWeightsError(f"not an IResNet ArcFace checkpoint: blocks per stage {counts}")
    return tuple(counts)


class ArcFaceIdentity:
    """An identity embedder with :class:`DlibFaces`' interface (``box``, ``identity``), for :class:`IdentitySimilarity`.

    Args:
        weights: an ``arcface_torch`` IResNet ``.pth`` state dict (e.g. ``backbone.pth`` of ms1mv3_arcface_r100).
        faces: dlib detector + landmarks for the box and the five alignment points.
    """

    def __init__(self, weights: str, faces: DlibFaces | None = None, device: str = "cpu") -> None:
        if not weights or not Path(weights).is_file():
            raise MissingWeightsError(f"ArcFace weights not found: {weights}; CSIM uses dlib's identity network unless an IResNet .pth is given")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        self.net = IResNet(depths_of(state))
        try:
            self.net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise MissingWeightsError(f"{weights} does not load into an IResNet: {str(e)[:300]}") from e
        self.net.eval().requires_grad_(False).to(device)
        self.faces = faces if faces is not None else DlibFaces()
        self.device = device

    def box(self, image: np.ndarray):  # noqa: ANN201 - dlib.rectangle or None
        return self.faces.box(image)

    @torch.no_grad()
    def identity(self, image: np.ndarray, box=None) -> np.ndarray | None:  # noqa: ANN001 - dlib.rectangle
        box = box if box is not None else self.box(image)
        if box is None:
            return None
        face = align_112(image, five_points(self.faces.landmarks(image, box)))
        x = torch.from_numpy(face).permute(2, 0, 1)[None].float().div(127.5).sub(1).to(self.device)
        return self.net(x)[0].double().cpu().numpy()
