"""LightningModule for the renderer stage: GAN training logic only (generator, critic and losses are injected)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchmetrics import MeanMetric

from datamodules.face_masks import SKETCH_CHANNELS, FaceMasker
from lightning_modules.hparams import save_hparams
from lightning_modules.renderer.discriminator import PatchDiscriminator
from lightning_modules.renderer.generator import FIARenderer, blend, coefficient_vector
from lightning_modules.renderer.loss import RendererLoss, hinge_d_loss, masked_l1
from lightning_modules.stage_metrics import StageMetrics, counted_items
from metrics.expression_response import ExpressionResponse

IMAGE_KEYS = ("source", "reference", "mask", "teeth")


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


def micro_batches(batch: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """``batch`` cut into ``parts`` equal micro-batches along the first dimension."""
    size = len(batch["source"])
    if size % parts:
        raise ValueError(f"model.init_args.accumulate {parts} must divide the batch of {size}: change data.init_args.batch_size or accumulate")
    step = size // parts
    return [{k: v[i : i + step] if torch.is_tensor(v) or isinstance(v, list) else v for k, v in batch.items()} for i in range(0, size, step)]


class RendererModule(L.LightningModule):
    """Trains :class:`FIARenderer` against :class:`PatchDiscriminator` with manual optimisation.

    Each step (one *iteration*: ``global_step``, ``max_steps``, checkpoint names, validation and
    logging all count these): the critic step (once ``disc_start_step`` iterations are done) on real
    frames and detached fakes in one call, then the generator step with the critic frozen by
    ``toggled_optimizer``. The critic's optimizer step goes to the strategy directly, so Lightning
    counts only the generator's. Gradients are clipped in ``on_before_optimizer_step``, where mixed
    precision has unscaled them (clipping before ``step()`` would clip fp16's scaled gradients).
    Under :class:`~lightning_modules.ddp_networks.NetworkDDPStrategy` the generator and the critic
    are wrapped apart, so each backward all-reduces only its own network's gradients.

    Args:
        net: the generator (its coefficient widths are linked from the face model by the CLI).
        discriminator: the patch critic.
        loss: generator objective (λ1 L1 + λ2 perceptual + λ3 adversarial + λ4 teeth L1).
        face_model: face model ``.npz`` of the shards (linked from the data config; recorded for inference).
        disc_start_step: iterations before the critic and the adversarial term start.
        gradient_clip_val: max gradient norm of each network (0 = no clipping).
        accumulate: micro-batches per batch: each network's gradients are summed over them before one
            step (the loader's batch is the effective batch; memory is that of a micro-batch).
        ema_decay: keep an exponential moving average of the generator's weights with this decay (e.g.
            0.999; None = none); validation, ``evaluate``, ``dub``, ``stream`` and ``export`` use it.
        ema_warmup: the average's decay after t iterations is min(ema_decay, (1 + t) / (ema_warmup + t)).
        channels_last: train both networks in the channels-last memory layout (faster convolutions on tensor cores).
        compile: ``torch.compile`` the generator and the critic, each on its own (a compiled training step
            would recompile whenever ``toggled_optimizer`` changes ``requires_grad``); a string names the
            backend (true = inductor; ``aot_eager`` captures the graphs without generating code).
        optimizer_g: generator optimizer factory.
        optimizer_d: critic optimizer factory.
        scheduler_g: optional generator LR scheduler factory (stepped every iteration).
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
        accumulate: int = 1,
        ema_decay: float | None = None,
        ema_warmup: int = 10,
        channels_last: bool = False,
        compile: bool | str = False,
        optimizer_g: OptimizerCallable = torch.optim.Adam,
        optimizer_d: OptimizerCallable = torch.optim.Adam,
        scheduler_g: LRSchedulerCallable | None = None,
        scheduler_d: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        save_hparams(self, networks=["net", "discriminator", "loss"], factories=["optimizer_g", "optimizer_d", "scheduler_g", "scheduler_d"])
        if net.sketch_channels not in (0, SKETCH_CHANNELS):
            raise ValueError(f"net.sketch_channels must be 0 or {SKETCH_CHANNELS} (FaceMasker.sketch), got {net.sketch_channels}")
        if accumulate < 1 or (ema_decay is not None and not 0 < ema_decay < 1):
            raise ValueError(f"need accumulate >= 1 and 0 < ema_decay < 1; got {accumulate}, {ema_decay}")
        self.net, self.discriminator, self.loss = net, discriminator, loss
        self.net_ema = copy.deepcopy(net).requires_grad_(False) if ema_decay else None
        # draws the mouth sketch from the batch's coefficients (so the β-swap of validation redraws it too)
        self.sketcher = FaceMasker(face_model) if net.sketch_channels else None
        self.factories = (optimizer_g, optimizer_d, scheduler_g, scheduler_d)
        self.eval_metrics = nn.ModuleDict({"val": RendererEvalMetrics(), "test": RendererEvalMetrics()})
        self.ddp_wrappers: dict[str, DistributedDataParallel] = {}  # filled by NetworkDDPStrategy
        self._training_calls: dict[str, nn.Module] = {}

    # -- the networks --------------------------------------------------------------------------------
    def ddp_networks(self) -> tuple[str, ...]:
        """The networks NetworkDDPStrategy wraps one by one (the rest of the module is frozen or metric state)."""
        return ("net", "discriminator")

    @property
    def inference_net(self) -> FIARenderer:
        """The generator to validate and export: the weight average when there is one."""
        return self.net_ema if self.net_ema is not None else self.net

    def training_call(self, name: str) -> nn.Module:
        """What a training step calls for network ``name``: its DDP wrapper under NetworkDDPStrategy, compiled if asked."""
        if name not in self._training_calls:
            module = self.ddp_wrappers.get(name) or getattr(self, name)
            backend = "inductor" if self.hparams.compile is True else self.hparams.compile
            self._training_calls[name] = torch.compile(module, backend=backend) if backend else module
        return self._training_calls[name]

    def setup(self, stage: str) -> None:
        self._training_calls = {}  # the strategy may wrap the networks anew
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)
            self.discriminator.to(memory_format=torch.channels_last)

    @contextmanager
    def _critic_mode(self, first: bool) -> Iterator[None]:
        """The critic in eval mode for micro-batches after the first: spectral norm advances its power iteration on
        every training-mode call, and the critic has no other mode-dependent layer, so k micro-batches advance it
        once, as one batch does."""
        self.discriminator.train(first)
        try:
            yield
        finally:
            self.discriminator.train(True)

    @contextmanager
    def _no_sync(self, name: str, skip: bool) -> Iterator[None]:
        """No gradient all-reduce for network ``name`` while ``skip`` (micro-batches before the last, the frozen critic)."""
        wrapper = self.ddp_wrappers.get(name)
        with wrapper.no_sync() if skip and wrapper is not None else nullcontext():
            yield

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor], net: nn.Module | None = None) -> torch.Tensor:
        """The blended frame Î for a batch (source, reference, mask, coefficients), drawn by ``net`` (default: the generator)."""
        source, mask = batch["source"], batch["mask"]
        out = (self.net if net is None else net)(source * (1 - mask), mask, batch["reference"], coefficient_vector(batch["shape"], batch["exp"], batch["pose"]), self.sketch(batch))
        return blend(source, out.to(source.dtype), mask)

    def sketch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The mouth sketch of the batch's coefficients, for a renderer that takes one (else None)."""
        if self.sketcher is None:
            return None
        return self.sketcher.sketch(batch["shape"], batch["exp"], batch["pose"], batch["camera"], batch["source"].shape[-1])

    # -- training ------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        if self.hparams.channels_last:
            batch = {k: v.contiguous(memory_format=torch.channels_last) if k in IMAGE_KEYS else v for k, v in batch.items()}
        k = self.hparams.accumulate
        parts = micro_batches(batch, k)
        # the teeth term divides by the teeth pixels of the whole step (all ranks, all micro-batches), so that k micro-batches
        # on W ranks give the gradient of one batch k·W times as large: each part's share of that denominator
        teeth_pixels = batch["teeth"].sum()
        if self.trainer.world_size > 1:
            teeth_pixels = self.trainer.strategy.reduce(teeth_pixels, reduce_op="mean")
        teeth_pixels = teeth_pixels / k
        generator, critic_call = self.training_call("net"), self.training_call("discriminator")
        critic = self.global_step >= self.hparams.disc_start_step  # a Python int: no host sync
        # one batch: drawn once, before toggling (which freezes the generator), for both steps; micro-batches are
        # drawn without a graph for the critic and again with one for the generator, so only one graph is alive
        fakes: list[torch.Tensor | None] = [self(parts[0], generator)] if k == 1 else [None] * k
        logs: dict[str, torch.Tensor] = {}

        if critic:
            with self.toggled_optimizer(opt_d):
                opt_d.zero_grad(set_to_none=True)
                for i, part in enumerate(parts):
                    real, mask, n = part["source"], part["mask"], len(part["source"])
                    if (fake := fakes[i]) is None:
                        with torch.no_grad():
                            fake = self(part, generator)
                    with self._no_sync("discriminator", skip=i < k - 1), self._critic_mode(first=i == 0):
                        # real and fake through the critic in one call: one DDP forward per backward
                        logits = critic_call(torch.cat([real, fake.detach()]), torch.cat([mask, mask])).float()
                        loss_d = hinge_d_loss(logits[:n], logits[n:])
                        self.manual_backward(loss_d / k)
                    logs = self._add(logs, {"train/loss/critic": loss_d, "train/critic/real": logits[:n].mean(), "train/critic/fake": logits[n:].mean()}, k)
                # through the strategy, not opt_d.step(): Lightning counts optimizer steps, and an iteration is one generator step
                self.trainer.strategy.optimizer_step(opt_d.optimizer, closure=lambda: None, model=self)

        with self.toggled_optimizer(opt_g):
            opt_g.zero_grad(set_to_none=True)
            for i, part in enumerate(parts):
                with self._no_sync("net", skip=i < k - 1):
                    fake = fakes[i] if fakes[i] is not None else self(part, generator)
                    # the frozen critic only passes gradients to the generator: nothing of its own to all-reduce
                    with self._no_sync("discriminator", skip=True), self._critic_mode(first=i == 0):
                        fake_logits = critic_call(fake, part["mask"]) if critic else None
                    loss_g, parts_g = self.loss(fake, part["source"], part["teeth"], fake_logits, "train", teeth_pixels=teeth_pixels)
                    self.manual_backward(loss_g / k)
                logs = self._add(logs, parts_g, k)
            opt_g.step()
        self._update_ema()
        self._step_schedulers(critic)
        self.log_dict(logs, batch_size=len(batch["source"]))
        self.log("train/loss", logs["train/loss/total"], prog_bar=True, logger=False, batch_size=len(batch["source"]))

    @staticmethod
    def _add(logs: dict[str, torch.Tensor], parts: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
        """Running means of the micro-batches' logged values (detached)."""
        return {key: logs.get(key, 0) + value.detach() / k for key, value in parts.items()} | {key: v for key, v in logs.items() if key not in parts}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # here the precision plugin has unscaled fp16 gradients (GradScaler.unscale_), for either network
        self.clip_gradients(optimizer, self.hparams.gradient_clip_val or None, "norm")

    @torch.no_grad()
    def _update_ema(self) -> None:
        """After the t-th iteration: ema ← d·ema + (1 − d)·net with d = min(ema_decay, (1 + t) / (ema_warmup + t)); buffers copied."""
        if self.net_ema is None:
            return
        t = self.global_step
        decay = min(self.hparams.ema_decay, (1 + t) / (self.hparams.ema_warmup + t))
        torch._foreach_lerp_(list(self.net_ema.parameters()), list(self.net.parameters()), 1 - decay)
        for average, live in zip(self.net_ema.buffers(), self.net.buffers()):
            average.copy_(live)

    def _step_schedulers(self, critic: bool) -> None:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        schedulers = schedulers if isinstance(schedulers, list) else [schedulers]
        for name, sched in zip(self._scheduler_names, schedulers):
            if name == "g" or critic:
                sched.step()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # checkpoints written before iterations were counted by global_step kept their own generator-step counter
        checkpoint["state_dict"].pop("generator_steps", None)

    # -- evaluation ----------------------------------------------------------------------------------
    def _evaluate(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        net = self.inference_net
        fake = self(batch, net).float()
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
        swapped = self({**batch, "exp": batch["partner_exp"]}, net).float()
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
