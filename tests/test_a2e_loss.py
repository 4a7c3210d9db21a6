"""The A2E loss: the paper's MSE + λ_v vertex loss, and the down-weighting outside the lips' subspace."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.a2e.loss import A2ELoss
from preprocess.face_model import FaceModel


@pytest.fixture(scope="module")
def face_model() -> FaceModel:
    return FaceModel(None)


def batch(fm: FaceModel, exp: torch.Tensor) -> dict[str, torch.Tensor]:
    b, t, _ = exp.shape
    return {"exp": exp, "shape": torch.zeros(b, t, fm.shape_dim), "pose": torch.zeros(b, t, 6), "mask": torch.ones(b, t, dtype=torch.bool)}


def test_the_split_adds_up_to_the_mse_and_lambda_rest_weights_only_the_rest(face_model):
    torch.manual_seed(0)
    loss = A2ELoss(face_model, lambda_vertex=0.0)
    exp = torch.randn(2, 8, face_model.exp_dim)
    err = torch.randn_like(exp)
    lips, rest = loss.split_mse(err)
    assert torch.allclose(lips + rest, err.pow(2).mean(-1), atol=1e-5)
    assert (lips > 0).all() and (rest > 0).all()

    u = loss.mouth_subspace
    outside = err - (err @ u) @ u.T  # no component in the lips' subspace
    inside = (err @ u) @ u.T
    b = batch(face_model, exp)
    full, logs = A2ELoss(face_model, 0.0, lambda_rest=1.0)(exp + outside, b)
    assert torch.allclose(full, logs["train/loss/exp_mse"]) and full > 0
    assert A2ELoss(face_model, 0.0, lambda_rest=0.0)(exp + outside, b)[0] < 1e-6 * full
    half, logs = A2ELoss(face_model, 0.0, lambda_rest=0.5)(exp + inside + outside, b)
    lips_only = A2ELoss(face_model, 0.0, lambda_rest=0.0)(exp + inside, b)[0]
    assert torch.allclose(half, lips_only + 0.5 * full, rtol=1e-4)
    assert logs["train/loss/exp_mse"] > half  # the logged MSE stays the paper's, unweighted


def test_negative_weights_are_refused(face_model):
    with pytest.raises(ValueError, match="lambda_rest"):
        A2ELoss(face_model, 0.1, lambda_rest=-1.0)

