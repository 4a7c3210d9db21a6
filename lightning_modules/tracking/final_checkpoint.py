"""Lightning's ModelCheckpoint, plus one checkpoint of the final step.

Lightning saves every ``every_n_train_steps``; a run that ends between two saves (``max_time``,
``max_steps`` not a multiple, ``should_stop`` set by a callback) leaves its last steps out of
``last.ckpt``, and ``--ckpt_path last`` then trains and logs them a second time.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info


class FinalStepCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that also saves (and points ``last`` at) the step training ended on, if not saved yet."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._every_n_train_steps >= 1 and not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)  # as a save every n steps would: keeps save_top_k
            self._save_last_checkpoint(trainer, candidates)
            rank_zero_info(f"training ended at step {trainer.global_step}, between two checkpoints: saved it")
        super().on_train_end(trainer, pl_module)
