"""LightningModule for the renderer stage: GAN training logic only (generator, critic and losses are injected)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric

from datamodules.face_masks import SKETCH_CHANNELS, FaceMasker
from lightning_modules.hparams import save_hparams
from lightning_modules.renderer.discriminator import PatchDiscriminator
from lightning_modules.renderer.generator import FIARenderer, blend, coefficient_vector
from lightning_modules.renderer.loss import RendererLoss, hinge_d_loss, masked_l1
from lightning_modules.stage_metrics import StageMetrics, counted_items
from metrics.expression_response import ExpressionResponse


class RendererEvalMetrics(StageMetrics):
    """Validation/test reconstruction metrics (one instance per stage, reduced across ranks by torchmetrics)."""

    prog_bar_metric = "l1_mask"

    def __init__(self) -> None:
        super().__init__()
        self.l1 = MeanMetric()  # whole blended frame, [-1, 1] units
        self.l1_mask = MeanMetric()  # over the redrawn region only: the number the renderer controls
        self.l1_teeth = MeanMetric()
        self.psnr_mask = MeanMetric()  # dB over the redrawn region, images mapped to [0, 1]; frames with an empty region are left out
        self.mouth_response = ExpressionResponse()  # inner mouth redrawn with the partner frame's β: does the mouth follow β at all?


class RendererModule(L.LightningModule):
    """Trains :class:`FIARenderer` against :class:`PatchDiscriminator` with manual optimisation.

    Each step: the critic step (once ``disc_start_step`` is reached) on real frames and detached
    fakes in one forward pass (one DDP forward, one backward), then the generator step with the
    critic frozen by ``toggled_optimizer``. Gradients are clipped by hand (Lightning's trainer-level
    clipping does not apply to manual optimisation) and schedulers are stepped every step.

    Args:
        net: the generator (its coefficient widths are linked from the face model by the CLI).
        discriminator: the patch critic.
        loss: generator objective (λ1 L1 + λ2 perceptual + λ3 adversarial + λ4 teeth L1).
        face_model: face model ``.npz`` of the shards (linked from the data config; recorded for inference).
        disc_start_step: generator steps before the critic and the adversarial term start.
        gradient_clip_val: max gradient norm of each network (0 = no clipping).
        optimizer_g: generator optimizer factory.
        optimizer_d: critic optimizer factory.
        scheduler_g: optional generator LR scheduler factory (stepped every step).
        scheduler_d: optional critic LR scheduler factory (stepped every critic step).
    """

    def __init__(
        self,
        net: FIARenderer,
        discriminator: PatchDiscriminator,
        loss: RendererLoss,
        face_model: str | None = None,
        disc_start_step: int = 1000,
        gradient_clip_val: float = 1.0,
        optimizer_g: OptimizerCallable = torch.optim.Adam,
        optimizer_d: OptimizerCallable = torch.optim.Adam,
        scheduler_g: LRSchedulerCallable | None = None,
        scheduler_d: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        save_hparams(self, networks=["net", "discriminator", "loss"], factories=["optimizer_g", "optimizer_d", "scheduler_g", "scheduler_d"])
        self.net, self.discriminator, self.loss = net, discriminator, loss
        if net.sketch_channels not in (0, SKETCH_CHANNELS):
            raise ValueError(f"net.sketch_channels must be 0 or {SKETCH_CHANNELS} (FaceMasker.sketch), got {net.sketch_channels}")
        # draws the mouth sketch from the batch's coefficients (so the β-swap of validation redraws it too)
        self.sketcher = FaceMasker(face_model) if net.sketch_channels else None
        self.factories = (optimizer_g, optimizer_d, scheduler_g, scheduler_d)
        self.eval_metrics = nn.ModuleDict({"val": RendererEvalMetrics(), "test": RendererEvalMetrics()})
        # generator steps taken, saved in checkpoints: trainer.global_step counts the steps of both
        # optimizers in manual optimisation, so it cannot tell when the critic should start
        self.register_buffer("generator_steps", torch.zeros((), dtype=torch.long))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The blended frame Î for a batch (source, reference, mask, coefficients)."""
        source, mask = batch["source"], batch["mask"]
        out = self.net(source * (1 - mask), mask, batch["reference"], coefficient_vector(batch["shape"], batch["exp"], batch["pose"]), self.sketch(batch))
        return blend(source, out.to(source.dtype), mask)

    def sketch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The mouth sketch of the batch's coefficients, for a renderer that takes one (else None)."""
        if self.sketcher is None:
            return None
        return self.sketcher.sketch(batch["shape"], batch["exp"], batch["pose"], batch["camera"], batch["source"].shape[-1])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        real, mask, bs = batch["source"], batch["mask"], len(batch["source"])
        fake = self(batch)
        critic = int(self.generator_steps) >= self.hparams.disc_start_step
        logs: dict[str, torch.Tensor] = {}

        if critic:
            with self.toggled_optimizer(opt_d):
                # real and fake through the critic in one call: one DDP forward per backward
                logits = self.discriminator(torch.cat([real, fake.detach()]), torch.cat([mask, mask])).float()
                loss_d = hinge_d_loss(logits[:bs], logits[bs:])
                opt_d.zero_grad(set_to_none=True)
                self.manual_backward(loss_d)
                self.clip_gradients(opt_d, self.hparams.gradient_clip_val or None, "norm")
                opt_d.step()
            logs |= {"train/loss/critic": loss_d.detach(), "train/critic/real": logits[:bs].mean().detach(), "train/critic/fake": logits[bs:].mean().detach()}

        with self.toggled_optimizer(opt_g):
            fake_logits = self.discriminator(fake, mask) if critic else None
            loss_g, parts = self.loss(fake, real, batch["teeth"], fake_logits, "train")
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss_g)
            self.clip_gradients(opt_g, self.hparams.gradient_clip_val or None, "norm")
            opt_g.step()
        self.generator_steps += 1
        self._step_schedulers(critic)
        self.log_dict(logs | parts, batch_size=bs)
        self.log("train/loss", loss_g.detach(), prog_bar=True, logger=False, batch_size=bs)

    def _step_schedulers(self, critic: bool) -> None:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        schedulers = schedulers if isinstance(schedulers, list) else [schedulers]
        for name, sched in zip(self._scheduler_names, schedulers):
            if name == "g" or critic:
                sched.step()

    def _evaluate(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        fake = self(batch).float()
        real, mask, teeth = batch["source"].float(), batch["mask"].float(), batch["teeth"].float()
        bs = counted_items(batch, len(real))
        # frame means logged with the frame count: the split's values whatever the batches and ranks
        self.log_dict({k: v.mean() for k, v in self.loss.per_frame(fake, real, teeth, stage).items()}, on_epoch=True, sync_dist=True, batch_size=bs)
        m = self.eval_metrics[stage]
        if bs == 0:  # padding: every key logged, nothing counted
            m.log_to(self, stage, bs)
            return
        with torch.autocast(fake.device.type, enabled=False):
            region = (mask > 0).float()
            m.l1.update((fake - real).abs().mean((1, 2, 3)))
            m.l1_mask.update(masked_l1(fake, real, region, per_sample=True))
            m.l1_teeth.update(masked_l1(fake, real, teeth, per_sample=True))
            mse = masked_l1((fake + 1) / 2, (real + 1) / 2, region, per_sample=True, power=2)
            m.psnr_mask.update(-10 * torch.log10(mse.clamp_min(1e-10)), region.flatten(1).amax(1))
        # each frame drawn again with its partner's β (the clip's next evaluated frame, carried in the item)
        swapped = self({**batch, "exp": batch["partner_exp"]}).float()
        with torch.autocast(fake.device.type, enabled=False):
            m.mouth_response.update(fake, swapped, real, batch["partner"].float(), torch.maximum(teeth, batch["partner_teeth"].float()))
        m.log_to(self, stage, bs)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> Any:
        make_g, make_d, sched_g, sched_d = self.factories
        opt_g, opt_d = make_g(self.net.parameters()), make_d(self.discriminator.parameters())
        schedulers, self._scheduler_names = [], []
        for name, factory, opt in (("g", sched_g, opt_g), ("d", sched_d, opt_d)):
            if factory is not None:
                schedulers.append(factory(opt))
                self._scheduler_names.append(name)
        return [opt_g, opt_d], schedulers
