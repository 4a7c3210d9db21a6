"""On CUDA: a bf16-mixed fit of each stage through the CLI, and both networks' CUDA outputs against CPU's.

Skipped without a GPU (``make test`` deselects the ``gpu`` marker anyway); ``make gpu-check`` runs this
file first on a lent device. Imports only what the device carries (``make gpu-wheels``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_modules.a2e.transformer import A2ETransformer
from lightning_modules.renderer.generator import FIARenderer
from tests.synthetic_shards import write_synthetic_shards
from tests.test_training_cli import RENDERER_BASE, run_cli, tiny_args

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA_VS_CPU = {"rtol": 1e-3, "atol": 1e-4}
"""fp32 with TF32 off on both sides: what is left is the order of floating-point sums in cuBLAS/cuDNN kernels."""


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_synthetic_shards(tmp_path_factory.mktemp("gpu"), {"train": 2, "val": 1, "test": 1}, frames=24, image_size=64)


@pytest.mark.parametrize("stage", ["a2e", "renderer"])
def test_a_bf16_fit_of_each_stage_runs_on_cuda(stage: str, shards: Path, tmp_path: Path) -> None:
    args = tiny_args(shards, base=RENDERER_BASE) if stage == "renderer" else tiny_args(shards)
    run_cli(tmp_path, "fit", *args, "--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.precision", "bf16-mixed",
            "--trainer.logger", "false", "--trainer.max_steps", "10")
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    weights = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
    assert ckpt["global_step"] == 10 and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights)  # fp32 master weights


@pytest.fixture()
def exact_fp32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_a2e_on_cuda_equals_cpu(exact_fp32) -> None:
    torch.manual_seed(0)
    net = A2ETransformer(audio_dim=384, shape_dim=9, exp_dim=64).eval()
    inputs = (torch.randn(4, 32, 384), torch.randn(4, 9), torch.randn(4, 16, 64))
    with torch.no_grad():
        cpu = net(*inputs)
        cuda = net.cuda()(*(x.cuda() for x in inputs)).cpu()
    torch.testing.assert_close(cuda, cpu, **CUDA_VS_CPU)


def test_renderer_on_cuda_equals_cpu(exact_fp32) -> None:
    torch.manual_seed(0)
    net = FIARenderer(9, 64, widths=(16, 32, 64, 128), decoder_widths=(16, 32, 64, 128), blocks=1, encoder_blocks=1, attention_heads=4, mlp_hidden=64).eval()
    source, reference = torch.rand(2, 3, 128, 128) * 2 - 1, torch.rand(2, 3, 128, 128) * 2 - 1
    mask = torch.zeros(2, 1, 128, 128)
    mask[..., 64:, :] = 1
    inputs = (source * (1 - mask), mask, reference, torch.randn(2, 9 + 64 + 6))
    with torch.no_grad():
        cpu = net(*inputs)
        cuda = net.cuda()(*(x.cuda() for x in inputs)).cpu()
    torch.testing.assert_close(cuda, cpu, **CUDA_VS_CPU)
