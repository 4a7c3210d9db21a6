"""The renderer's GAN step at scale, proven on the CPU: fp16 clipping after unscaling, steps that count iterations,
the generator's weight average, gradient accumulation, compile / channels_last / perceptual autocast, and one
gradient all-reduce per network under DDP (gloo) with the weights of one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.utils.data import DataLoader

from datamodules.renderer_datamodule import RendererDataModule
from tests.synthetic_shards import write_synthetic_shards
from tests.test_renderer import tiny_module

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def batches(tmp_path_factory) -> list[dict]:
    """Eight renderer batches of 4 at 32 px, as the trainer hands them to the module (after the device step)."""
    root = write_synthetic_shards(tmp_path_factory.mktemp("gan"), {"train": 3, "val": 1}, frames=16, image_size=32)
    dm = RendererDataModule(str(root), image_size=32, batch_size=4, num_workers=0, clip_shuffle=3, train_batches_per_epoch=8, seed=0)
    dm.setup("fit")
    return [dm.finish_batch({k: v for k, v in b.items() if k != "loader_state"}) for b in dm.train_dataloader()]


def fit(module, batches: list[dict], steps: int, **trainer_args) -> L.Trainer:
    trainer_args = {"enable_checkpointing": False} | trainer_args
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, **trainer_args)
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return trainer


def sgd_module(clip: float = 1.0, **kwargs):
    torch.manual_seed(0)
    module = tiny_module(disc_start_step=0, **kwargs)
    module.hparams.gradient_clip_val = clip
    module.factories = (lambda p: torch.optim.SGD(p, lr=1.0), lambda p: torch.optim.SGD(p, lr=1.0), None, None)
    return module


def generator_update(module, batches, **trainer_args) -> torch.Tensor:
    before = torch.cat([p.detach().flatten().clone() for p in module.net.parameters()])
    fit(module, batches[:1], 1, **trainer_args)
    return torch.cat([p.detach().flatten() for p in module.net.parameters()]) - before


def test_fp16_clips_the_unscaled_gradients(batches):
    """With a real GradScaler (×256) the clipped step is the fp32 step's: same norm (the clip), same direction up to
    fp16 rounding. Clipping before unscaling made it 256 times shorter."""
    fp32 = generator_update(sgd_module(clip=1e-3), batches)
    fp16 = generator_update(sgd_module(clip=1e-3), batches, plugins=[MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=256.0))])
    assert abs(fp16.norm() / fp32.norm() - 1) < 0.01 and fp32.norm() == pytest.approx(1e-3, rel=1e-3)
    assert torch.nn.functional.cosine_similarity(fp16, fp32, dim=0) > 0.95  # 0.995 seen: fp16 activations


class Batches(Callback):
    def __init__(self) -> None:
        self.count = 0

    def on_train_batch_end(self, *args) -> None:
        self.count += 1


def test_max_steps_counts_iterations_with_the_critic_on(batches, tmp_path):
    seen = Batches()
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="step{step:07d}", auto_insert_metric_name=False, every_n_train_steps=10, save_top_k=-1)
    trainer = fit(sgd_module(), batches * 2, 10, callbacks=[seen, ckpt], enable_checkpointing=True)
    assert seen.count == 10 and trainer.global_step == 10
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["step0000010.ckpt"]


class Weights(Callback):
    def __init__(self) -> None:
        self.after: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer, module, *args) -> None:
        self.after.append([p.detach().clone() for p in module.net.parameters()])


def test_the_weight_average_follows_its_formula(batches):
    module = sgd_module(clip=0, ema_decay=0.9, ema_warmup=10)
    average = [p.detach().clone() for p in module.net.parameters()]
    weights = Weights()
    fit(module, batches, 5, callbacks=[weights])
    for t, live in enumerate(weights.after, start=1):
        d = min(0.9, (1 + t) / (10 + t))
        average = [d * a + (1 - d) * w for a, w in zip(average, live)]
    for a, e in zip(average, module.net_ema.parameters()):
        assert torch.allclose(a, e, atol=1e-6)
    assert not torch.allclose(average[0], weights.after[-1][0])  # an average, not a copy
    assert module.inference_net is module.net_ema


def test_two_micro_batches_equal_one_batch_twice_their_size(batches):
    """accumulate 2 on batches of 4 = one step on the 4 frames at once, both networks (the teeth term's
    denominator is the whole batch's)."""
    one, two = sgd_module(), sgd_module(accumulate=2)
    fit(one, batches[:1], 1)
    fit(two, batches[:1], 1)
    for name in ("net", "discriminator"):
        for p1, p2 in zip(getattr(one, name).parameters(), getattr(two, name).parameters()):
            assert torch.allclose(p1, p2, atol=1e-6), name
    with pytest.raises(ValueError, match="must divide the batch of 4"):
        fit(sgd_module(accumulate=3), batches[:1], 1)


def test_compile_channels_last_and_perceptual_autocast_run(batches):
    """The GPU options run on this CPU: both networks compiled apart (aot_eager: the graph capture, without
    inductor's code generation, which takes minutes here), channels_last, the perceptual net under bf16 autocast."""
    module = sgd_module(compile="aot_eager", channels_last=True)
    module.loss.perceptual_autocast = True
    trainer = fit(module, batches, 3, precision="bf16-mixed")
    assert trainer.global_step == 3 and set(module._training_calls) == {"net", "discriminator"}
    assert all(type(m).__name__ == "OptimizedModule" for m in module._training_calls.values())
    assert module.net.encoder.stem.weight.is_contiguous(memory_format=torch.channels_last)


DDP_DRIVER = """
import json, sys
sys.path.insert(0, {repo!r})
import lightning as L, torch
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
import lightning_modules.ddp_networks  # registers the strategy name
from tests.test_gan_training import sgd_module

batches, out, devices, strategy = torch.load(sys.argv[1], weights_only=False), sys.argv[2], int(sys.argv[3]), sys.argv[4]

class CountAllReduce(L.Callback):
    def __init__(self):
        self.bytes, self.calls = 0, 0
    def hook(self, state, bucket):
        self.bytes += bucket.buffer().numel() * bucket.buffer().element_size()
        self.calls += 1
        return allreduce_hook(None, bucket)
    def on_train_start(self, trainer, module):
        wrappers = list(module.ddp_wrappers.values()) or [trainer.strategy.model]
        for w in wrappers:
            if isinstance(w, DistributedDataParallel):
                w.register_comm_hook(None, self.hook)

if devices == 1:  # one process sees both ranks' batches at once: batch i = items 2i and 2i+1 of each pair
    batches = [{{k: torch.cat([a[k], b[k]]) if torch.is_tensor(a[k]) else a[k] + b[k] for k in a}} for a, b in zip(batches[::2], batches[1::2])]
counter = CountAllReduce()
module = sgd_module()
trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=3, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[counter], use_distributed_sampler=False)
loader = DataLoader(batches[trainer.global_rank::devices] if devices > 1 else batches, batch_size=None)
trainer.fit(module, train_dataloaders=loader)
if trainer.is_global_zero:
    torch.save({{k: v for k, v in module.state_dict().items() if k.startswith(("net.", "discriminator."))}}, out + ".pt")
    json.dump({{"bytes": counter.bytes, "calls": counter.calls, "steps": trainer.global_step}}, open(out + ".json", "w"))
"""


@pytest.mark.ddp
def test_one_all_reduce_per_network_and_the_weights_of_one_process(batches, tmp_path):
    """2 gloo ranks, 3 iterations with the critic on, a communication hook counting what DDP all-reduces: ``ddp``
    (one wrapper, find_unused_parameters) sends both networks' gradients twice per iteration, ``ddp_networks``
    each network's once, half the bytes; its weights equal one process that sees both ranks' batches at once."""
    data, driver = tmp_path / "batches.pt", tmp_path / "driver.py"
    torch.save(batches[:6], data)
    driver.write_text(DDP_DRIVER.format(repo=str(REPO)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    results = {}
    for name, devices, strategy in (("ddp", 2, "ddp_find_unused_parameters_true"), ("ddp_networks", 2, "ddp_networks"), ("one", 1, "auto")):
        proc = subprocess.run([sys.executable, str(driver), str(data), str(tmp_path / name), str(devices), strategy],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        results[name] = json.loads((tmp_path / f"{name}.json").read_text()), torch.load(tmp_path / f"{name}.pt")
    (old, old_w), (new, new_w), (_, one_w) = results["ddp"], results["ddp_networks"], results["one"]
    module = tiny_module()
    trainable = 4 * sum(p.numel() for n in ("net", "discriminator") for p in getattr(module, n).parameters())
    assert old["steps"] == new["steps"] == 3
    assert new["bytes"] == 3 * trainable and old["bytes"] == 2 * new["bytes"]  # per iteration: G + D once, instead of (G + D) twice
    for key in one_w:
        assert torch.allclose(new_w[key], one_w[key], atol=1e-5), key
        assert torch.allclose(old_w[key], new_w[key], atol=1e-5), key


def test_inference_loads_the_weight_average_unless_told_not_to(tmp_path):
    from lightning_modules.evaluation.evaluate import build_parser as evaluate_parser
    from lightning_modules.inference import dub, export, stream
    from lightning_modules.inference.networks import load_renderer
    from tests.tiny_checkpoints import tiny_renderer

    path = tiny_renderer(tmp_path / "r.ckpt", ema=True)
    state = torch.load(path, weights_only=True)["state_dict"]
    weight = "encoder.stem.weight"
    assert torch.equal(load_renderer(path).net.state_dict()[weight], state[f"net_ema.{weight}"])
    assert torch.equal(load_renderer(path, ema=False).net.state_dict()[weight], state[f"net.{weight}"])
    assert not torch.equal(state[f"net_ema.{weight}"], state[f"net.{weight}"])
    for parser in (dub.build_parser(), stream.build_parser(), export.build_parser(), evaluate_parser()):
        assert any("--no-ema" in a.option_strings for a in parser._actions)
