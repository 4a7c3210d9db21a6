"""The face model (a linear 3DMM over MediaPipe's 468-vertex topology): the one place it lives.

Canonical space, in millimetres: x to the subject's left (image right), y down, z away from
the camera (MediaPipe's image axes, so a frontal face projects by dropping z). The scale
is set by the outer eye-corner distance of the mean face, ``EYE_CORNER_MM`` (an adult
average; absolute millimetres are approximate, ratios are exact).

    vertices = mean + id_basis @ shape + exp_basis @ exp          # [B, V, 3] canonical
    points   = R(pose[:3]) @ vertices + pose[3:]                   # transform
    pixels   = camera[0] * points[:, :2] + camera[1:3]             # project (weak perspective)

Basis columns are scaled by their principal standard deviation, so coefficients are
roughly unit-variance over the corpus the model was built from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix
from torch import nn

DEFAULT_MODEL_PATH = Path(__file__).parent / "assets" / "face_model_mp468.npz"
EYE_CORNER_MM = 90.0
INDEX_SETS = ("mouth", "inner_mouth", "lower_face", "face_oval")
"""Named vertex sets: ``mouth`` (lip vertices, A2E vertex loss), ``inner_mouth`` (ordered
inner-lip loop, teeth mask), ``lower_face`` (ordered polygon from cheek to cheek round
the chin, learnable mask), ``face_oval`` (ordered loop)."""


class FaceModel(nn.Module):
    """Differentiable, batched linear face model loaded from an ``.npz`` file.

    Args:
        path: model file written by ``python -m preprocess build-face-model``;
            None = the default model shipped with the code.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__()
        self.path = Path(path) if path else DEFAULT_MODEL_PATH
        if not self.path.is_file():
            raise FileNotFoundError(
                f"face model file not found: {self.path}; build one with "
                "'python -m preprocess build-face-model' or point to an existing .npz"
            )
        with np.load(self.path, allow_pickle=False) as z:
            self.name = str(z["name"])
            self.version = str(z["version"])
            mean = torch.from_numpy(z["mean"].astype(np.float32))
            id_basis = torch.from_numpy(z["id_basis"].astype(np.float32))
            exp_basis = torch.from_numpy(z["exp_basis"].astype(np.float32))
            self.index_sets = {k: torch.from_numpy(z[f"idx_{k}"].astype(np.int64)) for k in INDEX_SETS}
            self.info = str(z["info"]) if "info" in z else ""
        self.register_buffer("mean", mean, persistent=False)  # [V, 3]
        self.register_buffer("id_basis", id_basis, persistent=False)  # [V*3, Ds]
        self.register_buffer("exp_basis", exp_basis, persistent=False)  # [V*3, De]

    @property
    def num_vertices(self) -> int:
        return self.mean.shape[0]

    @property
    def shape_dim(self) -> int:
        return self.id_basis.shape[1]

    @property
    def exp_dim(self) -> int:
        return self.exp_basis.shape[1]

    @property
    def full_name(self) -> str:
        """``name@version``, written into every shard's meta.json and checked by readers."""
        return f"{self.name}@{self.version}"

    def vertices(self, shape: torch.Tensor, exp: torch.Tensor) -> torch.Tensor:
        """Canonical vertices [..., V, 3] from shape [..., Ds] and expression [..., De]."""
        offsets = shape @ self.id_basis.T + exp @ self.exp_basis.T
        return self.mean + offsets.unflatten(-1, (self.num_vertices, 3))

    def mouth_subspace(self, energy: float = 0.95) -> torch.Tensor:
        """Orthonormal basis [De, k] of the expression directions that move the lip vertices.

        The fewest leading right-singular vectors of the mouth rows of the expression basis that
        carry ``energy`` of its squared singular values. Splitting an expression error Δβ into its
        projection on this subspace and the rest separates what the mouth-vertex error sees from
        what it does not (brows, blinks, fitting noise).
        """
        mouth = self.exp_basis.unflatten(0, (self.num_vertices, 3))[self.index_sets["mouth"]].flatten(0, 1)
        _, s, vh = torch.linalg.svd(mouth.double(), full_matrices=False)
        share = (s**2).cumsum(0) / (s**2).sum()
        k = int((share < energy).sum()) + 1
        return vh[:k].T.to(self.exp_basis.dtype)

    @staticmethod
    def transform(vertices: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """Rigid motion: pose [..., 6] = axis-angle rotation (rad) + translation (mm)."""
        lead = pose.shape[:-1]
        rot = axis_angle_to_rotation_matrix(pose[..., :3].reshape(-1, 3)).reshape(*lead, 3, 3)
        return vertices @ rot.transpose(-1, -2) + pose[..., None, 3:]

    @staticmethod
    def project(points: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        """Weak perspective into crop pixels: camera [..., 3] = (px per mm, cx, cy)."""
        return points[..., :2] * camera[..., None, :1] + camera[..., None, 1:3]

    def mouth_opening(self, points: torch.Tensor) -> torch.Tensor:
        """Inner-lip opening [...] from vertices or projected points [..., V, 2 or 3].

        The mean vertical gap between the upper and lower halves of the inner-lip loop, in the
        units of ``points`` (mm for model vertices, pixels for projections). The halves are fixed
        from the mean shape, so the result is differentiable and never swaps sides.
        """
        loop = self.index_sets["inner_mouth"].to(points.device)
        ys = self.mean[loop, 1]
        upper = loop[ys > ys.mean()]  # canonical y points up (the projection flips it), hence abs below
        lower = loop[ys <= ys.mean()]
        return (points[..., upper, 1].mean(-1) - points[..., lower, 1].mean(-1)).abs()

    def forward(self, shape: torch.Tensor, exp: torch.Tensor, pose: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        """Projected vertices [..., V, 2] in crop pixels."""
        return self.project(self.transform(self.vertices(shape, exp), pose), camera)
