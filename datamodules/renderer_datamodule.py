"""LightningDataModule streaming renderer examples (source frame, reference frame, coefficients, masks) from shards."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
from torch.utils.data import DataLoader

from datamodules.face_masks import FaceMasker, MaskKind
from datamodules.renderer_frames import frame_examples, valid_frames
from datamodules.shard_datamodule import ShardDataModule

log = logging.getLogger(__name__)


class RendererDataModule(ShardDataModule):
    """Frames for the FIA renderer; the same streaming rules as the A2E stage (see :mod:`datamodules.shard_datamodule`).

    Training: each decoded clip gives ``frames_per_clip`` random source frames (decoding the video
    once per clip, not per frame), which a shuffle buffer spreads over batches. Validation and
    test: every ``eval_stride``-th frame of every clip, the same on every run. Images are
    float in [-1, 1], ``image_size`` square; the masks follow the source frame's coefficients.

    Args:
        shards: folder written by ``python -m preprocess shard``.
        image_size: side of the images the renderer sees; the shards' crops (256) are resized
            when it differs (the cameras are rescaled to match).
        face_model: face model ``.npz`` the shards were fitted with (None = the shipped default);
            linked to the model and checked against meta.json.
        mask: ``learnable`` (projected lower face and neck) or ``naive`` (lower half), Table 6.
        mask_dilation: growth of the mask, fraction of the image side.
        mask_feather: soft-edge width (Gaussian sigma), fraction of the image side.
        mask_neck: the learnable mask also covers the neck below the jaw line.
        reference: ``first`` (the clip's first seen frame, as in the paper) or ``random`` (another random frame).
        colour_jitter: training only: recolour each example's source and reference together by a
            random per-channel gain exp(U(±j)) and offset U(±j/2) (0 = off), so that a renderer trained
            on few identities takes the lower face's colours from the reference instead of remembering them.
        frames_per_clip: training examples drawn from each decoded clip.
        eval_stride: validation/test use every n-th frame of each clip.
        batch_size: examples per batch and rank.
        eval_batch_size: examples per validation/test batch (None = batch_size).
        num_workers: DataLoader worker processes per rank.
        clip_shuffle: shuffle buffer of decoded clips (training; each holds its whole video).
        frame_shuffle: shuffle buffer of examples (training).
        train_batches_per_epoch: batches per rank and epoch (None = as many examples as the
            manifest has training frames, divided among the ranks).
        seed: seed of shard order and frame draws.
    """

    decode_frames = True

    def __init__(
        self,
        shards: str = "sharded_data/demo",
        image_size: int = 256,
        face_model: str | None = None,
        mask: MaskKind = "learnable",
        mask_dilation: float = 0.03,
        mask_feather: float = 0.01,
        mask_neck: bool = True,
        reference: Literal["first", "random"] = "first",
        colour_jitter: float = 0.0,
        frames_per_clip: int = 8,
        eval_stride: int = 8,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        clip_shuffle: int = 16,
        frame_shuffle: int = 256,
        train_batches_per_epoch: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if image_size < 16 or frames_per_clip < 1 or eval_stride < 1 or batch_size < 1:
            raise ValueError(f"need image_size >= 16 and frames_per_clip, eval_stride, batch_size >= 1; got {image_size}, {frames_per_clip}, {eval_stride}, {batch_size}")
        if not 0 <= colour_jitter <= 1:
            raise ValueError(f"colour_jitter must be in [0, 1]; got {colour_jitter}")
        self.save_hyperparameters()
        self.masker = FaceMasker(face_model, mask, mask_dilation, mask_feather, mask_neck)

    def _reference(self, valid: np.ndarray, sources: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        if self.hparams.reference == "first" or rng is None or len(valid) < 2:
            return np.full_like(sources, valid[0])
        refs = rng.choice(valid, len(sources))
        clash = refs == sources
        refs[clash] = valid[(np.searchsorted(valid, refs[clash]) + 1) % len(valid)]  # another frame, never the source itself
        return refs

    @staticmethod
    def _seen_frames(key: str, clip: dict[str, Any]) -> np.ndarray:
        valid = valid_frames(clip)
        if len(valid) == 0:
            log.warning("skipping clip %s: no frame with a detected face", key)
        return valid

    def train_items(self, key: str, clip: dict[str, Any], rng: np.random.Generator) -> Iterator[dict[str, Any]]:
        if len(valid := self._seen_frames(key, clip)) == 0:
            return
        sources = rng.choice(valid, self.hparams.frames_per_clip, replace=len(valid) < self.hparams.frames_per_clip)
        references = self._reference(valid, sources, rng)
        yield from frame_examples(clip, sources, references, self.hparams.image_size, self.masker, self.hparams.colour_jitter, rng)

    def eval_items(self, key: str, clip: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if len(valid := self._seen_frames(key, clip)) == 0:
            return
        sources = valid[:: self.hparams.eval_stride]
        yield from frame_examples(clip, sources, self._reference(valid, sources, None), self.hparams.image_size, self.masker)

    def eval_item_count(self, frames: int) -> int:
        return frames // self.hparams.eval_stride

    def frames_per_train_item(self) -> float:
        return 1.0

    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self.hparams.frame_shuffle)
