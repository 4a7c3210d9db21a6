"""Checkpoint files in the layout `fit` writes (networks as class_path/init_args, weights under ``net.``),
with tiny randomly initialised networks: what `dub`, `stream` and `export` read, in a second."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_modules.a2e.transformer import A2ETransformer
from lightning_modules.renderer.generator import FIARenderer
from preprocess.face_model import FaceModel

A2E_ARGS = {"d_model": 32, "num_heads": 2, "cmsa_layers": 1, "tca_layers": 1, "ff_mult": 2, "dropout": 0.0}
RENDERER_ARGS = {"widths": [8, 16, 16, 32], "decoder_widths": [8, 16, 16, 32], "blocks": 1, "encoder_blocks": 1, "attention_heads": 2, "mlp_hidden": 16}


def _save(path: Path, net: torch.nn.Module, class_path: str, init_args: dict[str, Any], hparams: dict[str, Any], data: dict[str, Any],
          average: torch.nn.Module | None = None) -> Path:
    ckpt = {
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()} | {f"net_ema.{k}": v for k, v in (average.state_dict() if average else {}).items()},
        "hyper_parameters": {"net": {"class_path": class_path, "init_args": init_args}, **hparams},
        "datamodule_hyper_parameters": data,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def tiny_a2e(path: Path, audio_features: str = "mel", audio_dim: int = 80, face_model: str | None = None, seed: int = 0) -> Path:
    fm = FaceModel(face_model)
    torch.manual_seed(seed)
    args = {**A2E_ARGS, "audio_dim": audio_dim, "shape_dim": fm.shape_dim, "exp_dim": fm.exp_dim}
    net = A2ETransformer(**args)
    return _save(path, net, "lightning_modules.a2e.transformer.A2ETransformer", args,
                 {"window": 8, "num_history": 4, "inference_overlap": 4, "face_model": face_model},
                 {"audio_features": audio_features, "audio_dim": audio_dim, "window": 8})


def tiny_renderer(path: Path, face_model: str | None = None, image_size: int = 64, seed: int = 0, sketch_channels: int = 0, ema: bool = False) -> Path:
    """With ``ema``, also a weight average (``net_ema.``): the same network with other weights."""
    fm = FaceModel(face_model)
    torch.manual_seed(seed)
    args = {**RENDERER_ARGS, "shape_dim": fm.shape_dim, "exp_dim": fm.exp_dim, "sketch_channels": sketch_channels}
    build = lambda: FIARenderer(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})  # noqa: E731
    net = build()
    return _save(path, net, "lightning_modules.renderer.generator.FIARenderer", args, {"face_model": face_model},
                 {"image_size": image_size, "mask": "learnable", "mask_dilation": 0.03, "mask_feather": 0.01, "mask_neck": True},
                 average=build() if ema else None)


def other_face_model(path: Path) -> Path:
    """The shipped face model under another version: what a rebuilt model looks like to a checkpoint."""
    fm = FaceModel(None)
    with np.load(fm.path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["version"] = np.array(f"{fm.version}-other")
    np.savez(path, **arrays)
    return path
