"""LightningDataModule streaming A2E windows (audio rows, shape, history, targets) from shards."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import webdataset as wds
from torch.utils.data import DataLoader, default_collate

from datamodules.a2e_windows import clip_arrays, fixed_windows, random_windows
from datamodules.shard_stream import EpochLoader, EvalItems, ShardCycle, split_frames, split_shards, warn_and_skip, worker_slot
from preprocess.face_model import FaceModel
from preprocess.schema import check_compatible, decode_sample

log = logging.getLogger(__name__)


def _clip_seed(key: str) -> int:
    return zlib.crc32(key.encode())


class A2EDataModule(L.LightningDataModule):
    """Windows of T frames for the audio-to-expression transformer.

    Training: shard list -> shuffle -> split by node -> split by worker -> clips -> clip shuffle
    buffer -> random windows -> window shuffle buffer -> batches, endless and cut to
    ``train_batches_per_epoch`` per rank. Validation and test: every clip of the split cut into
    consecutive windows with fixed history draws, the same on every run.

    Args:
        shards: folder written by ``python -m preprocess shard`` (``train-*.tar``, ``val-*.tar``, ``test-*.tar``).
        window: T, video frames per example (the example carries 2T audio-feature rows).
        num_history: N, historical expressions per example, drawn from other frames of the same clip.
        audio_features: audio feature name the shards must carry (meta.json ``audio_features.name``).
        audio_dim: width of those features; linked to the model's audio embedding.
        face_model: face model ``.npz`` the shards were fitted with (None = the shipped default);
            linked to the model's vertex loss and checked against meta.json.
        batch_size: windows per batch and rank.
        eval_batch_size: windows per validation/test batch (None = batch_size).
        num_workers: DataLoader worker processes per rank.
        clip_shuffle: shuffle buffer of decoded clips (training).
        window_shuffle: shuffle buffer of windows (training); windows of one clip are spread over batches.
        train_batches_per_epoch: batches per rank and epoch (None = one pass over the training
            frames in the manifest divided among the ranks).
        predict_split: the split ``predict`` runs over (whole clips, one per batch).
        seed: seed of shard order, window starts and history draws.
    """

    def __init__(
        self,
        shards: str = "sharded_data/demo",
        window: int = 16,
        num_history: int = 16,
        audio_features: str = "whisper-tiny",
        audio_dim: int = 384,
        face_model: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        clip_shuffle: int = 64,
        window_shuffle: int = 512,
        train_batches_per_epoch: int | None = None,
        predict_split: str = "test",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if window < 1 or num_history < 0 or batch_size < 1:
            raise ValueError(f"need window >= 1, num_history >= 0, batch_size >= 1; got {window}, {num_history}, {batch_size}")
        self.save_hyperparameters()
        self.face_model_name = FaceModel(face_model).full_name
        self._rank, self._world = 0, 1

    # -- decoding -------------------------------------------------------------------------------
    def _decode(self, raw: dict[str, Any]) -> tuple[str, dict[str, np.ndarray]] | None:
        """(key, arrays), or None for a sample whose members do not decode (skipped with a warning).

        Shards made for another face model or audio extractor stop the run: that is a
        configuration error, not a damaged sample.
        """
        try:
            sample = decode_sample(raw, frames=False)
        except Exception as e:  # noqa: BLE001 - any damage to one sample must not stop training
            log.warning("skipping sample %s of %s: %s: %s", raw.get("__key__"), raw.get("__url__"), type(e).__name__, e)
            return None
        meta = sample["meta"]
        check_compatible(meta, self.face_model_name, self.hparams.audio_features)
        if meta["audio_features"]["dim"] != self.hparams.audio_dim:
            raise ValueError(f"{sample['__key__']}: audio features are {meta['audio_features']['dim']}-d, data.init_args.audio_dim says {self.hparams.audio_dim}")
        return sample["__key__"], clip_arrays(sample)

    def _train_windows(self, clips: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        worker, _ = worker_slot()
        rng = np.random.default_rng([self.hparams.seed, self._cycle.epoch, self._rank, worker])
        for raw in clips:
            if (decoded := self._decode(raw)) is None:
                continue
            key, clip = decoded
            for w in random_windows(clip, self.hparams.window, self.hparams.num_history, rng):
                yield {**w, "key": key}

    def _eval_windows(self, raw: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if (decoded := self._decode(raw)) is None:
            return
        key, clip = decoded
        for w in fixed_windows(clip, self.hparams.window, self.hparams.num_history, seed=_clip_seed(key)):
            yield {**w, "key": key}

    def _whole_clip(self, raw: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if (decoded := self._decode(raw)) is None:
            return
        key, clip = decoded
        rng = np.random.default_rng(_clip_seed(key))
        history = clip["exp"][rng.choice(len(clip["exp"]), self.hparams.num_history, replace=len(clip["exp"]) < self.hparams.num_history)]
        yield {**clip, "shape_ref": clip["shape"][0], "history": history, "key": key}

    # -- Lightning hooks --------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.trainer is not None:
            self._rank, self._world = self.trainer.global_rank, self.trainer.world_size
        # fail here, with the folder named, rather than inside a worker
        needed = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": [self.hparams.predict_split]}[stage]
        self.urls = {split: split_shards(self.hparams.shards, split) for split in needed}
        first = next(iter(wds.tarfile_to_samples(handler=warn_and_skip)(iter([{"url": self.urls[needed[0]][0]}]))), None)
        if first is not None:
            self._decode(first)
        for split in set(needed) & {"val", "test"}:
            frames = split_frames(self.hparams.shards, split)
            if frames is not None and -(-frames // self.hparams.window) < self._world:
                raise ValueError(
                    f"the {split} split of {self.hparams.shards} has {frames} frames: fewer {self.hparams.window}-frame windows "
                    f"than the {self._world} ranks, so some rank would get no batch; add {split} clips or use fewer devices"
                )

    def batches_per_epoch(self) -> int:
        if self.hparams.train_batches_per_epoch:
            return self.hparams.train_batches_per_epoch
        frames = split_frames(self.hparams.shards, "train") or self.hparams.window * self.hparams.batch_size * self._world
        return max(1, frames // (self.hparams.window * self.hparams.batch_size * self._world))

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        self._cycle = ShardCycle(self.urls["train"], hp.seed, self._rank, self._world)
        workers = max(1, hp.num_workers)
        per_worker = -(-self.batches_per_epoch() // workers)  # every worker the same count: ranks stay in step
        pipeline = wds.DataPipeline(
            self._cycle,
            wds.tarfile_to_samples(handler=warn_and_skip),
            wds.shuffle(hp.clip_shuffle, initial=min(hp.clip_shuffle, 8)),
            self._train_windows,
            wds.shuffle(hp.window_shuffle, initial=min(hp.window_shuffle, 64)),
            wds.batched(hp.batch_size, collation_fn=default_collate, partial=False),
        ).with_epoch(per_worker)
        epoch_fn = (lambda: self.trainer.current_epoch) if self.trainer is not None else (lambda: 0)
        return EpochLoader(pipeline, self._cycle, epoch_fn, batch_size=None, num_workers=hp.num_workers, persistent_workers=False)

    def _eval_loader(self, split: str) -> DataLoader:
        ds = EvalItems(self.urls[split], self._rank, self._world, self._eval_windows)
        return DataLoader(ds, batch_size=self.hparams.eval_batch_size or self.hparams.batch_size, num_workers=self.hparams.num_workers, collate_fn=default_collate)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        ds = EvalItems(self.urls[self.hparams.predict_split], self._rank, self._world, self._whole_clip)
        return DataLoader(ds, batch_size=1, num_workers=self.hparams.num_workers, collate_fn=default_collate)

    def example_clip(self, split: str = "val", index: int = 0) -> dict[str, Any]:
        """One whole decoded clip (arrays as in ``predict``), e.g. for plots."""
        raw = wds.tarfile_to_samples(handler=warn_and_skip)(iter({"url": u} for u in split_shards(self.hparams.shards, split)))
        for i, sample in enumerate(raw):
            if i == index:
                return next(self._whole_clip(sample))
        raise IndexError(f"{split} split has only {i + 1} clips")
