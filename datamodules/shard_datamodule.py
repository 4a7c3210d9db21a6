"""What every stage's LightningDataModule shares: decoding checked samples, the streaming training
pipeline and the evaluation loaders over ``python -m preprocess shard`` folders.

A stage subclasses :class:`ShardDataModule`, saves its hyperparameters (which must include the
common ones: shards, face_model, batch_size, eval_batch_size, num_workers, clip_shuffle,
train_batches_per_epoch, seed) and turns decoded clips into items (A2E windows, renderer frames).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any

import lightning as L
import numpy as np
import webdataset as wds
from torch.utils.data import DataLoader, default_collate

from datamodules.shard_stream import EpochLoader, EvalItems, ShardCycle, split_frames, split_shards, warn_and_skip, worker_slot
from preprocess.errors import ConfigError
from preprocess.face_model import FaceModel
from preprocess.schema import check_compatible, decode_sample

log = logging.getLogger(__name__)


class ShardDataModule(L.LightningDataModule):
    """Base class; subclasses set ``decode_frames`` and implement the item makers below."""

    decode_frames = False  # decode frames.mp4 (the renderer needs the pixels, A2E does not)
    audio_features: str | None = None  # audio feature name the shards must carry (None = not checked)

    def __init__(self) -> None:
        super().__init__()
        self._rank, self._world = 0, 1

    # -- what a stage provides ------------------------------------------------------------------
    def train_items(self, key: str, clip: dict[str, Any], rng: np.random.Generator) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def eval_items(self, key: str, clip: dict[str, Any]) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def eval_item_count(self, frames: int) -> int:
        """A lower bound on the evaluation items a split of ``frames`` frames yields (checked against the ranks)."""
        raise NotImplementedError

    def frames_per_train_item(self) -> float:
        """Training frames one item stands for, which sets the default epoch length."""
        raise NotImplementedError

    # -- decoding -------------------------------------------------------------------------------
    @cached_property
    def face_model_name(self) -> str:
        return FaceModel(self.hparams.face_model).full_name

    def check_sample(self, sample: dict[str, Any]) -> None:
        """Stop on shards made for another configuration (a config error, not a damaged sample)."""
        check_compatible(sample["meta"], self.face_model_name, self.audio_features)

    def decode(self, raw: dict[str, Any]) -> dict[str, Any] | None:
        """The decoded sample, or None for one whose members do not decode (skipped with a warning)."""
        try:
            sample = decode_sample(raw, frames=self.decode_frames)
        except Exception as e:  # noqa: BLE001 - any damage to one sample must not stop training
            log.warning("skipping sample %s of %s: %s: %s", raw.get("__key__"), raw.get("__url__"), type(e).__name__, e)
            return None
        self.check_sample(sample)
        return sample

    # -- Lightning hooks --------------------------------------------------------------------------
    def splits_for(self, stage: str) -> list[str]:
        return {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": [self.hparams.get("predict_split", "test")]}[stage]

    def setup(self, stage: str) -> None:
        if self.trainer is not None:
            self._rank, self._world = self.trainer.global_rank, self.trainer.world_size
        self.urls = self.check_inputs(stage, self._world)

    def check_inputs(self, stage: str, world_size: int) -> dict[str, list[str]]:
        """The shards of each split ``stage`` reads; a :class:`ConfigError` naming the folder when they cannot serve it.

        Missing shards, shards made for another face model or audio extractor, or an evaluation split
        with fewer items than ranks stop here, before any worker starts (the CLI calls this before
        it opens an MLflow run, and ``setup`` again).
        """
        needed = self.splits_for(stage)
        urls = {split: split_shards(self.hparams.shards, split) for split in needed}
        first = next(iter(wds.tarfile_to_samples(handler=warn_and_skip)(iter([{"url": urls[needed[0]][0]}]))), None)
        if first is not None:
            self.decode(first)
        for split in set(needed) & {"val", "test"}:
            frames = split_frames(self.hparams.shards, split)
            if frames is not None and self.eval_item_count(frames) < world_size:
                raise ConfigError(
                    f"the {split} split of {self.hparams.shards} has {frames} frames: fewer evaluation items than the "
                    f"{world_size} ranks, so some rank would get no batch; add {split} clips or use fewer devices"
                )
        return urls

    def batches_per_epoch(self) -> int:
        if self.hparams.train_batches_per_epoch:
            return self.hparams.train_batches_per_epoch
        per_batch = self.frames_per_train_item() * self.hparams.batch_size * self._world
        frames = split_frames(self.hparams.shards, "train") or per_batch
        return max(1, int(frames // per_batch))

    def _train_stream(self, clips: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        worker, _ = worker_slot()
        rng = np.random.default_rng([self.hparams.seed, self._cycle.epoch, self._rank, worker])
        for raw in clips:
            if (sample := self.decode(raw)) is not None:
                yield from self.train_items(sample["__key__"], sample, rng)

    def _eval_stream(self, raw: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if (sample := self.decode(raw)) is not None:
            yield from self.eval_items(sample["__key__"], sample)

    def train_loader(self, item_shuffle: int) -> DataLoader:
        """shards → shuffle → split by node → split by worker → clip buffer → items → item buffer → batches, endless, cut per epoch."""
        hp = self.hparams
        self._cycle = ShardCycle(self.urls["train"], hp.seed, self._rank, self._world)
        workers = max(1, hp.num_workers)
        per_worker = -(-self.batches_per_epoch() // workers)  # every worker the same count: ranks stay in step
        pipeline = wds.DataPipeline(
            self._cycle,
            wds.tarfile_to_samples(handler=warn_and_skip),
            wds.shuffle(hp.clip_shuffle, initial=min(hp.clip_shuffle, 8)),
            self._train_stream,
            wds.shuffle(item_shuffle, initial=min(item_shuffle, 64)),
            wds.batched(hp.batch_size, collation_fn=default_collate, partial=False),
        ).with_epoch(per_worker)
        epoch_fn = (lambda: self.trainer.current_epoch) if self.trainer is not None else (lambda: 0)
        return EpochLoader(pipeline, self._cycle, epoch_fn, batch_size=None, num_workers=hp.num_workers, persistent_workers=False)

    def eval_loader(self, split: str, transform: Callable[[dict[str, Any]], Iterator[Any]] | None = None, batch_size: int | None = None) -> DataLoader:
        """Every item of ``split`` once, dealt over ranks and workers (see :class:`EvalItems`)."""
        ds = EvalItems(self.urls[split], self._rank, self._world, transform or self._eval_stream)
        bs = batch_size or self.hparams.eval_batch_size or self.hparams.batch_size
        return DataLoader(ds, batch_size=bs, num_workers=self.hparams.num_workers, collate_fn=default_collate)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader("test")

    def raw_samples(self, split: str) -> Iterator[dict[str, Any]]:
        """The raw samples of ``split`` in shard order (for plots and examples, not training)."""
        return wds.tarfile_to_samples(handler=warn_and_skip)(iter({"url": u} for u in split_shards(self.hparams.shards, split)))
