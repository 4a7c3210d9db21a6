"""LightningModule for the audio-to-expression stage: training logic only (the network is injected)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric

from lightning_modules.a2e.inference import predict_expressions
from lightning_modules.a2e.loss import A2ELoss
from lightning_modules.a2e.transformer import A2ETransformer
from lightning_modules.hparams import save_hparams
from lightning_modules.stage_metrics import StageMetrics, counted_items
from metrics.correlation import PearsonFromSums
from preprocess.face_model import FaceModel


def centred(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x [B, T] minus its mean over each row's masked frames."""
    return x - (x * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)


class A2EEvalMetrics(StageMetrics):
    """Validation/test metrics of one stage (one instance per stage, reduced across ranks by torchmetrics)."""

    prog_bar_metric = "exp_mse"

    def __init__(self) -> None:
        super().__init__()
        self.exp_mse = MeanMetric()  # the paper's "expression error"
        self.exp_mse_clip_mean = MeanMetric()  # trivial predictor: every frame = the clip's mean expression (an oracle)
        self.exp_mse_history_mean = MeanMetric()  # trivial predictor available at inference: the history's mean
        self.mouth_vertex_mm = MeanMetric()  # mean distance of the mouth vertices, face-model millimetres
        self.mouth_vertex_mm_clip_mean = MeanMetric()  # the same for the clip-mean predictor
        self.mouth_vertex_mm_history_mean = MeanMetric()  # and for the history-mean predictor
        self.lip_open_corr = PearsonFromSums()  # predicted vs true inner-lip opening over time
        # the history mean's opening is one level per window: how much of lip_open_corr the level alone explains
        self.lip_open_corr_history_mean = PearsonFromSums()
        # both openings minus their window's mean: does the mouth move with the audio within 0.64 s, level aside
        self.lip_motion_corr = PearsonFromSums()
        # exp_mse split: the part of Δβ in the lips' subspace of β (FaceModel.mouth_subspace); the rest is exp_mse minus it
        self.exp_mse_mouth = MeanMetric()
        self.exp_mse_mouth_clip_mean = MeanMetric()
        self.exp_mse_mouth_history_mean = MeanMetric()


class A2EModule(L.LightningModule):
    """Trains :class:`A2ETransformer` on windows from :class:`datamodules.a2e_datamodule.A2EDataModule`.

    Args:
        net: the transformer (its audio/shape/expression widths are linked from the data config).
        window: T, frames per window (linked from the data config; used by ``predict``).
        num_history: N (linked from the data config).
        face_model: face model ``.npz`` of the shards (linked from the data config; None = shipped default).
        lambda_vertex: weight λ_v of the mouth-vertex loss.
        lambda_rest: weight of the expression MSE outside the lips' subspace of β (1 = the paper's loss).
        inference_overlap: frames shared by neighbouring windows in ``predict`` (None = half the window).
        optimizer: optimizer factory, chosen in YAML.
        scheduler: optional LR scheduler factory, stepped every optimizer step.
    """

    def __init__(
        self,
        net: A2ETransformer,
        window: int = 16,
        num_history: int = 16,
        face_model: str | None = None,
        lambda_vertex: float = 0.1,
        lambda_rest: float = 1.0,
        inference_overlap: int | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        if inference_overlap is None:
            inference_overlap = window // 2
        if not 0 <= inference_overlap < window:
            raise ValueError(f"model.init_args.inference_overlap must be in [0, window={window}); got {inference_overlap}")
        save_hparams(self, networks=["net"], factories=["optimizer", "scheduler"])
        self.hparams.inference_overlap = inference_overlap
        self.net = net
        self.loss = A2ELoss(FaceModel(face_model), lambda_vertex, lambda_rest)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.eval_metrics = nn.ModuleDict({"val": A2EEvalMetrics(), "test": A2EEvalMetrics()})

    @property
    def face_model(self) -> FaceModel:
        return self.loss.face_model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(batch["audio"], batch["shape_ref"], batch["history"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        total, logs = self.loss(self(batch), batch, "train")
        self.log_dict(logs, prog_bar=False, batch_size=len(batch["audio"]))
        self.log("train/loss", total, prog_bar=True, logger=False, batch_size=len(batch["audio"]))
        return total

    def _evaluate(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        pred = self(batch).float()
        bs = counted_items(batch, len(batch["audio"]))
        total, logs = self.loss(pred, batch, stage)
        # each is a mean over the batch's valid frames: weighted by their count, the split's mean whatever the batches and ranks
        frames = int(batch["mask"].sum()) if bs else 0
        self.log_dict(logs, on_epoch=True, sync_dist=True, batch_size=frames)
        m, mask = self.eval_metrics[stage], batch["mask"].float()
        if bs == 0:  # padding: every key logged, nothing counted
            m.log_to(self, stage, bs)
            return
        with torch.autocast(pred.device.type, enabled=False):  # vertex offsets are sub-mm differences of ~100 mm coordinates
            for name, guess in (("", pred), ("_clip_mean", batch["exp_mean"][:, None]), ("_history_mean", batch["history"].mean(1, keepdim=True))):
                mouth_part, rest = self.loss.split_mse(guess - batch["exp"])
                getattr(m, f"exp_mse{name}").update(mouth_part + rest, mask)
                getattr(m, f"exp_mse_mouth{name}").update(mouth_part, mask)
            fm, mouth = self.face_model, self.loss.mouth
            pred_v = fm.vertices(batch["shape"], pred)
            true_v = fm.vertices(batch["shape"], batch["exp"])
            mean_v = fm.vertices(batch["shape"], batch["exp_mean"][:, None].expand_as(pred))
            hist_v = fm.vertices(batch["shape"], batch["history"].mean(1, keepdim=True).expand_as(pred))
            m.mouth_vertex_mm.update((pred_v[..., mouth, :] - true_v[..., mouth, :]).norm(dim=-1).mean(-1), mask)
            m.mouth_vertex_mm_clip_mean.update((mean_v[..., mouth, :] - true_v[..., mouth, :]).norm(dim=-1).mean(-1), mask)
            m.mouth_vertex_mm_history_mean.update((hist_v[..., mouth, :] - true_v[..., mouth, :]).norm(dim=-1).mean(-1), mask)
            pred_open, true_open = fm.mouth_opening(pred_v), fm.mouth_opening(true_v)
            m.lip_open_corr.update(pred_open, true_open, mask)
            m.lip_open_corr_history_mean.update(fm.mouth_opening(hist_v), true_open, mask)
            m.lip_motion_corr.update(centred(pred_open, mask), centred(true_open, mask), mask)
        m.log_to(self, stage, bs)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """One whole clip per batch -> its key, predicted and true expressions [T, De]."""
        pred = predict_expressions(
            self.net, batch["audio"][0], batch["shape_ref"][0], batch["history"][0], self.hparams.window, self.hparams.inference_overlap
        )
        return {"key": batch["key"][0], "exp_pred": pred.cpu(), "exp": batch["exp"][0].cpu()}

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}
