"""A2E loss: expression MSE + λ_v x mouth-vertex loss (ARCHITECTURE §1)."""

from __future__ import annotations

import torch
from torch import nn

from preprocess.face_model import FaceModel


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x [B, T] over the frames where mask [B, T] is True (0 when none is)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


class A2ELoss(nn.Module):
    """MSE(β, β̂) + λ_v · mean squared distance (mm²) of the mouth vertices, both at the true shape and pose.

    With ``lambda_rest`` < 1 the MSE's part outside the lips' subspace of β (``FaceModel.mouth_subspace``:
    brows, blinks, head pose left in β, fitting noise) is down-weighted: on an unseen speaker that part is
    mostly not predictable from audio, and fitting it per training speaker is what the model can overfit.

    Computed in float32 whatever the autocast context: the vertex offsets are small differences
    of large coordinates, which bf16 would round away.

    Args:
        face_model: the face model the shards were fitted with (its mouth index set and bases).
        lambda_vertex: λ_v (the paper uses 0.1).
        lambda_rest: weight of the MSE outside the lips' subspace (1 = the paper's plain MSE).
    """

    def __init__(self, face_model: FaceModel, lambda_vertex: float = 0.1, lambda_rest: float = 1.0) -> None:
        super().__init__()
        if lambda_vertex < 0 or lambda_rest < 0:
            raise ValueError(f"loss weights must be >= 0; got lambda_vertex={lambda_vertex}, lambda_rest={lambda_rest}")
        self.face_model = face_model
        self.lambda_vertex = lambda_vertex
        self.lambda_rest = lambda_rest
        self.register_buffer("mouth", face_model.index_sets["mouth"].clone(), persistent=False)
        self.register_buffer("mouth_subspace", face_model.mouth_subspace(), persistent=False)

    def split_mse(self, err: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame squared error [..., De] -> (part in the lips' subspace, the rest), each /De so they add up to the MSE."""
        de = err.shape[-1]
        total = err.pow(2).sum(-1) / de
        mouth = (err @ self.mouth_subspace).pow(2).sum(-1) / de
        return mouth, total - mouth

    def mouth_vertices(self, shape: torch.Tensor, exp: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """Mouth vertices [B, T, M, 3] (mm) at the given shape, expression and pose."""
        v = self.face_model.vertices(shape, exp)[..., self.mouth, :]
        return self.face_model.transform(v, pose)

    def forward(self, pred: torch.Tensor, batch: dict[str, torch.Tensor], prefix: str = "train") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.autocast(pred.device.type, enabled=False):
            pred = pred.float()
            mouth_part, rest = self.split_mse(pred - batch["exp"])
            exp_mse = masked_mean(mouth_part + rest, batch["mask"])
            weighted = masked_mean(mouth_part + self.lambda_rest * rest, batch["mask"])
            true_v = self.mouth_vertices(batch["shape"], batch["exp"], batch["pose"])
            pred_v = self.mouth_vertices(batch["shape"], pred, batch["pose"])
            vertex = masked_mean((pred_v - true_v).pow(2).sum(-1).mean(-1), batch["mask"])
            total = weighted + self.lambda_vertex * vertex
        return total, {f"{prefix}/loss/total": total, f"{prefix}/loss/exp_mse": exp_mse, f"{prefix}/loss/vertex": vertex}
