"""Renderer stage: mask geometry, network shapes, blending, the manual-optimisation GAN step, overfit, DDP + resume."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from datamodules.face_masks import FaceMasker, fill_polygons, splat_points
from datamodules.renderer_datamodule import RendererDataModule
from lightning_modules.renderer.discriminator import PatchDiscriminator
from lightning_modules.renderer.generator import CrossAttention, FIARenderer, blend
from lightning_modules.renderer.loss import PerceptualLoss, RendererLoss, detail_loss
from lightning_modules.renderer.module import RendererModule
from metrics.backbones import MissingWeightsError
from preprocess.face_model import FaceModel
from tests.synthetic_shards import write_synthetic_shards
from tests.test_training_cli import RENDERER_BASE, mlflow_runs, run_cli, steps, tiny_args

TINY = {"widths": (8, 16, 16, 32), "decoder_widths": (8, 16, 16, 32), "blocks": 1, "encoder_blocks": 1, "attention_heads": 2, "mlp_hidden": 16}
EYES = (33, 133, 263, 362, 159, 386)  # eye corners and upper lids in MediaPipe's 468-vertex topology


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    return write_synthetic_shards(tmp_path_factory.mktemp("frames"), {"train": 3, "val": 2, "test": 2}, frames=24, image_size=64)


def frontal(size: int = 64) -> dict[str, torch.Tensor]:
    fm = FaceModel()
    return {
        "shape": torch.zeros(1, fm.shape_dim), "exp": torch.zeros(1, fm.exp_dim), "pose": torch.zeros(1, 6),
        "camera": torch.tensor([[0.8 * size / 180, size / 2, size / 2]]),
    }


def test_fill_polygons_covers_a_known_square():
    square = torch.tensor([[[10.0, 10.0], [30.0, 10.0], [30.0, 20.0], [10.0, 20.0]]])
    m = fill_polygons(square, 40)[0, 0]
    assert m.sum() == 20 * 10 and m[15, 20] == 1 and m[5, 20] == 0 and m[15, 35] == 0


def test_learnable_mask_contains_mouth_and_chin_and_excludes_the_eyes():
    c = frontal()
    fm = FaceModel()
    pts = fm(c["shape"], c["exp"], c["pose"], c["camera"])[0].round().long()
    mask, teeth = FaceMasker(kind="learnable")(c["shape"], c["exp"], c["pose"], c["camera"], 64)

    def at(i: int) -> float:
        x, y = pts[i].tolist()
        return float(mask[0, 0, y, x])

    assert all(at(i) > 0.99 for i in fm.index_sets["mouth"].tolist())
    chin = fm.index_sets["lower_face"][pts[fm.index_sets["lower_face"], 1].argmax()]
    assert at(int(chin)) > 0.99
    assert all(at(i) == 0 for i in EYES)
    assert 0 < teeth.sum() < mask.sum()  # inner mouth only
    naive, _ = FaceMasker(kind="naive", feather=0.0)(c["shape"], c["exp"], c["pose"], c["camera"], 64)
    assert naive[0, 0, 32:].min() == 1 and naive[0, 0, :31].max() == 0


def test_mask_follows_an_opened_jaw():
    """A bigger mouth opening (the β that opens it most) moves the chin down and the mask with it."""
    fm, c = FaceModel(), frontal()
    masker = FaceMasker(feather=0.0, neck=False)
    exp = widest_opening(fm)
    closed, _ = masker(c["shape"], c["exp"], c["pose"], c["camera"], 64)
    opened, _ = masker(c["shape"], exp, c["pose"], c["camera"], 64)
    assert not torch.equal(closed, opened)


def widest_opening(fm: FaceModel, scale: float = 3.0) -> torch.Tensor:
    """The one-hot β (times ``scale``) that opens the mouth of the mean face most."""
    zero = torch.zeros(1, fm.shape_dim)
    opening = [float(fm.mouth_opening(fm.vertices(zero, torch.eye(fm.exp_dim)[k : k + 1] * scale))) for k in range(fm.exp_dim)]
    return torch.eye(fm.exp_dim)[[max(range(fm.exp_dim), key=opening.__getitem__)]] * scale


def test_mouth_sketch_draws_the_lips_where_they_project_and_opens_with_the_mouth():
    fm, c = FaceModel(), frontal(128)
    masker = FaceMasker()
    closed = masker.sketch(c["shape"], c["exp"], c["pose"], c["camera"], 128)
    opened = masker.sketch(c["shape"], widest_opening(fm), c["pose"], c["camera"], 128)
    assert closed.shape == (1, 2, 128, 128) and 0 <= closed.min() and closed.max() <= 1
    pts = fm(c["shape"], c["exp"], c["pose"], c["camera"])[0].round().long()
    lips = [float(closed[0, 0, y, x]) for x, y in pts[fm.index_sets["mouth"]].tolist()]
    assert min(lips) > 0.5  # a dot on every lip vertex (within half a pixel of its centre)
    assert all(float(closed[0, 0, y, x]) < 1e-3 for x, y in pts[list(EYES)].tolist())
    assert opened[0, 1].sum() > 2 * closed[0, 1].sum() + 10  # the open mouth is a bigger filled loop


def test_windowed_dots_equal_dots_drawn_over_the_whole_crop():
    """splat_points draws each dot only near its centre; the image must match Gaussians evaluated everywhere,
    including dots whose window crosses the crop's edge and dots wholly outside it."""
    torch.manual_seed(0)
    size, sigma = 48, 1.3
    points = torch.rand(3, 20, 2) * (size + 16) - 8
    grid = torch.arange(size, dtype=torch.float32)
    d2 = (grid.view(1, 1, 1, size) - points[..., 0, None, None]) ** 2 + (grid.view(1, 1, size, 1) - points[..., 1, None, None]) ** 2
    everywhere = torch.exp(-d2 / (2 * sigma**2)).amax(1, keepdim=True)
    assert torch.allclose(splat_points(points, size, sigma), everywhere, atol=1e-3)


def test_a_sketch_renderer_requires_the_sketch_and_its_output_follows_it():
    torch.manual_seed(0)
    net = FIARenderer(shape_dim=9, exp_dim=64, **TINY, sketch_channels=2).eval()
    x, m, coeffs = torch.randn(2, 3, 64, 64), torch.zeros(2, 1, 64, 64), torch.zeros(2, net.coeff_dim)
    with pytest.raises(ValueError, match="2-channel mouth sketch"):
        net(x, m, x, coeffs)
    sketch = torch.zeros(2, 2, 64, 64)
    moved = sketch.clone()
    moved[:, 1, 40:48, 24:40] = 1  # an open mouth where there was none
    with torch.no_grad():
        out = net(x, m, x[:1].expand(2, -1, -1, -1), coeffs, sketch)
        assert (net(x, m, x[:1].expand(2, -1, -1, -1), coeffs, moved) - out).abs().max() > 1e-3
        cached = net.render(x, m, net.encode_reference(x[:1]), coeffs, sketch)  # the runtime's path: reference encoded once
    assert torch.allclose(cached, out, atol=1e-5)


def test_encoder_decoder_shapes_and_attention_scales():
    net = FIARenderer(shape_dim=9, exp_dim=64, **TINY)
    x, m = torch.randn(2, 3, 64, 64), torch.zeros(2, 1, 64, 64)
    feats = net.encoder(torch.cat([torch.cat([x, m], 1)] * 2))
    assert [tuple(f.shape[1:]) for f in feats] == [(8, 64, 64), (8, 32, 32), (16, 16, 16), (16, 8, 8), (32, 4, 4)]
    sizes = []
    for mod in net.modules():
        if isinstance(mod, CrossAttention):
            mod.register_forward_hook(lambda _m, args, _o: sizes.append(args[0].shape[-1]))
    out = net(x, m, x, torch.zeros(2, net.coeff_dim))
    assert out.shape == (2, 3, 64, 64) and out.abs().max() <= 1
    assert net.attention_stage_scales() == [16, 8] and sorted(sizes) == [4, 8]  # 64/16 and 64/8 only
    only16 = FIARenderer(shape_dim=9, exp_dim=64, **{**TINY, "attention_scales": (16,)})
    assert only16.attention_stage_scales() == [16] and sum(isinstance(m, CrossAttention) for m in only16.modules()) == 1
    with pytest.raises(ValueError, match="attention_scales"):
        FIARenderer(**{**TINY, "attention_scales": (32,)})


@pytest.mark.parametrize("after", [False, True])
def test_source_skips_keep_their_colour_only_when_added_after_the_norm(after):
    """A per-channel constant added to the source's skip features (1/2 … 1/16: its colour and light, roughly) is
    removed by each stage's instance norm when the skip joins before it; after it, the output changes."""
    torch.manual_seed(0)
    net = FIARenderer(shape_dim=9, exp_dim=64, **TINY, skips_after_norm=after).eval()
    x, m = torch.randn(2, 3, 64, 64), torch.zeros(2, 1, 64, 64)
    src = net.encoder(torch.cat([x, m], 1))
    ref = src  # the reference path is not what is tested
    coeffs = torch.randn(2, net.coeff_dim)
    shifted = [src[0]] + [f + torch.randn(1, f.shape[1], 1, 1) for f in src[1:]]
    with torch.no_grad():
        change = (net.decode(shifted, ref, coeffs) - net.decode(src, ref, coeffs)).abs().max().item()
    assert change > 1e-2 if after else change < 1e-4


def test_default_widths_land_near_the_papers_parameter_count():
    n = sum(p.numel() for p in FIARenderer(shape_dim=80, exp_dim=64).parameters())
    assert abs(n / 69.24e6 - 1) < 0.02


def test_blend_keeps_pixels_outside_the_mask_exactly():
    source, generated = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., 8:, 4:12] = 1
    mask[..., 7, 4:12] = 0.3
    out = blend(source, generated, mask)
    outside = (mask == 0).expand_as(source)
    assert torch.equal(out[outside], source[outside])
    inside = (mask == 1).expand_as(source)
    assert torch.allclose(out[inside], generated[inside])


def test_detail_loss_asks_for_the_amount_of_detail_not_its_exact_place():
    """A texture moved by a pixel keeps its detail; the same texture blurred loses it. Pixel L1 ranks them the other
    way round, which is why a renderer unsure of where each edge goes draws a blur under L1 alone."""
    texture = torch.rand(1, 3, 64, 64) * 2 - 1
    moved = texture.roll(1, dims=-1)
    blurred = torch.nn.functional.avg_pool2d(texture, 3, 1, 1, count_include_pad=False)
    l1 = lambda a: (a - texture).abs().mean()  # noqa: E731
    assert l1(moved) > l1(blurred)
    assert detail_loss(moved, texture, 8) < 0.2 * detail_loss(blurred, texture, 8)
    assert detail_loss(texture, texture, 8) < 1e-6 and detail_loss(blurred, texture, 8, per_sample=True).shape == (1,)
    perceptual, teeth = PerceptualLoss("vgg19", pretrained=False), torch.zeros(1, 1, 64, 64)
    total, logs = RendererLoss(perceptual, lambda_detail=2.0)(blurred, texture, teeth, None, "train")
    without, logs_without = RendererLoss(perceptual)(blurred, texture, teeth, None, "train")
    assert torch.allclose(total - without, 2.0 * logs["train/loss/detail"], atol=1e-5) and "train/loss/detail" not in logs_without


def tiny_module(disc_start_step: int = 0, lr: float = 1e-3, sketch_channels: int = 0, **options) -> RendererModule:
    fm = FaceModel()
    return RendererModule(
        FIARenderer(shape_dim=fm.shape_dim, exp_dim=fm.exp_dim, **TINY, sketch_channels=sketch_channels),
        PatchDiscriminator(width=8, layers=2),
        RendererLoss(PerceptualLoss("efficientnet_lite0")),
        disc_start_step=disc_start_step,
        optimizer_g=lambda p: torch.optim.Adam(p, lr=lr),
        optimizer_d=lambda p: torch.optim.Adam(p, lr=lr),
        **options,
    )


def test_one_gan_step_in_bf16_updates_generator_and_critic(frames):
    dm = RendererDataModule(str(frames), image_size=64, batch_size=2, num_workers=0, frames_per_clip=2, clip_shuffle=1, train_batches_per_epoch=1)
    module = tiny_module()
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, datamodule=dm)
    after = module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("net.") for k in changed) and any(k.startswith("discriminator.") for k in changed)
    assert not any(k.startswith("loss.perceptual") for k in changed)  # frozen backbone
    assert trainer.global_step == 1  # one iteration: the critic's step is not counted apart


def test_colour_jitter_recolours_source_and_reference_alike_and_only_in_training(frames):
    plain = RendererDataModule(str(frames), image_size=64, num_workers=0, frames_per_clip=3)
    jittered = RendererDataModule(str(frames), image_size=64, num_workers=0, frames_per_clip=3, colour_jitter=0.3)
    clip = plain.decode(next(iter(plain.raw_samples("train"))))
    before, after = (dm.finish_batch(default_collate(dm.train_items(clip["__key__"], clip, np.random.default_rng(1)))) for dm in (plain, jittered))
    assert before["frame"].tolist() == after["frame"].tolist()
    for i in range(3):
        for c in range(3):
            # one affine map per channel: fitted on the source's unclipped pixels, it must also give the reference
            x, y = before["source"][i, c].flatten(), after["source"][i, c].flatten()
            keep = y.abs() < 0.999
            gain, offset = np.polyfit(x[keep].numpy(), y[keep].numpy(), 1)
            assert abs(gain - 1) > 1e-3 or abs(offset) > 1e-3  # recoloured
            ref, ref_after = before["reference"][i, c], after["reference"][i, c]
            keep = ref_after.abs() < 0.999
            assert torch.allclose(ref[keep] * float(gain) + float(offset), ref_after[keep], atol=1e-3)
    assert torch.equal(before["mask"], after["mask"]) and torch.equal(before["exp"], after["exp"])
    evals = [dm.finish_batch(default_collate(list(dm.eval_items(clip["__key__"], clip)))) for dm in (plain, jittered)]
    assert torch.equal(evals[0]["source"], evals[1]["source"])  # validation sees true colours
    with pytest.raises(ValueError, match="colour_jitter"):
        RendererDataModule(str(frames), colour_jitter=1.5)


def test_missing_perceptual_weights_are_a_clear_error(tmp_path):
    with pytest.raises(MissingWeightsError, match="vgg19-dcbb9e9d.pth"):
        PerceptualLoss("vgg19", weights=str(tmp_path / "vgg19-dcbb9e9d.pth"))
    assert PerceptualLoss("vgg19", pretrained=False)(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)) == 0


def test_overfits_one_clip_at_small_resolution(tmp_path):
    """The generator alone (no critic) redraws the masked region of one clip far better than at the start."""
    L.seed_everything(0)
    root = write_synthetic_shards(tmp_path, {"train": 1, "val": 1}, frames=16, image_size=32)
    dm = RendererDataModule(str(root), image_size=32, batch_size=8, num_workers=0, frames_per_clip=8, clip_shuffle=1, eval_stride=2, train_batches_per_epoch=120)
    dm.setup("fit")
    module = tiny_module(disc_start_step=10**9, lr=3e-3)
    module.net = FIARenderer(shape_dim=module.net.coeff_dim - 70, exp_dim=64, widths=(16, 16, 32, 32), decoder_widths=(16, 16, 32, 32), blocks=1, encoder_blocks=1, attention_heads=2, mlp_hidden=32)
    batch = dm.finish_batch(next(iter(dm.train_dataloader())))

    def masked_error() -> float:
        with torch.no_grad():
            out = module(batch)
        return float(((out - batch["source"]).abs() * batch["mask"]).sum() / batch["mask"].expand_as(out).sum())

    start = masked_error()
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, datamodule=dm)
    assert masked_error() < start / 3  # 0.54 -> 0.05 seen (the decoder as small as the encoder; it was the paper's by mistake)


def test_mouth_response_is_zero_for_a_renderer_that_ignores_the_expression(frames):
    """At initialisation the AdaIN MLPs output zeros, so β changes nothing and the response is exactly 0; once their
    last layers are not zero it is positive. Each evaluated frame carries its partner (the clip's next evaluated frame)."""
    dm = RendererDataModule(str(frames), image_size=64, num_workers=0, eval_batch_size=4)
    dm.setup("fit")
    batch = dm.finish_batch(next(iter(dm.val_dataloader())))
    module = tiny_module()
    module.log = lambda *args, **kwargs: None  # outside a Trainer
    metric = module.eval_metrics["val"].mouth_response
    with torch.no_grad():
        module._evaluate(batch, "val")
        assert metric.real_change > 0 and metric.compute() == 0
        metric.reset()
        for name, p in module.net.named_parameters():
            if name.endswith("adain.mlp.4.weight"):
                p.normal_(0, 0.5)
        module._evaluate(batch, "val")
    assert metric.compute() > 0.01


def test_the_sketch_carries_the_expression_when_adain_ignores_it(frames):
    """A renderer that takes the mouth sketch responds to β at initialisation, before AdaIN has learnt anything:
    the β-swapped frame is drawn from a sketch of the other frame's mouth."""
    dm = RendererDataModule(str(frames), image_size=64, num_workers=0, eval_batch_size=4)
    dm.setup("fit")
    batch = dm.finish_batch(next(iter(dm.val_dataloader())))
    module = tiny_module(sketch_channels=2)
    module.log = lambda *args, **kwargs: None
    with torch.no_grad():
        module._evaluate(batch, "val")
    assert module.eval_metrics["val"].mouth_response.compute() > 0
    with pytest.raises(ValueError, match="sketch_channels must be 0 or 2"):
        tiny_module(sketch_channels=3)


@pytest.mark.ddp
def test_ddp_two_processes_gan_fit_logs_one_run_and_resumes(frames, tmp_path):
    """2 CPU processes (gloo), manual optimisation with the critic on, MLflow; resume keeps the run."""
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.logger.init_args.run_name", "gan"]
    run_cli(tmp_path, "fit", *tiny_args(frames, base=RENDERER_BASE), *ddp)
    client, runs = mlflow_runs(tmp_path)
    assert len(runs) == 1 and runs[0].data.params["run/world_size"] == "2"
    run = runs[0]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "images")} >= {"images/step0000005.png"}
    response = client.get_metric_history(run.info.run_id, "val/mouth_response")  # reduced over both ranks' pairs
    assert response and all(0 <= m.value < 10 for m in response)
    run_cli(tmp_path, "fit", *tiny_args(frames, base=RENDERER_BASE), *ddp, "--ckpt_path", "last", "--trainer.max_steps", "40")
    client, runs = mlflow_runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.run_id == run.info.run_id and runs[0].info.status == "FINISHED"
    critic = steps(client, runs[0], "train/loss/critic")
    # metric steps count batches (generator steps): 11 in the first run, 10 more after the resume
    assert critic == sorted(set(critic)) and min(critic) < 10 and max(critic) >= 17
