"""MLflow experiment tracking: the run logger, what each run records, and where checkpoints go.

Defaults: a sqlite database ``mlruns/mlflow.db`` (MLflow 3 refuses its file store) with artifacts
in ``mlruns/artifacts``; ``MLFLOW_TRACKING_URI`` or ``trainer.logger.init_args.tracking_uri``
point at a team server instead. Checkpoints go to ``<root>/checkpoints/<experiment>/<run name>/``
and carry the MLflow run id, so ``--ckpt_path last`` continues the same run (ARCHITECTURE §6).
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import Logger, MLFlowLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only, rank_zero_warn

CHECKPOINT_KEY = "mlflow_run"
"""Checkpoint entry holding {run_id, run_name, experiment, tracking_uri}."""
RUN_NAME_ENV = "REALTALK_RUN_NAME"
"""Set by rank 0 so the processes Lightning launches for DDP share its generated run name."""
VERSIONED_PACKAGES = ("torch", "lightning", "torchmetrics", "webdataset", "mlflow", "jsonargparse", "numpy", "mediapipe", "transformers")


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the sqlite database ``./mlruns/mlflow.db``."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    root = Path("mlruns").resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


class RunLogger(MLFlowLogger):
    """MLflow logger with the platform's defaults, safe under DDP and resumable.

    Only rank 0 ever opens the tracking store: a fresh sqlite database is created by whoever
    opens it first, and several ranks doing so at once race on its schema migration.

    Args:
        experiment_name: MLflow experiment (also the checkpoint folder under ``checkpoints/``).
        run_name: run name (also the checkpoint sub-folder); None = ``<model>-<timestamp>``, or
            the name stored in the checkpoint when resuming.
        tracking_uri: tracking server or database; None = ``MLFLOW_TRACKING_URI`` or ``sqlite:///./mlruns/mlflow.db``.
        tags: extra run tags.
        artifact_location: where a new experiment stores artifacts; None = ``mlruns/artifacts`` for
            the local database, the server's default otherwise.
        log_model: upload checkpoints as artifacts too (False: only their paths are recorded).
        prefix: prefix of every metric key.
        synchronous: wait for every logging call to complete (None = MLflow's default).
    """

    def __init__(
        self,
        experiment_name: str = "realtalk",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, Any] | None = None,
        artifact_location: str | None = None,
        log_model: bool = False,
        prefix: str = "",
        synchronous: bool | None = None,
    ) -> None:
        Logger.__init__(self)
        local = not tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI")
        self._tracking_uri = tracking_uri or default_tracking_uri()
        if artifact_location is None and local:
            artifact_location = (Path("mlruns") / "artifacts").resolve().as_uri()
        # the attributes MLFlowLogger.__init__ sets, minus the eager MlflowClient
        self._experiment_name, self._experiment_id = experiment_name, None
        self._run_name, self._run_id = run_name, None
        self.tags = tags
        self._log_model, self._logged_model_time, self._checkpoint_callback = log_model, {}, None
        self._prefix, self._artifact_location = prefix, artifact_location
        self._log_batch_kwargs = {} if synchronous is None else {"synchronous": synchronous}
        self._initialized = False
        self._client = None
        self.resumed = False

    @property
    def _mlflow_client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self._tracking_uri)
        return self._client

    @property
    def run_name(self) -> str | None:
        return self._run_name

    @property
    def experiment_name(self) -> str:
        return self._experiment_name

    @property
    def tracking_uri(self) -> str:
        return self._tracking_uri

    def continue_run(self, run_id: str) -> None:
        """Log into the existing run ``run_id`` (rank 0 only: other ranks never log)."""
        if rank_zero_only.rank != 0:
            return  # passing the run id to every rank is what crashes DDP (Lightning #19932)
        from mlflow.exceptions import MlflowException

        try:
            self._mlflow_client.get_run(run_id)
        except MlflowException:
            rank_zero_warn(f"run {run_id} is not in {self._tracking_uri}; starting a new run named {self._run_name!r} instead")
            return
        self._run_id, self.resumed = run_id, True

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """Flattened params; a resumed run keeps its values (MLflow params are immutable), changes become tags."""
        from mlflow.entities import Param

        flat = {k: str(v)[:500] for k, v in _flatten_dict(_convert_params(params)).items()}
        existing = self.experiment.get_run(self.run_id).data.params
        for k, v in flat.items():
            if k in existing and existing[k] != v:
                rank_zero_warn(f"param {k} was {existing[k]!r} in this run and is {v!r} now; recorded as tag changed/{k}")
                self.experiment.set_tag(self.run_id, f"changed/{k}", v)
        new = [Param(k, v) for k, v in flat.items() if k not in existing]
        for i in range(0, len(new), 100):  # MLflow takes at most 100 params per batch
            self.experiment.log_batch(run_id=self.run_id, params=new[i : i + 100], **self._log_batch_kwargs)

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        super().after_save_checkpoint(checkpoint_callback)
        for tag, path in (("checkpoint/last", checkpoint_callback.last_model_path), ("checkpoint/best", checkpoint_callback.best_model_path)):
            if path:
                self.experiment.set_tag(self.run_id, tag, str(Path(path).resolve()))


def find_run_logger(trainer: L.Trainer) -> RunLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, RunLogger)), None)


def artifact_folder(trainer: L.Trainer) -> Path:
    """Where a callback writes files it also logs: the run's checkpoint folder (a temporary one without checkpoints)."""
    ckpt = trainer.checkpoint_callback
    folder = Path(ckpt.dirpath) if ckpt is not None and ckpt.dirpath else Path(tempfile.mkdtemp())
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def log_artifact(trainer: L.Trainer, path: Path, artifact_path: str) -> None:
    """Attach a file to the MLflow run under ``artifact_path`` (nothing without a RunLogger)."""
    logger = find_run_logger(trainer)
    if logger is not None:
        logger.experiment.log_artifact(logger.run_id, str(path), artifact_path)


def git_state() -> dict[str, str]:
    """Commit and dirty flag of the working tree the code runs from ("unknown" outside git)."""
    repo = Path(__file__).resolve().parents[1]

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


def run_of_checkpoint(path: str | Path) -> dict[str, str] | None:
    """The MLflow run a checkpoint was written by (None for checkpoints made without RunLogger)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    return ckpt.get(CHECKPOINT_KEY)


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest ``last.ckpt`` in ``folder`` or its run sub-folders."""
    found = [p for p in (folder / "last.ckpt", *folder.glob("*/last.ckpt")) if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None
