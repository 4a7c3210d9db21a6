"""Lightning's ModelCheckpoint, plus one checkpoint of the step training ended on, however it ended.

Lightning saves every ``every_n_train_steps``; a run that ends between two saves (``max_time``,
``max_steps`` not a multiple, ``should_stop`` set by a callback) would leave its last steps out of
``last.ckpt``, and ``--ckpt_path last`` would then train and log them a second time.

It also turns a cluster's stop signals into such an end. SIGUSR1 (SLURM's warning before the time
limit, ``#SBATCH --signal=USR1@120``) and SIGTERM (preemption, ``scancel``) only set a flag; every
``signal_check_every`` iterations the ranks learn of it (one all-reduce of one number and one host sync,
so all ranks stop at the same step; a single process looks every iteration, at no cost), training stops there, that step is saved into the run's own folder, and after a
SIGUSR1 rank 0 requeues the SLURM job with ``scontrol requeue``. The requeued job keeps its
``SLURM_JOB_ID``, hence its run name, and the CLI resumes that run from this checkpoint.
Lightning's own SLURM handler (``hpc_ckpt_N.ckpt`` in the working directory, saved from inside the
signal handler) is switched off by the CLI.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from types import FrameType

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class FinalStepCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that also saves (and points ``last`` at) the step training ended on, if not saved yet,
    and stops training cleanly on SIGUSR1/SIGTERM (see the module docstring).

    Args:
        requeue: after a SIGUSR1, requeue the SLURM job (``scontrol requeue $SLURM_JOB_ID``) once the step is saved.
        signal_check_every: iterations between the ranks' checks for a stop signal (each waits for the device once).
        *args, **kwargs: ModelCheckpoint's.
    """

    def __init__(self, *args, requeue: bool = True, signal_check_every: int = 10, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.requeue, self.signal_check_every = requeue, max(1, signal_check_every)
        self._signal: int = 0  # the stop signal received, 0 for none
        self._stopped_by: int = 0  # the one all ranks agreed on

    def _note(self, signum: int, _: FrameType | None) -> None:
        self._signal = self._signal or signum  # nothing else in a handler: it may run between any two bytecodes

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # here, after Lightning registered its own SIGTERM handler (which would end the run without a checkpoint)
        self._previous = {s: signal.signal(s, self._note) for s in STOP_SIGNALS}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.world_size == 1:
            stop = self._signal
        elif trainer.global_step % self.signal_check_every == 0:  # the same steps on every rank: they stay in step
            stop = int(trainer.strategy.reduce(torch.tensor(float(self._signal), device=pl_module.device), reduce_op="max"))
        else:
            return
        if stop and not self._stopped_by:
            self._stopped_by = stop
            trainer.should_stop = True
            rank_zero_info(f"{signal.Signals(stop).name} received: stopping after step {trainer.global_step}, which is saved in {self.dirpath}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            if self._every_n_train_steps >= 1:
                self._save_topk_checkpoint(trainer, candidates)  # as a save every n steps would: keeps save_top_k
            self._save_last_checkpoint(trainer, candidates)
            rank_zero_info(f"training ended at step {trainer.global_step}, between two checkpoints: saved it")
        super().on_train_end(trainer, pl_module)
        for s, handler in getattr(self, "_previous", {}).items():
            signal.signal(s, handler)
        if self._stopped_by == signal.SIGUSR1 and self.requeue and trainer.is_global_zero:
            requeue_job()


def requeue_job() -> None:
    """Put this SLURM job back in the queue (it keeps its id); say what to do where that is not possible."""
    job = os.environ.get("SLURM_JOB_ID")
    if array := os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    if not job or shutil.which("scontrol") is None:
        rank_zero_warn("SIGUSR1: the step is saved, but this is not a SLURM job with scontrol, so nothing requeues it: "
                       "start the same command again to resume the run")
        return
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode == 0:
        rank_zero_info(f"requeued SLURM job {job}: it resumes this run from the saved step when it starts again")
    else:
        rank_zero_warn(f"scontrol requeue {job} failed ({result.stderr.strip() or result.returncode}): resubmit the job to resume the run")
