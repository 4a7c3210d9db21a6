"""The MLflow run logger: local sqlite by default, safe under DDP, resumable into the same run.

Defaults: a sqlite database ``mlruns/mlflow.db`` (MLflow 3 refuses its file store) with artifacts
in ``mlruns/artifacts``; ``MLFLOW_TRACKING_URI`` or ``trainer.logger.init_args.tracking_uri``
point at a team server instead.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger, MLFlowLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only, rank_zero_warn

RUN_NAME_ENV = "REALTALK_RUN_NAME"
"""Set by rank 0 so the processes Lightning launches for DDP share its generated run name."""


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the sqlite database ``./mlruns/mlflow.db``."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    return f"sqlite:///{Path('mlruns').resolve() / 'mlflow.db'}"


def run_tracking_uri(run: dict[str, str]) -> str:
    """Where to reach the MLflow run a checkpoint names: ``MLFLOW_TRACKING_URI`` when set (the same server as seen
    from this machine, e.g. through a tunnel), else the URI the run was trained with."""
    return os.environ.get("MLFLOW_TRACKING_URI") or run["tracking_uri"]


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (None for servers and other stores)."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


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

            if (db := sqlite_file(self._tracking_uri)) is not None:
                db.parent.mkdir(parents=True, exist_ok=True)  # here, not at construction: a run that stops early leaves no folder
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


