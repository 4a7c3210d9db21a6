"""The face model: contract functions, index-set geometry, fitting accuracy, building."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.path import Path as PolyPath
from scipy.spatial.transform import Rotation

from preprocess.face_fit import FaceFitter, FitConfig, similarity_transform
from preprocess.face_model import FaceModel
from preprocess.face_model_build import (
    build_face_model,
    canonicalize,
    mirror_permutation,
)


@pytest.fixture(scope="module")
def model() -> FaceModel:
    return FaceModel()


def test_default_model_dimensions_and_identity(model: FaceModel) -> None:
    assert model.num_vertices == 468
    assert model.exp_dim == 64 and 1 <= model.shape_dim <= 80
    assert model.full_name == f"{model.name}@{model.version}"
    v = model.vertices(torch.zeros(2, model.shape_dim), torch.zeros(2, model.exp_dim))
    assert torch.allclose(v, model.mean.expand(2, -1, -1))


def test_vertices_transform_project_match_numpy(model: FaceModel) -> None:
    g = torch.Generator().manual_seed(0)
    shape, exp = torch.randn(3, model.shape_dim, generator=g), torch.randn(3, model.exp_dim, generator=g)
    pose = torch.cat([0.3 * torch.randn(3, 3, generator=g), 10 * torch.randn(3, 3, generator=g)], 1)
    cam = torch.tensor([[1.2, 128.0, 128.0]]).expand(3, 3)
    out = model(shape, exp, pose, cam).numpy()
    mean = model.mean.numpy()
    for b in range(3):
        v = mean + (model.id_basis.numpy() @ shape[b].numpy() + model.exp_basis.numpy() @ exp[b].numpy()).reshape(-1, 3)
        p = v @ Rotation.from_rotvec(pose[b, :3].numpy()).as_matrix().T + pose[b, 3:].numpy()
        np.testing.assert_allclose(out[b], 1.2 * p[:, :2] + 128.0, rtol=1e-4, atol=1e-3)


def test_differentiable_and_batched_over_extra_dims(model: FaceModel) -> None:
    exp = torch.zeros(2, 5, model.exp_dim, requires_grad=True)
    pose = torch.zeros(2, 5, 6, requires_grad=True)
    px = model(torch.zeros(2, 5, model.shape_dim), exp, pose, torch.tensor([1.0, 128.0, 128.0]).expand(2, 5, 3))
    assert px.shape == (2, 5, 468, 2)
    px[..., model.index_sets["mouth"], 1].sum().backward()
    assert exp.grad.abs().sum() > 0 and pose.grad.abs().sum() > 0


def test_index_set_geometry(model: FaceModel) -> None:
    mean = model.mean.numpy()
    lower = PolyPath(mean[model.index_sets["lower_face"].numpy(), :2])
    mouth = mean[model.index_sets["mouth"].numpy(), :2]
    assert lower.contains_points(mouth).all()
    eyes = mean[[33, 133, 263, 362], :2]  # eye corners (MediaPipe topology)
    assert not lower.contains_points(eyes).any()
    chin = mean[152, :2]
    assert lower.contains_points(chin[None] + [0.0, -3.0])[0]
    inner = PolyPath(mean[model.index_sets["inner_mouth"].numpy(), :2])
    assert inner.contains_points(mean[[13, 14], :2].mean(0, keepdims=True))[0]  # between the lips
    oval = PolyPath(mean[model.index_sets["face_oval"].numpy(), :2])
    assert oval.contains_points(mean[[1, 33, 263, 152], :2] * 0.98).all()


def test_fit_recovers_synthetic_coefficients(model: FaceModel) -> None:
    rng = np.random.default_rng(0)
    t = 20
    shape = np.repeat(rng.normal(0, 0.7, (1, model.shape_dim)), t, 0)
    exp = rng.normal(0, 0.7, (t, model.exp_dim))
    pose = np.concatenate([rng.normal(0, 0.15, (t, 3)), rng.normal(0, 5, (t, 3))], 1)
    with torch.no_grad():
        v = model.transform(model.vertices(torch.tensor(shape).float(), torch.tensor(exp).float()), torch.tensor(pose).float())
    lmk = (1.3 * v.numpy() + np.array([128.0, 128.0, 0.0])) + rng.normal(0, 0.1, (t, 468, 3))  # 0.1 px landmark noise
    fit = FaceFitter(model, FitConfig())(lmk, np.ones(t, bool), 256)
    assert fit["err_px"].mean() < 0.2
    # the first expression components (most of the motion) come back
    corr = [np.corrcoef(fit["exp"][:, k], exp[:, k])[0, 1] for k in range(4)]
    assert min(corr) > 0.9, corr
    np.testing.assert_allclose(fit["camera"][:, 0], 1.3, rtol=0.05)
    np.testing.assert_allclose(fit["pose"][:, :3], pose[:, :3], atol=0.05)


def test_similarity_transform_recovers_known_motion() -> None:
    rng = np.random.default_rng(1)
    src = rng.normal(size=(4, 50, 3))
    rot = Rotation.random(4, random_state=2).as_matrix()
    dst = 2.5 * np.einsum("bij,bvj->bvi", rot, src) + np.array([1.0, -2.0, 3.0])
    s, r, t = similarity_transform(src, dst)
    np.testing.assert_allclose(s, 2.5, rtol=1e-9)
    np.testing.assert_allclose(r, rot, atol=1e-9)
    np.testing.assert_allclose(t, np.tile([1.0, -2.0, 3.0], (4, 1)), atol=1e-9)


def test_build_recovers_identity_and_expression_subspaces(model: FaceModel) -> None:
    """Videos made from a known model: the rebuilt bases span the same motions."""
    rng = np.random.default_rng(3)
    mean, ids, exps = model.mean.numpy(), model.id_basis.numpy()[:, :3], model.exp_basis.numpy()[:, :5]
    videos = []
    for _ in range(8):
        a = rng.normal(size=3)
        b = rng.normal(size=(40, 5))
        v = mean + (ids @ a + b @ exps.T).reshape(40, -1, 3)
        rot = Rotation.from_rotvec(rng.normal(0, 0.1, (40, 3))).as_matrix()
        videos.append(3.0 * np.einsum("bij,bvj->bvi", rot, v) + rng.normal(0, 20, (40, 1, 3)))
    built = build_face_model(videos, n_shape=80, n_exp=5, mirror=False)
    assert built["id_basis"].shape[1] == 7 and built["exp_basis"].shape[1] == 5  # at most videos - 1 identities
    q_true, _ = np.linalg.qr(exps)
    q_built, _ = np.linalg.qr(built["exp_basis"].astype(np.float64))
    overlap = np.linalg.svd(q_true.T @ q_built, compute_uv=False)
    assert overlap.min() > 0.95  # principal angles near zero: same subspace
    assert set(built) >= {"idx_mouth", "idx_inner_mouth", "idx_lower_face", "idx_face_oval"}


def test_mirror_permutation_is_an_involution(model: FaceModel) -> None:
    perm = mirror_permutation(canonicalize(model.mean.numpy().astype(np.float64)))
    assert (perm[perm] == np.arange(468)).mean() > 0.98
    assert perm[1] == 1 and perm[33] == 263  # nose tip maps to itself, eye corners swap


def test_mouth_subspace_holds_the_lip_motion(model: FaceModel) -> None:
    basis = model.mouth_subspace(0.95).double()
    k = basis.shape[1]
    assert 0 < k < model.exp_dim
    assert torch.allclose(basis.T @ basis, torch.eye(k, dtype=torch.float64), atol=1e-5)
    lips = model.exp_basis.unflatten(0, (model.num_vertices, 3))[model.index_sets["mouth"]].flatten(0, 1).double()
    outside = lips @ (torch.eye(model.exp_dim, dtype=torch.float64) - basis @ basis.T)
    # what the subspace leaves out moves the lips by at most 5% of the basis's squared norm
    assert outside.pow(2).sum() <= 0.05 * lips.pow(2).sum() + 1e-9
    assert model.mouth_subspace(0.99).shape[1] >= k
