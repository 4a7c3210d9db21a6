"""The training CLI: ``python -m lightning_modules {fit,validate,test,predict} --config ...``.

Also ``python -m lightning_modules evaluate ...`` (Table 2), ``... adapt ...`` (a renderer fine-tuned on one person's
video), ``... dub|stream|export ...`` and ``python -m lightning_modules runs compare ...``.

Model and data are chosen by ``class_path``, so one entry point serves every stage. Configs
compose with repeated ``--config`` (the last wins); values the data and the model share are
linked here and written once, in the data config.
"""

from __future__ import annotations

import os
import re
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, NoReturn, Optional

import lightning as L
import torch
from jsonargparse import ArgumentError
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only

from datamodules.shard_datamodule import ShardDataModule
from lightning_modules.ddp_networks import NetworkDDPStrategy
from lightning_modules.tracking.checkpoints import latest_checkpoint, load_initial_weights, run_folders, run_of_checkpoint
from lightning_modules.tracking.final_checkpoint import FinalStepCheckpoint
from lightning_modules.tracking.run_logger import RUN_NAME_ENV, find_run_logger, sqlite_file
from lightning_modules.tracking.run_record import TrackingCallback
from preprocess.errors import ConfigError


@lru_cache(maxsize=8)
def _face_model_dims(path: str | None) -> tuple[int, int]:
    from preprocess.face_model import FaceModel

    fm = FaceModel(path)
    return fm.shape_dim, fm.exp_dim


def face_shape_dim(path: str | None) -> int:
    return _face_model_dims(path)[0]


def face_exp_dim(path: str | None) -> int:
    return _face_model_dims(path)[1]


class ResumeError(ConfigError, ValueError):
    """``--ckpt_path`` names nothing usable."""


DEFAULT_LOGGER = {"class_path": "lightning_modules.tracking.run_logger.RunLogger", "init_args": {"experiment_name": "realtalk"}}
"""Every run is tracked unless ``--trainer.logger false``: local sqlite MLflow, or ``$MLFLOW_TRACKING_URI``."""


def config_error_line(message: str, subcommand: str) -> str:
    """jsonargparse's nested report of a bad config, as one line: the key, the class it belongs to, what is wrong, where to look.

    The report nests one level per injected class (model -> net -> ...), lists the alternatives of
    Optional types (``Expected a <class 'NoneType'>``) and repeats the given value; only the path to
    the innermost complaint is kept.
    """
    keys, classes, detail = [], [], ""
    for raw in message.splitlines():
        line = raw.strip().removeprefix("- ")
        if match := re.match(r'Parser key "([^"]+)":\s*(.*)', line):
            keys.append(match[1])
            detail = detail or match[2]
        elif match := re.match(r"Problem with given class_path '([^']+)':\s*(.*)", line):
            classes.append(match[1])
            detail = detail or match[2]
        elif line and not detail and not line.startswith(("Does not validate", "Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>")):
            detail = line
    if not keys:
        return f"{detail}; the accepted options: python -m lightning_modules {subcommand} --help"
    key = ".init_args.".join(keys)
    if not classes:
        return f"config key {key}: {detail}; the accepted options: python -m lightning_modules {subcommand} --help"
    return f"config key {key} ({classes[-1]}): {detail}; its accepted options: python -m lightning_modules {subcommand} --{key}.help {classes[-1]}"


class _OwnFolderCheckpoints(_CheckpointConnector):
    """Lightning resumes a SLURM job without ``ckpt_path`` from the newest ``hpc_ckpt_N.ckpt`` in the working
    directory, whichever run wrote it; here a run resumes only from its own run folder (see ``_prepare_run``)."""

    @property
    def _hpc_resume_path(self) -> None:
        return None


def job_id() -> str | None:
    """The id every process of this job shares and a requeued or restarted job keeps: SLURM's, else torchrun's rendezvous id."""
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID")
    return job if job and job != "none" else None


class RealTalkCLI(LightningCLI):
    """LightningCLI with MLflow runs that resume, a per-run checkpoint folder and data->model links."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("save_config_callback", TrackingCallback)
        kwargs.setdefault("save_config_kwargs", {"save_to_log_dir": False})
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_kwargs", {"description": __doc__})
        super().__init__(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # raise instead of printing the whole usage: main() reports a config mistake as one line
        kwargs.setdefault("exit_on_error", False)
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 - LightningArgumentParser
        parser.add_lightning_class_args(FinalStepCheckpoint, "checkpoint")
        parser.add_argument("--init_from", type=Optional[str], default=None,
                            help="fit only: start from this checkpoint's weights (same model and face model), with a new optimizer, "
                                 "step 0 and a new MLflow run tagged with its parent; --ckpt_path resumes a run instead")
        parser.add_argument("--float32_matmul_precision", type=Literal["highest", "high", "medium"], default="highest",
                            help="torch.set_float32_matmul_precision: high = TF32 matrix products on Ampere and newer GPUs (the GPU presets)")
        parser.set_defaults({"trainer.logger": DEFAULT_LOGGER})
        # validation by steps whatever the trainer preset: the epochs of a streamed dataset are arbitrary cuts
        parser.set_defaults({"trainer.check_val_every_n_epoch": None, "trainer.val_check_interval": 500})
        # TrackingCallback logs the whole flattened config; Lightning's own hparams logging would repeat part of it
        parser.set_defaults({"trainer.enable_autolog_hparams": False})
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.filename": "step{step:07d}", "checkpoint.auto_insert_metric_name": False})
        # written once in the data config; links to a key a class lacks are skipped, so other stages are unaffected
        for key in ("window", "num_history", "face_model"):
            parser.link_arguments(f"data.init_args.{key}", f"model.init_args.{key}")
        parser.link_arguments("data.init_args.audio_dim", "model.init_args.net.init_args.audio_dim")
        parser.link_arguments("data.init_args.face_model", "model.init_args.net.init_args.shape_dim", compute_fn=face_shape_dim)
        parser.link_arguments("data.init_args.face_model", "model.init_args.net.init_args.exp_dim", compute_fn=face_exp_dim)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The trainer; under SLURM without Lightning's auto-requeue, whose SIGUSR1 handler saves ``hpc_ckpt_N.ckpt``
        into the working directory from inside the signal handler (FinalStepCheckpoint stops and saves instead)."""
        if SLURMEnvironment.detect() and not self._get(self.config_init, "trainer", default={}).get("plugins"):
            kwargs.setdefault("plugins", [SLURMEnvironment(auto_requeue=False)])
        trainer = super().instantiate_trainer(**kwargs)
        trainer._checkpoint_connector = _OwnFolderCheckpoints(trainer)
        return trainer

    def before_instantiate_classes(self) -> None:
        torch.set_float32_matmul_precision(self._get(self.config, "float32_matmul_precision", default="highest"))

    # -- run and checkpoint bookkeeping, before each subcommand -----------------------------------
    def before_fit(self) -> None:
        self._init_weights()
        self._prepare_run()
        self._gan_ddp()

    def before_validate(self) -> None:
        self._prepare_run()

    def before_test(self) -> None:
        self._prepare_run()

    def before_predict(self) -> None:
        self._prepare_run()

    def _prepare_run(self) -> None:
        """Check the inputs, pick the run name and checkpoint folder; with ``--ckpt_path`` continue the checkpoint's MLflow run.

        A run is named by ``run_name``, else by this job's id (SLURM, torchrun), else by the time. ``--ckpt_path last``
        resumes the named run (or this job's) and nothing else. A ``fit`` of a job whose run folder already has
        ``last.ckpt`` is that job requeued or restarted: it resumes its run without ``--ckpt_path``. Every rank
        derives the same name and checkpoint from the same inputs.
        """
        if self.subcommand != "fit" and self.config_init[self.subcommand].get("init_from"):
            raise ResumeError(f"--init_from is for fit; {self.subcommand} takes a checkpoint with --ckpt_path")
        if isinstance(self.datamodule, ShardDataModule):  # before any MLflow run exists: a user error leaves no empty run behind
            self.datamodule.check_inputs(self.subcommand, self.trainer.world_size)
        logger = find_run_logger(self.trainer)
        if logger is None:
            return
        self._check_tracking_store(logger.tracking_uri)
        config = self.config_init[self.subcommand]
        ckpt_cb = self.trainer.checkpoint_callback
        root = Path(self.trainer.default_root_dir) / "checkpoints" / logger.experiment_name
        ckpt_path = config.get("ckpt_path")
        own = logger.run_name or self._job_run_name()
        if ckpt_path == "last":
            if own is None and not (ckpt_cb and ckpt_cb.dirpath):
                runs = ", ".join(p.name for p in run_folders(root)) or "none yet"
                raise ResumeError(f"--ckpt_path last: which run? pass --trainer.logger.init_args.run_name NAME (runs with a last.ckpt in {root}: {runs})")
            folder = Path(ckpt_cb.dirpath) if ckpt_cb and ckpt_cb.dirpath else root / own
            ckpt_path = latest_checkpoint(folder, runs=False)
            if ckpt_path is None:
                if self.subcommand != "fit":
                    raise ResumeError(f"--ckpt_path last: no last.ckpt in {folder}; pass a checkpoint path")
                rank_zero_info(f"--ckpt_path last: no last.ckpt in {folder} yet, so this is a new run")
            config["ckpt_path"] = str(ckpt_path) if ckpt_path else None
        elif ckpt_path and not Path(ckpt_path).is_file():
            raise ResumeError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
        elif ckpt_path is None and self.subcommand == "fit" and logger.run_name is None and own and not (ckpt_cb and ckpt_cb.dirpath):
            if found := latest_checkpoint(root / own, runs=False):  # this job's own earlier attempt: requeued or restarted
                ckpt_path = config["ckpt_path"] = str(found)
                rank_zero_info(f"job {job_id()} already trained run {own!r} to {found}: resuming it (a requeued or restarted job)")
        run = run_of_checkpoint(ckpt_path) if ckpt_path else None
        if run and run.get("run_id"):
            if logger.run_name and logger.run_name != run["run_name"]:
                rank_zero_info(f"run_name {logger.run_name!r} ignored: the checkpoint belongs to run {run['run_name']!r}")
            logger._run_name = run["run_name"]
            logger.continue_run(run["run_id"])
            rank_zero_info(f"continuing MLflow run {run['run_name']} ({run['run_id']}) from {ckpt_path}")
        elif logger.run_name is None:
            logger._run_name = own or self._new_run_name()
        if ckpt_cb is not None and ckpt_cb.dirpath is None:
            ckpt_cb.dirpath = str(root / logger.run_name)
            if self.subcommand == "fit" and not ckpt_path and latest_checkpoint(Path(ckpt_cb.dirpath), runs=False):
                raise ResumeError(
                    f"run {logger.run_name!r} already has checkpoints in {ckpt_cb.dirpath}: "
                    "resume it with --ckpt_path last, or choose another trainer.logger.init_args.run_name"
                )

    def _init_weights(self) -> None:
        """``--init_from``: the checkpoint's weights, nothing else of it; its run and file become the new run's parent tags."""
        config = self.config_init[self.subcommand]
        if not (path := config.get("init_from")):
            return
        if config.get("ckpt_path"):
            raise ResumeError("--init_from starts a new run from a checkpoint's weights, --ckpt_path resumes a run: give one of them")
        tags = load_initial_weights(self.model, path)
        if (logger := find_run_logger(self.trainer)) is not None:
            logger.tags = {**(logger.tags or {}), **tags}
        rank_zero_info(f"weights from {path} (run {tags.get('parent/run_name', 'unknown')}); new optimizer, step 0, new run")

    def _check_tracking_store(self, uri: str) -> None:
        """Refuse a sqlite file for a job on several machines: their processes would share one database file over a network filesystem."""
        if (db := sqlite_file(uri)) is not None and self.trainer.num_nodes > 1:
            raise ConfigError(
                f"{self.trainer.num_nodes} nodes would track into the sqlite file {db}, which a network filesystem does not lock safely: "
                "start a tracking server (make mlflow-server, or mlflow server --host 0.0.0.0 ...) and set MLFLOW_TRACKING_URI=http://HOST:5000"
            )

    def _run_prefix(self) -> str:
        return type(self.model).__name__.removesuffix("Module").lower() or "run"

    def _job_run_name(self) -> str | None:
        """``<model>-job<id>`` for a SLURM or torchrun job (the same in every process and every restart of it), else None."""
        job = job_id()
        return f"{self._run_prefix()}-job{job}" if job else None

    def _gan_ddp(self) -> None:
        """A manually optimised GAN under plain DDP needs ``find_unused_parameters``.

        Lightning's ``ddp`` wraps the whole LightningModule in one DDP, and each of the critic's and the
        generator's backward passes reaches only its own network's parameters; without the flag DDP
        waits for gradients that never come and fails at the next step. ``ddp_networks`` (the presets')
        wraps each network apart and needs nothing of the kind.
        """
        strategy = self.trainer.strategy
        if isinstance(strategy, NetworkDDPStrategy) and hasattr(self.model, "ddp_networks"):
            return
        if not self.model.automatic_optimization and isinstance(strategy, DDPStrategy) and not strategy._ddp_kwargs.get("find_unused_parameters"):
            strategy._ddp_kwargs["find_unused_parameters"] = True
            rank_zero_info("manual optimisation under ddp: find_unused_parameters=True, two all-reduces of both networks per iteration "
                           "(--trainer.strategy ddp_networks: one per network)")

    def _new_run_name(self) -> str:
        """``<model>-<time>``, shared by every process of a DDP job Lightning launches (they inherit it through the environment)."""
        if name := os.environ.get(RUN_NAME_ENV):
            return name
        name = f"{self._run_prefix()}-{time.strftime('%Y%m%d-%H%M%S')}"
        if rank_zero_only.rank == 0:
            os.environ[RUN_NAME_ENV] = name
        return name


def _user_error(message: str) -> NoReturn:
    """An expected mistake of the user: one line on stderr, exit status 2, no traceback (real crashes keep theirs)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(args: list[str] | None = None) -> None:
    """Entry point (``python -m lightning_modules`` and the ``realtalk-train`` script)."""
    argv = sys.argv[1:] if args is None else args
    # commands beside LightningCLI's: A2E -> renderer on test shards, and the MLflow run table
    if argv and argv[0] == "evaluate":
        from lightning_modules.evaluation.evaluate import main as evaluate_main

        return evaluate_main(argv[1:])
    if argv and argv[0] in ("dub", "stream", "export"):
        import importlib

        sys.exit(importlib.import_module(f"lightning_modules.inference.{argv[0]}").main(argv[1:]))
    if argv and argv[0] == "adapt":
        from lightning_modules.renderer.adapt import main as adapt_main

        sys.exit(adapt_main(argv[1:]))
    if argv and argv[0] == "runs":
        from lightning_modules.tracking.compare import main as runs_main

        return runs_main(argv[1:])
    inherited = RUN_NAME_ENV in os.environ
    try:
        RealTalkCLI(args=args)
    except ArgumentError as e:  # a config key that does not exist, a value of the wrong type, a missing config file
        _user_error(config_error_line(str(e), argv[0] if argv else "fit"))
    except ConfigError as e:  # missing or mismatched shards, too few items for the ranks, no such checkpoint
        _user_error(str(e))
    finally:
        if not inherited:  # a later CLI call in the same process must not reuse this run's name
            os.environ.pop(RUN_NAME_ENV, None)
