"""What each MLflow run records (config, git state, versions, command) and the run carried in every checkpoint."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import SaveConfigCallback

from lightning_modules.tracking.checkpoints import CHECKPOINT_KEY
from lightning_modules.tracking.run_logger import find_run_logger

VERSIONED_PACKAGES = ("torch", "lightning", "torchmetrics", "webdataset", "mlflow", "jsonargparse", "numpy", "mediapipe", "transformers")


def git_state() -> dict[str, str]:
    """Commit and dirty flag of the working tree the code runs from ("unknown" outside git)."""
    repo = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=True).stdout.strip()

    try:
        return {"git/commit": git("rev-parse", "HEAD"), "git/dirty": str(bool(git("status", "--porcelain", "--untracked-files=no")))}
    except (OSError, subprocess.SubprocessError):
        return {"git/commit": "unknown", "git/dirty": "unknown"}


def package_versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model/net/d_model": 256, "model/net": "A2ETransformer", ...}``: the config as MLflow params.

    ``init_args`` levels are dropped and a ``class_path`` becomes the value of its parent key.
    """
    out: dict[str, Any] = {}
    for k, v in config.items():
        if k in ("config", "__path__") or k.startswith("_"):
            continue
        key = prefix if k == "init_args" else f"{prefix}/{k}" if prefix else k
        if k == "class_path":
            out[prefix] = str(v).rsplit(".", 1)[-1]
        elif isinstance(v, dict):
            out.update(flat_config(v, key))
        else:
            out[key] = v
    return out


class TrackingCallback(SaveConfigCallback):
    """Records each run in MLflow and carries the run in every checkpoint.

    Replaces Lightning's SaveConfigCallback, which insists on a local log dir the MLflow logger
    does not have. Rank 0 logs: the fully resolved config (``config/config.yaml``, and
    ``config/<stage>-<time>.yaml`` when a later command reuses the run), git commit and dirty flag,
    package versions, the command line and the checkpoint folder as tags; the flattened config
    (``model/net/d_model``, ``data/batch_size``, ``trainer/precision``, ...) and the resolved
    parallelism (``run/world_size``, ``run/strategy``) as params.
    """

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        logger = find_run_logger(trainer)
        if logger is None:
            return
        client, run_id = logger.experiment, logger.run_id
        stage_name = getattr(stage, "value", stage)  # Lightning passes a TrainerFn enum
        name = "config.yaml" if not logger.resumed else f"{stage_name}-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
        client.log_text(run_id, self.parser.dump(self.config, skip_none=False), f"config/{name}")
        tags = {**git_state(), **{f"version/{k}": v for k, v in package_versions().items()}, "command": " ".join(sys.argv)}
        if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
            tags["checkpoint/dir"] = str(Path(trainer.checkpoint_callback.dirpath).resolve())
        for k, v in tags.items():
            client.set_tag(run_id, k, v)
        resolved = {
            "world_size": trainer.world_size, "strategy": type(trainer.strategy).__name__, "precision": str(trainer.precision),
            "parameters": sum(p.numel() for p in pl_module.parameters()),
        }
        logger.log_hyperparams({**flat_config(self.config.as_dict()), **{f"run/{k}": v for k, v in resolved.items()}})

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        logger = find_run_logger(trainer)
        if logger is not None and trainer.is_global_zero:
            checkpoint[CHECKPOINT_KEY] = {
                "run_id": logger.run_id, "run_name": logger.run_name, "experiment": logger.experiment_name, "tracking_uri": logger.tracking_uri,
            }


