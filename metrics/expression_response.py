"""How much a renderer's mouth moves with the expression: its change when only β changes, over the real frames' change."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class ExpressionResponse(Metric):
    """Σ|out(β) − out(β')|·region / Σ|real − real'|·region, summed over every pair and process.

    Each frame is paired with another (``real'`` with its fitted β'); the renderer draws the first frame
    again with β' in place of β, everything else kept. 1 means the redrawn region changes as much as
    the real frames do; 0 means the renderer ignores β (a mouth that does not follow the audio).
    The real frames also differ by head motion, so well-trained renderers land below 1: compare runs.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("out_change", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("real_change", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, out: torch.Tensor, out_swapped: torch.Tensor, real: torch.Tensor, real_other: torch.Tensor, region: torch.Tensor) -> None:
        """All [B, C, H, W] (region [B, 1, H, W] in [0, 1])."""
        self.out_change += ((out - out_swapped).abs() * region).double().sum()
        self.real_change += ((real - real_other).abs() * region).double().sum()

    def compute(self) -> torch.Tensor:
        if self.real_change == 0:  # no pair seen (batches of one frame) or identical frames: undefined, not 0
            return torch.tensor(float("nan"))
        return (self.out_change / self.real_change).float()
