"""What every stage's LightningDataModule shares: decoding checked samples, the streaming training
pipeline, the evaluation loaders over ``python -m preprocess shard`` folders, and the loader state that
lets a resumed run continue its epoch.

A stage subclasses :class:`ShardDataModule`, saves its hyperparameters (which must include the
common ones: shards, face_model, exclude, batch_size, eval_batch_size, eval_clips, num_workers, pin_memory,
persistent_workers, prefetch_factor, clip_shuffle, train_batches_per_epoch, seed) and turns decoded
clips into items (A2E windows, renderer frames).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, default_collate

from datamodules.shard_stream import (
    LOADER_STATE,
    EvalItems,
    SampleRef,
    StreamConfig,
    TrainLoader,
    TrainStream,
    index_samples,
    split_frames,
    split_shards,
    warn_and_skip,
)
from preprocess.errors import ConfigError
from preprocess.face_model import FaceModel
from preprocess.schema import check_compatible, decode_sample

log = logging.getLogger(__name__)


class ShardDataModule(L.LightningDataModule):
    """Base class; subclasses set ``reads_frames`` and implement the item makers below."""

    reads_frames = False  # items decode frames.mp4 (the renderer needs the pixels, A2E does not)
    audio_features: str | None = None  # audio feature name the shards must carry (None = not checked)

    def __init__(self) -> None:
        super().__init__()
        self._rank, self._world = 0, 1
        self._consumed: dict[int, dict[str, int]] = {}  # global worker slot -> its state after the last batch the trainer took
        self._saved: dict[str, Any] | None = None  # the loader state a checkpoint brought

    # -- what a stage provides ------------------------------------------------------------------
    def train_items(self, key: str, clip: dict[str, Any], rng: np.random.Generator) -> list[dict[str, Any]]:
        """The training items of one decoded clip; every random draw from ``rng`` (the round's seeded generator)."""
        raise NotImplementedError

    def eval_items(self, key: str, clip: dict[str, Any]) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def frames_per_train_item(self) -> float:
        """Training frames one item stands for, which sets the default epoch length."""
        raise NotImplementedError

    # -- decoding -------------------------------------------------------------------------------
    @cached_property
    def face_model_name(self) -> str:
        return FaceModel(self.hparams.face_model).full_name

    @property
    def seed(self) -> int:
        """The data seed: ``seed``, else the run's (``seed_everything``), else 0."""
        if self.hparams.seed is not None:
            return int(self.hparams.seed)
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def check_sample(self, sample: dict[str, Any]) -> None:
        """Stop on shards made for another configuration (a config error, not a damaged sample)."""
        check_compatible(sample["meta"], self.face_model_name, self.audio_features, frames=self.reads_frames, folder=str(self.hparams.shards))

    @cached_property
    def excluded(self) -> frozenset[str]:
        """Keys of ``exclude`` (a file of one sample key per line, e.g. ``shard_report --sync``'s ``.exclude.txt``)."""
        if not self.hparams.exclude:
            return frozenset()
        path = Path(self.hparams.exclude)
        if not path.is_file():
            raise ConfigError(f"data.init_args.exclude {path}: no such file (python -m preprocess.shard_report --sync --out FILE writes one)")
        return frozenset(line.strip() for line in path.read_text().splitlines() if line.strip())

    def decode_for_training(self, raw: dict[str, Any]) -> dict[str, Any] | None:
        """:meth:`decode`, or None for a clip the ``exclude`` list leaves out of training."""
        return None if raw.get("__key__") in self.excluded else self.decode(raw)

    def decode(self, raw: dict[str, Any], frames: bool = False) -> dict[str, Any] | None:
        """The decoded sample (its frames too with ``frames``; items decode only the ones they use), or None
        for one whose members do not decode (skipped with a warning)."""
        try:
            sample = decode_sample(raw, frames=frames)
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
        self.eval_refs = {split: self.eval_subset(index_samples(urls)) for split, urls in self.urls.items() if split != "train"}

    def check_inputs(self, stage: str, world_size: int = 1) -> dict[str, list[str]]:
        """The shards of each split ``stage`` reads; a :class:`ConfigError` naming the folder when they cannot serve it.

        Missing shards, or shards made for another face model, audio extractor or schema, stop here,
        before any worker starts (the CLI calls this before it opens an MLflow run, and ``setup`` again).
        Evaluation splits need no item count per rank: a rank without a clip gets a padding item.
        """
        needed = self.splits_for(stage)
        urls = {split: split_shards(self.hparams.shards, split) for split in needed}
        if "train" in needed and self.excluded:
            log.info("training leaves out the %d clips listed in %s", len(self.excluded), self.hparams.exclude)
        first = next(iter(wds.tarfile_to_samples(handler=warn_and_skip)(iter([{"url": urls[needed[0]][0]}]))), None)
        if first is not None:
            self.decode(first)
        return urls

    def eval_subset(self, refs: list[SampleRef]) -> list[SampleRef]:
        """``eval_clips`` clips of an evaluation split, the same ones whatever the ranks and workers (all when None)."""
        n = self.hparams.eval_clips
        if n is None or n >= len(refs):
            return refs
        keep = random.Random(f"{self.seed}-eval").sample(range(len(refs)), n)
        return [refs[i] for i in sorted(keep)]

    def batches_per_epoch(self) -> int:
        if self.hparams.train_batches_per_epoch:
            return self.hparams.train_batches_per_epoch
        per_batch = self.frames_per_train_item() * self.hparams.batch_size * self._world
        frames = split_frames(self.hparams.shards, "train") or per_batch
        return max(1, int(frames // per_batch))

    def loader_options(self) -> dict[str, Any]:
        """DataLoader keywords shared by the training and evaluation loaders."""
        hp = self.hparams
        workers = {"persistent_workers": hp.persistent_workers, "prefetch_factor": hp.prefetch_factor} if hp.num_workers > 0 else {}
        return {"num_workers": hp.num_workers, "pin_memory": hp.pin_memory and torch.cuda.is_available(), **workers}

    def train_loader(self) -> DataLoader:
        """shards → shuffle → split by node → split by worker → rounds of clips → items, shuffled per round → batches, cut per epoch."""
        hp = self.hparams
        workers = max(1, hp.num_workers)
        config = StreamConfig(
            urls=self.urls["train"], seed=self.seed, rank=self._rank, world_size=self._world, batch_size=hp.batch_size,
            clips_per_round=hp.clip_shuffle,
            batches_per_worker=-(-self.batches_per_epoch() // workers),  # every worker the same count: ranks stay in step
            resume=self._resume_states(self._world * workers),
        )
        stream = TrainStream(config, self.train_items, self.decode_for_training, default_collate)
        epoch_fn = (lambda: self.trainer.current_epoch) if self.trainer is not None else (lambda: 0)
        return TrainLoader(stream, epoch_fn, **self.loader_options())

    def eval_loader(self, split: str, transform: Any = None, batch_size: int | None = None, pad: bool = True) -> DataLoader:
        """Every item of ``split`` (or its ``eval_clips`` subset) once, dealt by clip over ranks and workers (see :class:`EvalItems`)."""
        ds = EvalItems(self.eval_refs[split], self._rank, self._world, transform or self._eval_stream, pad)
        bs = batch_size or self.hparams.eval_batch_size or self.hparams.batch_size
        return DataLoader(ds, batch_size=bs, collate_fn=default_collate, **self.loader_options())

    def _eval_stream(self, raw: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if (sample := self.decode(raw)) is not None:
            yield from self.eval_items(sample["__key__"], sample)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader("test")

    def raw_samples(self, split: str) -> Iterator[dict[str, Any]]:
        """The raw samples of ``split`` in shard order (for plots and examples, not training)."""
        return wds.tarfile_to_samples(handler=warn_and_skip)(iter({"url": u} for u in split_shards(self.hparams.shards, split)))

    # -- the loader's place in the epoch, saved in checkpoints ------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Note where the worker of a training batch stands once the trainer takes the batch (not when the
        loader prefetches it), so a checkpoint names exactly the batches trained on."""
        if isinstance(batch, dict) and LOADER_STATE in batch:
            state = dict(batch.pop(LOADER_STATE))
            self._slots = state.pop("slots")
            self._consumed[state.pop("slot")] = state
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Every rank's worker states (gathered: only rank 0 writes the checkpoint)."""
        states = dict(self._consumed)
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, states)
            states = {slot: s for part in gathered for slot, s in part.items()}
        if not states:
            return {}
        return {"loader": {"slots": getattr(self, "_slots", None), "seed": self.seed, "states": states}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved = state_dict.get("loader")
        if self._saved:
            self._consumed = dict(self._saved["states"])

    def _resume_states(self, slots: int) -> dict[int, dict[str, int]]:
        """The saved worker states, when they fit this run's ranks × workers and seed (else the epoch's order restarts, with a warning)."""
        saved = self._saved
        if not saved:
            return {}
        if saved["slots"] != slots or saved["seed"] != self.seed:
            log.warning("the checkpoint's loader state is for %s loader slots (ranks x workers) and data seed %s, this run has %d and %d: "
                        "the epoch's data order restarts from its beginning", saved["slots"], saved["seed"], slots, self.seed)
            self._consumed = {}
            return {}
        return {slot: s for slot, s in saved["states"].items() if slot // (slots // self._world) == self._rank}
