"""A container of one stage's validation/test metrics that logs them all the same way."""

from __future__ import annotations

import lightning as L
from torch import nn


class StageMetrics(nn.Module):
    """Subclasses assign torchmetrics Metrics as attributes; one instance per stage (val, test).

    Logging the Metric objects (not computed values) lets Lightning reduce them across ranks and
    reset them at the end of the epoch.
    """

    prog_bar_metric = ""  # the one metric shown in the progress bar

    def log_to(self, module: L.LightningModule, stage: str, batch_size: int) -> None:
        for name, metric in self.named_children():
            module.log(f"{stage}/{name}", metric, on_epoch=True, batch_size=batch_size, prog_bar=name == self.prog_bar_metric)
