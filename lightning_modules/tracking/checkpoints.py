"""Checkpoints: the MLflow run that wrote one, the newest of a run folder, and loading a module from one.

Checkpoints go to ``<root>/checkpoints/<experiment>/<run name>/`` and carry the MLflow run id, so
``--ckpt_path last`` continues the same run (ARCHITECTURE §6).

A checkpoint names the classes of its networks (``class_path`` in its hyperparameters) so that
it rebuilds them alone. Checkpoints written before the stage packages (``lightning_modules/a2e/``,
``renderer/``, ...) name the old flat paths; :func:`load_module` maps those through
:data:`MOVED_CLASSES` and loads them unchanged otherwise.
"""

from __future__ import annotations

import inspect
import io
import logging
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch

from preprocess.errors import ConfigError

log = logging.getLogger(__name__)
M = TypeVar("M", bound=L.LightningModule)

CHECKPOINT_KEY = "mlflow_run"
"""Checkpoint entry holding {run_id, run_name, experiment, tracking_uri}."""

MOVED_CLASSES = {
    "lightning_modules.a2e_module.A2EModule": "lightning_modules.a2e.module.A2EModule",
    "lightning_modules.nets.a2e_transformer.A2ETransformer": "lightning_modules.a2e.transformer.A2ETransformer",
    "lightning_modules.renderer_module.RendererModule": "lightning_modules.renderer.module.RendererModule",
    "lightning_modules.nets.fia_renderer.FIARenderer": "lightning_modules.renderer.generator.FIARenderer",
    "lightning_modules.nets.patch_discriminator.PatchDiscriminator": "lightning_modules.renderer.discriminator.PatchDiscriminator",
    "lightning_modules.losses.renderer_loss.RendererLoss": "lightning_modules.renderer.loss.RendererLoss",
    "lightning_modules.losses.renderer_loss.PerceptualLoss": "lightning_modules.renderer.loss.PerceptualLoss",
}
"""Class paths of the flat layout (up to commit f99bada) -> where those classes live now."""


def run_of_checkpoint(path: str | Path) -> dict[str, str] | None:
    """The MLflow run a checkpoint was written by (None for checkpoints made without RunLogger)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    return ckpt.get(CHECKPOINT_KEY)


def latest_checkpoint(folder: Path, runs: bool = True) -> Path | None:
    """The newest ``last.ckpt`` in ``folder`` or (with ``runs``) its run sub-folders."""
    found = [p for p in (folder / "last.ckpt", *(folder.glob("*/last.ckpt") if runs else ())) if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def run_folders(root: Path) -> list[Path]:
    """The run folders under an experiment's checkpoint folder that hold a ``last.ckpt``, by name."""
    return sorted(p.parent for p in root.glob("*/last.ckpt"))


def resolve_checkpoint(path: str | Path) -> Path:
    """A .ckpt file, or a folder: the newest ``last.ckpt`` in it or its run sub-folders."""
    p = Path(path)
    if p.is_dir():
        found = latest_checkpoint(p)
        if found is None:
            raise SystemExit(f"error: no last.ckpt under {p}; train first or pass a .ckpt file")
        return found
    if not p.is_file():
        raise SystemExit(f"error: no checkpoint file {p}")
    return p


def _map_moved_classes(node: Any) -> int:
    """Replace the flat layout's class paths in place, anywhere in a hyperparameter tree; how many were replaced."""
    count = 0
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        if isinstance(value, str) and value in MOVED_CLASSES:
            node[key] = MOVED_CLASSES[value]
            count += 1
        else:
            count += _map_moved_classes(value)
    return count


def load_module(cls: type[M], path: str | Path, **kwargs: Any) -> M:
    """``cls.load_from_checkpoint(path, **kwargs)``, also for checkpoints of the flat layout (see :data:`MOVED_CLASSES`)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)  # mmap: only the hyperparameters are read here
    if not _map_moved_classes(ckpt.get("hyper_parameters", {})):
        return cls.load_from_checkpoint(path, **kwargs)
    log.info("%s was written before the stage packages; its class paths are mapped to the current ones", path)
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    buffer.seek(0)
    return cls.load_from_checkpoint(buffer, **kwargs)


D = TypeVar("D", bound=L.LightningDataModule)


def load_datamodule(cls: type[D], path: str | Path, **overrides: Any) -> D:
    """The datamodule a checkpoint was trained with, ``overrides`` applied.

    Options this version no longer has (e.g. ``frame_shuffle``, replaced by shuffle rounds) are left out
    with a note: they shaped training, not how the shards are read for evaluation.
    """
    saved = dict(torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("datamodule_hyper_parameters") or {})
    saved = {k: v for k, v in saved.items() if not k.startswith("_")}  # LightningCLI's own bookkeeping (_class_path, ...)
    accepted = inspect.signature(cls.__init__).parameters
    dropped = sorted(k for k in saved if k not in accepted)
    if dropped:
        log.info("%s: data options %s are not options of %s any more; left out", path, ", ".join(dropped), cls.__name__)
    return cls(**{k: v for k, v in saved.items() if k in accepted} | overrides)


class InitError(ConfigError, ValueError):
    """``--init_from`` names a checkpoint whose weights this model cannot take."""


def _face_model_name(path: str | None, what: str) -> str:
    from preprocess.face_model import FaceModel

    try:
        return FaceModel(path).full_name
    except FileNotFoundError as e:
        raise InitError(f"--init_from: {what} was trained with face model {path}, which is not on this machine") from e


def load_initial_weights(module: L.LightningModule, path: str | Path) -> dict[str, str]:
    """Load only the weights of checkpoint ``path`` into ``module``; the tags naming it and its run.

    Optimizer, step count, loader state and run stay new. The checkpoint must be of the same
    architecture (the same parameter names and shapes) and face model; a generator weight average
    the checkpoint lacks starts from its generator, one the module does not keep is left out.
    """
    path = Path(path)
    if not path.is_file():
        raise InitError(f"--init_from {path}: no such checkpoint file")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    theirs, ours = ckpt.get("hyper_parameters", {}), module.hparams
    cls = theirs.get("_class_path")
    if cls and cls.rsplit(".", 1)[-1] != type(module).__name__:
        raise InitError(f"--init_from {path}: a {cls.rsplit('.', 1)[-1]} checkpoint, and this config trains a {type(module).__name__}")
    if "face_model" in theirs or "face_model" in ours:
        name_theirs, name_ours = _face_model_name(theirs.get("face_model"), str(path)), _face_model_name(ours.get("face_model"), "this config")
        if name_theirs != name_ours:
            raise InitError(f"--init_from {path}: trained with face model {name_theirs}, this config uses {name_ours}: "
                            "its expression coefficients mean something else; fine-tune on shards of the same face model")
    state = {k: v for k, v in ckpt["state_dict"].items() if k != "generator_steps"}  # a counter of older checkpoints, not a weight
    own = module.state_dict()
    for key in own:
        if key.startswith("net_ema.") and key not in state and (live := "net." + key.removeprefix("net_ema.")) in state:
            state[key] = state[live]
    state = {k: v for k, v in state.items() if k in own or not k.startswith("net_ema.")}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    reshaped = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or reshaped:
        first = (f"{reshaped[0]} is {tuple(state[reshaped[0]].shape)} there, {tuple(own[reshaped[0]].shape)} here" if reshaped
                 else f"{(missing or unexpected)[0]} is {'missing' if missing else 'not in this model'}")
        raise InitError(f"--init_from {path}: another architecture than this config's model ({first}; "
                        f"{len(missing)} missing, {len(unexpected)} extra, {len(reshaped)} other shapes): give the model options it was trained with")
    module.load_state_dict(state)
    run = ckpt.get(CHECKPOINT_KEY) or {}
    return {"parent/checkpoint": str(path.resolve()), **{f"parent/{k}": str(run[k]) for k in ("run_id", "run_name", "experiment") if run.get(k)}}
