"""The two trained networks a dub needs, read from Lightning checkpoints without running pickled code.

``torch.load(..., weights_only=True)`` admits tensors, numbers, strings and containers only, so a
checkpoint file cannot execute code while it is read. The networks are then built from the
``class_path``/``init_args`` the training CLI saved, and only classes of this project are built
(checkpoints of the flat layout are mapped through :data:`MOVED_CLASSES`). The training-only
parts (losses with their perceptual backbones, the critic, optimizer state) are never built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_modules.a2e.transformer import A2ETransformer
from lightning_modules.renderer.generator import FIARenderer
from lightning_modules.tracking.checkpoints import MOVED_CLASSES, resolve_checkpoint
from preprocess.errors import ConfigError
from preprocess.face_model import FaceModel

TRUSTED_PREFIX = "lightning_modules."


class CheckpointError(ConfigError):
    """A checkpoint that is missing, unreadable, of the wrong stage, or does not fit the other one."""


@dataclass
class A2ENetwork:
    net: A2ETransformer
    window: int
    overlap: int
    num_history: int
    audio_features: str
    face_model: FaceModel
    path: Path


@dataclass
class RendererNetwork:
    net: FIARenderer
    image_size: int
    mask: dict[str, Any]  # FaceMasker arguments: kind, dilation, feather, neck
    face_model: FaceModel
    path: Path


def read_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(file, contents) of a checkpoint file or run folder, loaded with ``weights_only=True``."""
    try:
        file = resolve_checkpoint(path)
    except SystemExit as e:  # resolve_checkpoint speaks to the training CLI's users
        raise CheckpointError(str(e).removeprefix("error: ")) from None
    try:
        return file, torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (the unpickler raises many kinds on a file that is not a checkpoint)
        raise CheckpointError(f"{file} is not a readable checkpoint of this project ({str(e).splitlines()[0][:160]})") from None


def build_network(ckpt: dict[str, Any], key: str, expected: type[nn.Module], file: Path, weights: str | None = None) -> nn.Module:
    """Instantiate ``hyper_parameters[key]`` (a class_path/init_args dict) and load its ``<weights or key>.`` weights."""
    spec = ckpt.get("hyper_parameters", {}).get(key)
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise CheckpointError(f"{file} does not describe its {key!r} network (it was not written by `python -m lightning_modules fit`)")
    class_path = MOVED_CLASSES.get(spec["class_path"], spec["class_path"])
    if not class_path.startswith(TRUSTED_PREFIX):
        raise CheckpointError(f"{file} asks for class {class_path}, outside this project; refusing to build it")
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    if not issubclass(cls, expected):
        raise CheckpointError(f"{file}: its {key!r} is a {name}, not a {expected.__name__}; pass the other stage's checkpoint")
    net = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.get("init_args", {}).items()})
    prefix = f"{weights or key}."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    net.load_state_dict(state)
    return net.eval()


def _face_model(path: str | None, file: Path) -> FaceModel:
    try:
        return FaceModel(path)
    except FileNotFoundError as e:
        raise CheckpointError(f"{file} was trained with face model {path}, which is not on this machine") from e


EMA_WEIGHTS = "net_ema"
"""State-dict prefix of the generator's weight average (``RendererModule(ema_decay=...)``)."""


def _load(path: str | Path, cls: type[nn.Module], needs: str, stage: str, ema: bool = True) -> tuple[Path, dict[str, Any], dict[str, Any], nn.Module, FaceModel]:
    """(file, module hparams, data hparams, network, face model) of one stage's checkpoint; with ``ema`` the
    network's weight average where the checkpoint has one."""
    file, ckpt = read_checkpoint(path)
    hp, data = ckpt.get("hyper_parameters", {}), ckpt.get("datamodule_hyper_parameters") or {}
    averaged = ema and any(k.startswith(EMA_WEIGHTS + ".") for k in ckpt["state_dict"])
    net = build_network(ckpt, "net", cls, file, EMA_WEIGHTS if averaged else None)
    if needs not in data:
        raise CheckpointError(f"{file} does not record its {needs}; pass {stage} checkpoint written by `fit` with its data config")
    return file, hp, data, net, _face_model(hp.get("face_model"), file)


def load_a2e(path: str | Path) -> A2ENetwork:
    file, hp, data, net, face_model = _load(path, A2ETransformer, "audio_features", "an A2E")
    window = int(hp.get("window", data.get("window", 16)))
    overlap = hp.get("inference_overlap")
    return A2ENetwork(net, window, int(window // 2 if overlap is None else overlap), int(hp.get("num_history", 16)),
                      str(data["audio_features"]), face_model, file)


def load_renderer(path: str | Path, ema: bool = True) -> RendererNetwork:
    """The renderer of a checkpoint: its generator's weight average when it kept one, unless ``ema`` is false."""
    file, hp, data, net, face_model = _load(path, FIARenderer, "image_size", "a renderer", ema)
    mask = {"kind": data.get("mask", "learnable"), "dilation": data.get("mask_dilation", 0.03),
            "feather": data.get("mask_feather", 0.01), "neck": data.get("mask_neck", True)}
    return RendererNetwork(net, int(data["image_size"]), mask, face_model, file)


def load_pair(a2e_path: str | Path, renderer_path: str | Path, ema: bool = True) -> tuple[A2ENetwork, RendererNetwork]:
    """Both networks, checked to share one face model (same name, version and widths); ``ema`` as in :func:`load_renderer`."""
    a2e, renderer = load_a2e(a2e_path), load_renderer(renderer_path, ema)
    fa, fr = a2e.face_model, renderer.face_model
    if (fa.full_name, fa.shape_dim, fa.exp_dim) != (fr.full_name, fr.shape_dim, fr.exp_dim):
        raise CheckpointError(
            f"the A2E ({a2e.path}) was trained with face model {fa.full_name} ({fa.shape_dim}/{fa.exp_dim} coefficients) and the "
            f"renderer ({renderer.path}) with {fr.full_name} ({fr.shape_dim}/{fr.exp_dim}); pass checkpoints trained on the same shards"
        )
    if a2e.net.head.out_features != renderer.net.exp_dim:
        raise CheckpointError(f"A2E predicts {a2e.net.head.out_features} expression coefficients, the renderer takes {renderer.net.exp_dim}")
    return a2e, renderer
