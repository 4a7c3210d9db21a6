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

    Computed in float32 whatever the autocast context: the vertex offsets are small differences
    of large coordinates, which bf16 would round away.

    Args:
        face_model: the face model the shards were fitted with (its mouth index set and bases).
        lambda_vertex: λ_v (the paper uses 0.1).
    """

    def __init__(self, face_model: FaceModel, lambda_vertex: float = 0.1) -> None:
        super().__init__()
        self.face_model = face_model
        self.lambda_vertex = lambda_vertex
        self.register_buffer("mouth", face_model.index_sets["mouth"].clone(), persistent=False)

    def mouth_vertices(self, shape: torch.Tensor, exp: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """Mouth vertices [B, T, M, 3] (mm) at the given shape, expression and pose."""
        v = self.face_model.vertices(shape, exp)[..., self.mouth, :]
        return self.face_model.transform(v, pose)

    def forward(self, pred: torch.Tensor, batch: dict[str, torch.Tensor], prefix: str = "train") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.autocast(pred.device.type, enabled=False):
            pred = pred.float()
            exp_mse = masked_mean((pred - batch["exp"]).pow(2).mean(-1), batch["mask"])
            true_v = self.mouth_vertices(batch["shape"], batch["exp"], batch["pose"])
            pred_v = self.mouth_vertices(batch["shape"], pred, batch["pose"])
            vertex = masked_mean((pred_v - true_v).pow(2).sum(-1).mean(-1), batch["mask"])
            total = exp_mse + self.lambda_vertex * vertex
        return total, {f"{prefix}/loss/total": total, f"{prefix}/loss/exp_mse": exp_mse, f"{prefix}/loss/vertex": vertex}
