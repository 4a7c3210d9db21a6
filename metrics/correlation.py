"""Pearson correlation from running sums: exact under DDP, and harmless on a rank that saw no data."""

from __future__ import annotations

import torch
from torchmetrics import Metric


def pearson_from_sums(n: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor, sxx: torch.Tensor, syy: torch.Tensor, sxy: torch.Tensor) -> torch.Tensor:
    cov = sxy - sx * sy / n
    var_x, var_y = sxx - sx * sx / n, syy - sy * sy / n
    return cov / (var_x * var_y).clamp(min=1e-24).sqrt()


class PearsonFromSums(Metric):
    """Pearson correlation of all (x, y) pairs seen, optionally masked.

    Sufficient statistics in float64 with ``sum`` reduction, so the DDP result equals the
    single-process result and a rank with no batches contributes zeros instead of an empty list.
    Used for the lip-opening correlation of predicted and true mouth opening over time.
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("n", "sx", "sy", "sxx", "syy", "sxy"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        x, y = x.detach().double().flatten(), y.detach().double().flatten()
        if mask is not None:
            keep = mask.flatten().bool()
            x, y = x[keep], y[keep]
        self.n += x.numel()
        self.sx += x.sum()
        self.sy += y.sum()
        self.sxx += (x * x).sum()
        self.syy += (y * y).sum()
        self.sxy += (x * y).sum()

    def compute(self) -> torch.Tensor:
        if self.n < 2:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return pearson_from_sums(self.n, self.sx, self.sy, self.sxx, self.syy, self.sxy)
