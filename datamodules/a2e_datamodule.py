"""LightningDataModule streaming A2E windows (audio rows, shape, history, targets) from shards."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from datamodules.a2e_windows import clip_arrays, fixed_windows, random_windows
from datamodules.shard_datamodule import ShardDataModule


def _clip_seed(key: str) -> int:
    return zlib.crc32(key.encode())


class A2EDataModule(ShardDataModule):
    """Windows of T frames for the audio-to-expression transformer.

    Training: shard list -> shuffle -> split by node -> split by worker -> rounds of ``clip_shuffle``
    clips -> random windows, shuffled per round -> batches, endless and cut to
    ``train_batches_per_epoch`` per rank (see :mod:`datamodules.shard_stream`). Validation and test:
    every clip of the split cut into consecutive windows with fixed history draws, the same on every run.

    Args:
        shards: folder written by ``python -m preprocess shard`` (``train-*.tar``, ``val-*.tar``, ``test-*.tar``).
        window: T, video frames per example (the example carries 2T audio-feature rows).
        num_history: N, historical expressions per example, drawn from other frames of the same clip.
        audio_features: audio feature name the shards must carry (meta.json ``audio_features.name``).
        audio_dim: width of those features; linked to the model's audio embedding.
        face_model: face model ``.npz`` the shards were fitted with (None = the shipped default);
            linked to the model's vertex loss and checked against meta.json.
        exclude: a file of sample keys (one per line) training leaves out, e.g. the clips whose lips do not
            follow their audio (``python -m preprocess.shard_report --sync --out FILE``); validation keeps them.
        batch_size: windows per batch and rank.
        eval_batch_size: windows per validation/test batch (None = batch_size).
        eval_clips: validation/test use this many clips of the split, a fixed subset drawn with the seed (None = all).
        num_workers: DataLoader worker processes per rank.
        pin_memory: page-locked batches for faster copies to a GPU (ignored without CUDA).
        persistent_workers: keep the workers between epochs and validations.
        prefetch_factor: batches each worker prepares ahead.
        clip_shuffle: clips per shuffle round (training): their windows are shuffled together before batching.
        train_batches_per_epoch: batches per rank and epoch (None = one pass over the training
            frames in the manifest divided among the ranks).
        predict_split: the split ``predict`` runs over (whole clips, one per batch).
        seed: seed of shard order, window starts, history draws and the eval subset (None = the run's
            ``seed_everything``, else 0).
    """

    def __init__(
        self,
        shards: str = "sharded_data/demo",
        window: int = 16,
        num_history: int = 16,
        audio_features: str = "whisper-tiny",
        audio_dim: int = 384,
        face_model: str | None = None,
        exclude: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        eval_clips: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int = 2,
        clip_shuffle: int = 64,
        train_batches_per_epoch: int | None = None,
        predict_split: str = "test",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if window < 1 or num_history < 0 or batch_size < 1 or clip_shuffle < 1:
            raise ValueError(f"need window >= 1, num_history >= 0, batch_size >= 1, clip_shuffle >= 1; got {window}, {num_history}, {batch_size}, {clip_shuffle}")
        self.save_hyperparameters()

    @property
    def audio_features(self) -> str:
        return self.hparams.audio_features

    def check_sample(self, sample: dict[str, Any]) -> None:
        super().check_sample(sample)
        if (dim := sample["meta"]["audio_features"]["dim"]) != self.hparams.audio_dim:
            raise ValueError(f"{sample['__key__']}: audio features are {dim}-d, data.init_args.audio_dim says {self.hparams.audio_dim}")

    # -- items ------------------------------------------------------------------------------------
    def train_items(self, key: str, clip: dict[str, Any], rng: np.random.Generator) -> list[dict[str, Any]]:
        return [{**w, "key": key} for w in random_windows(clip_arrays(clip), self.hparams.window, self.hparams.num_history, rng)]

    def eval_items(self, key: str, clip: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for w in fixed_windows(clip_arrays(clip), self.hparams.window, self.hparams.num_history, seed=_clip_seed(key)):
            yield {**w, "key": key}

    def frames_per_train_item(self) -> float:
        return self.hparams.window

    def _whole_clip(self, raw: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if (sample := self.decode(raw)) is None:
            return
        key, clip = sample["__key__"], clip_arrays(sample)
        rng = np.random.default_rng(_clip_seed(key))
        history = clip["exp"][rng.choice(len(clip["exp"]), self.hparams.num_history, replace=len(clip["exp"]) < self.hparams.num_history)]
        yield {**clip, "shape_ref": clip["shape"][0], "history": history, "key": key}

    # -- loaders ----------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        return self.train_loader()

    def predict_dataloader(self) -> DataLoader:
        return self.eval_loader(self.hparams.predict_split, self._whole_clip, batch_size=1, pad=False)

    def example_clip(self, split: str = "val", index: int = 0) -> dict[str, Any]:
        """One whole decoded clip (arrays as in ``predict``), e.g. for plots."""
        for i, sample in enumerate(self.raw_samples(split)):
            if i == index:
                return next(self._whole_clip(sample))
        raise IndexError(f"{split} split has only {i + 1} clips")
