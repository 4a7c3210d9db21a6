"""A container of one stage's validation/test metrics that logs them all the same way."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import nn


def counted_items(batch: dict[str, Any], size: int) -> int:
    """Items of an evaluation batch that count: ``size``, or 0 for a batch of padding.

    A rank left without evaluation items gets one duplicate marked ``pad`` (``datamodules.shard_stream.EvalItems``);
    its step still logs every key, with weight 0 and no metric update, so the rank joins the metric
    synchronisation without changing any value. Padding never shares a batch with real items.
    """
    pad = batch.get("pad")
    if pad is None or not bool(pad.any()):
        return size
    if not bool(pad.all()):
        raise ValueError("an evaluation batch mixes padding and real items; padding must come in batches of its own")
    return 0


class StageMetrics(nn.Module):
    """Subclasses assign torchmetrics Metrics as attributes; one instance per stage (val, test).

    Logging the Metric objects (not computed values) lets Lightning reduce them across ranks and
    reset them at the end of the epoch.
    """

    prog_bar_metric = ""  # the one metric shown in the progress bar

    def log_to(self, module: L.LightningModule, stage: str, batch_size: int) -> None:
        """Log every metric object (``batch_size`` 0 for a batch of padding, see :func:`counted_items`)."""
        for name, metric in self.named_children():
            module.log(f"{stage}/{name}", metric, on_epoch=True, batch_size=batch_size, prog_bar=name == self.prog_bar_metric)
