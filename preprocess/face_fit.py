"""Per-frame coefficients for the face model: pose by Procrustes, α and β by ridge least squares.

Pulling the landmarks back into canonical space with the current pose makes the linear
system the same for every frame, so a whole clip is solved with one matrix product.
Identity α is shared by the clip (mean of the per-frame solutions), expression β is
per frame; pose and coefficients are alternated a few times.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from preprocess.face_model import FaceModel


@dataclass
class FitConfig:
    """Regularised least-squares fit of the face model to landmarks."""

    iterations: int = 4
    """Pose / coefficient alternations."""
    reg_shape: float = 2.0
    """Ridge weight on identity coefficients (mm² of landmark noise per unit-variance coefficient)."""
    reg_exp: float = 0.5
    """Ridge weight on expression coefficients."""
    z_weight: float = 0.5
    """Weight of MediaPipe's depth coordinate relative to x and y (depth is the least accurate)."""


def similarity_transform(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched Umeyama: s, R, t minimising ||s R src + t - dst|| for [B, V, 3] point sets.

    Returns s [B], R [B, 3, 3] (proper rotations), t [B, 3].
    """
    w = np.ones(src.shape[1]) if weights is None else weights
    w = w / w.sum()
    mu_s = np.einsum("v,bvc->bc", w, src)
    mu_d = np.einsum("v,bvc->bc", w, dst)
    xs, xd = src - mu_s[:, None], dst - mu_d[:, None]
    cov = np.einsum("v,bvi,bvj->bij", w, xd, xs)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones_like(sig)
    d[:, 2] = np.sign(np.linalg.det(u @ vt))
    rot = u @ (d[:, :, None] * vt)
    var_s = np.einsum("v,bvc->b", w, xs**2)
    s = (sig * d).sum(1) / var_s
    t = mu_d - s[:, None] * np.einsum("bij,bj->bi", rot, mu_s)
    return s, rot, t


class FaceFitter:
    """Fits a :class:`FaceModel` to MediaPipe landmarks given in crop pixels."""

    def __init__(self, model: FaceModel, cfg: FitConfig | None = None) -> None:
        self.cfg = cfg or FitConfig()
        self.mean = model.mean.numpy().astype(np.float64)
        self.id_basis = model.id_basis.numpy().astype(np.float64)
        self.exp_basis = model.exp_basis.numpy().astype(np.float64)
        v = self.mean.shape[0]
        self.axis_w = np.tile(np.array([1.0, 1.0, self.cfg.z_weight]), v)
        basis = np.concatenate([self.id_basis, self.exp_basis], 1) * np.sqrt(self.axis_w)[:, None]
        ks, ke = self.id_basis.shape[1], self.exp_basis.shape[1]
        reg = np.concatenate([np.full(ks, self.cfg.reg_shape), np.full(ke, self.cfg.reg_exp)])
        self._joint = np.linalg.solve(basis.T @ basis + np.diag(reg), basis.T)  # [K, 3V]
        be = self.exp_basis * np.sqrt(self.axis_w)[:, None]
        self._exp_only = np.linalg.solve(be.T @ be + self.cfg.reg_exp * np.eye(ke), be.T)

    def __call__(self, landmarks: np.ndarray, valid: np.ndarray, crop_size: int) -> dict[str, np.ndarray]:
        """Fit one clip.

        Args:
            landmarks: [T, >=468, 3] MediaPipe landmarks in crop pixels (z on the x scale).
            valid: [T] frames where the face was seen; only these define identity.
            crop_size: side of the crop; the principal point is its centre.

        Returns:
            ``shape`` [T, Ds], ``exp`` [T, De], ``pose`` [T, 6], ``camera`` [T, 3] (float32),
            ``err_px`` [T]: mean 2D distance between landmarks and projected vertices.
        """
        lmk = landmarks[:, : self.mean.shape[0]].astype(np.float64)
        n = len(lmk)
        sw = np.sqrt(self.axis_w)
        ks = self.id_basis.shape[1]
        verts = np.broadcast_to(self.mean, lmk.shape).copy()
        alpha = np.zeros(ks)
        beta = np.zeros((n, self.exp_basis.shape[1]))
        use = valid if valid.any() else np.ones(n, bool)
        for it in range(self.cfg.iterations):
            s, rot, t = similarity_transform(verts, lmk)
            canon = np.einsum("bji,bvj->bvi", rot, lmk - t[:, None]) / s[:, None, None]
            resid = (canon - self.mean).reshape(n, -1)
            if it < max(1, self.cfg.iterations // 2):  # identity settles first, then stays fixed
                coef = (resid * sw) @ self._joint.T
                alpha = coef[use, :ks].mean(0)
            beta = ((resid - self.id_basis @ alpha) * sw) @ self._exp_only.T
            verts = self.mean + (self.id_basis @ alpha + beta @ self.exp_basis.T).reshape(n, -1, 3)
        s, rot, t = similarity_transform(verts, lmk)
        centre = crop_size / 2.0
        trans = (t - np.array([centre, centre, 0.0])) / s[:, None]
        pose = np.concatenate([Rotation.from_matrix(rot).as_rotvec(), trans], 1)
        camera = np.stack([s, np.full(n, centre), np.full(n, centre)], 1)
        proj = s[:, None, None] * np.einsum("bij,bvj->bvi", rot, verts)[..., :2] + t[:, None, :2]
        err = np.linalg.norm(proj - lmk[..., :2], axis=-1).mean(1)
        return {
            "shape": np.broadcast_to(alpha, (n, ks)).astype(np.float32),
            "exp": beta.astype(np.float32),
            "pose": pose.astype(np.float32),
            "camera": camera.astype(np.float32),
            "err_px": err.astype(np.float32),
        }
