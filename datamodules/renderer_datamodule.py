"""LightningDataModule streaming renderer examples (source frame, reference frame, coefficients, masks) from shards."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.face_masks import FaceMasker, MaskKind
from datamodules.renderer_frames import finish_batch, jitter_draws, loader_items, valid_frames
from datamodules.shard_datamodule import ShardDataModule
from preprocess.schema import sample_frames

log = logging.getLogger(__name__)


class RendererDataModule(ShardDataModule):
    """Frames for the FIA renderer; the same streaming rules as the A2E stage (see :mod:`datamodules.shard_datamodule`).

    Training: each clip gives ``frames_per_clip`` random source frames; only they and the reference are
    decoded (shards of schema 2 seek to the keyframe before each). Validation and test: every
    ``eval_stride``-th frame of every clip, each paired with the next such frame (the previous one at a
    clip's end), the same on every run. The loader sends uint8 crops and coefficients; on the device
    (``on_after_batch_transfer``) images become float in [-1, 1] at ``image_size`` and the masks follow the
    source frame's coefficients (:func:`datamodules.renderer_frames.finish_batch`).

    Args:
        shards: folder written by ``python -m preprocess shard``.
        image_size: side of the images the renderer sees; the shards' crops (256) are resized
            when it differs (the cameras are rescaled to match).
        face_model: face model ``.npz`` the shards were fitted with (None = the shipped default);
            linked to the model and checked against meta.json.
        exclude: a file of sample keys (one per line) training leaves out (``shard_report --sync``); validation keeps them.
        mask: ``learnable`` (projected lower face and neck) or ``naive`` (lower half), Table 6.
        mask_dilation: growth of the mask, fraction of the image side.
        mask_feather: soft-edge width (Gaussian sigma), fraction of the image side.
        mask_neck: the learnable mask also covers the neck below the jaw line.
        reference: ``first`` (the clip's first seen frame, as in the paper) or ``random`` (another random frame).
        colour_jitter: training only: recolour each example's source and reference together by a
            random per-channel gain exp(U(±j)) and offset U(±j/2) (0 = off), so that a renderer trained
            on few identities takes the lower face's colours from the reference instead of remembering them.
        frames_per_clip: training examples drawn from each clip.
        eval_stride: validation/test use every n-th frame of each clip.
        eval_clips: validation/test use this many clips of the split, a fixed subset drawn with the seed (None = all).
        batch_size: examples per batch and rank.
        eval_batch_size: examples per validation/test batch (None = batch_size).
        num_workers: DataLoader worker processes per rank (docs/training.md "Data loaders": how many per GPU).
        pin_memory: page-locked batches for faster copies to a GPU (ignored without CUDA).
        persistent_workers: keep the workers between epochs and validations (they need not start again).
        prefetch_factor: batches each worker prepares ahead.
        clip_shuffle: clips per shuffle round: their examples are shuffled together before batching.
        train_batches_per_epoch: batches per rank and epoch (None = as many examples as the
            manifest has training frames, divided among the ranks).
        seed: seed of shard order, frame draws and the eval subset (None = the run's ``seed_everything``, else 0).
    """

    reads_frames = True

    def __init__(
        self,
        shards: str = "sharded_data/demo",
        image_size: int = 256,
        face_model: str | None = None,
        exclude: str | None = None,
        mask: MaskKind = "learnable",
        mask_dilation: float = 0.03,
        mask_feather: float = 0.01,
        mask_neck: bool = True,
        reference: Literal["first", "random"] = "first",
        colour_jitter: float = 0.0,
        frames_per_clip: int = 8,
        eval_stride: int = 8,
        eval_clips: int | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int = 2,
        clip_shuffle: int = 16,
        train_batches_per_epoch: int | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if image_size < 16 or min(frames_per_clip, eval_stride, batch_size, clip_shuffle) < 1:
            raise ValueError(f"need image_size >= 16 and frames_per_clip, eval_stride, batch_size, clip_shuffle >= 1; "
                             f"got {image_size}, {frames_per_clip}, {eval_stride}, {batch_size}, {clip_shuffle}")
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

    def _frames(self, key: str, clip: dict[str, Any], wanted: np.ndarray) -> dict[int, np.ndarray] | None:
        """The decoded crops of frames ``wanted``, by frame number (None, with a warning, when the video does not decode)."""
        unique = np.unique(wanted)
        try:
            return dict(zip(unique.tolist(), sample_frames(clip, unique)))
        except Exception as e:  # noqa: BLE001 - a damaged video skips its clip, not the run
            log.warning("skipping clip %s: its frames do not decode (%s: %s)", key, type(e).__name__, e)
            return None

    def train_items(self, key: str, clip: dict[str, Any], rng: np.random.Generator) -> list[dict[str, Any]]:
        if len(valid := self._seen_frames(key, clip)) == 0:
            return []
        sources = rng.choice(valid, self.hparams.frames_per_clip, replace=len(valid) < self.hparams.frames_per_clip)
        references = self._reference(valid, sources, rng)
        jitter = jitter_draws(len(sources), self.hparams.colour_jitter, rng) if self.hparams.colour_jitter > 0 else None
        if (frames := self._frames(key, clip, np.concatenate([sources, references]))) is None:
            return []
        items = loader_items(clip, frames, source=sources, reference=references)
        if jitter is not None:
            for item, j in zip(items, jitter):
                item["jitter"] = torch.from_numpy(j)
        return items

    def eval_items(self, key: str, clip: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if len(valid := self._seen_frames(key, clip)) == 0:
            return
        stride = self.hparams.eval_stride
        at = np.arange(0, len(valid), stride)
        # the next evaluated frame of the clip; the previous one for the last (a one-frame clip pairs with itself)
        partner = np.where(at + stride < len(valid), at + stride, np.maximum(at - stride, 0))
        sources, partners = valid[at], valid[partner]
        references = self._reference(valid, sources, None)
        if (frames := self._frames(key, clip, np.concatenate([sources, partners, references]))) is not None:
            yield from loader_items(clip, frames, source=sources, reference=references, partner=partners)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.finish_batch(batch)

    def finish_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A loader batch (on its device) made into the renderer's: float images, masks (see :func:`finish_batch`)."""
        return finish_batch(batch, self.hparams.image_size, self.masker)

    def frames_per_train_item(self) -> float:
        return 1.0

    def train_dataloader(self) -> DataLoader:
        return self.train_loader()
