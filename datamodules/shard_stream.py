"""Streaming the shard folders written by ``python -m preprocess shard`` under DDP and DataLoader workers.

Training (:class:`TrainStream`): each rank and worker reads its own endless sequence of shards and cuts it
into *rounds* of ``clips_per_round`` consecutive samples; a round's items are made, shuffled with a
generator seeded by (seed, epoch, slot, round) and batched inside the worker. Every worker yields the same
number of batches per epoch, so ranks stay in step however unevenly the shards divide (an uneven count
would leave one DDP rank waiting forever in an all-reduce). Each batch carries its worker's position
(``loader_state``: the round, where the round starts and how many of its items are used), which is all a
resumed run needs to continue the epoch exactly: re-make that one round and skip its used items.

Evaluation (:class:`EvalItems`): the split's samples are indexed from the tar headers and dealt to ranks
and workers by clip *before* anything is read, balanced by frame count, so each process decodes only its
share. A rank left without an item (fewer clips than ranks, or clips without a usable frame) gets one
duplicate item marked ``pad``, which the modules leave out of every metric: the rank still takes part in
the metric synchronisation the others wait in.
"""

from __future__ import annotations

import heapq
import json
import logging
import random
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import count, islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from preprocess.errors import ConfigError

log = logging.getLogger(__name__)

LOADER_STATE = "loader_state"
"""Batch key of a training batch's worker position (removed before the batch reaches the module)."""


class MissingShardsError(ConfigError, FileNotFoundError):
    """A split has no shards in the configured folder."""


def split_shards(root: str | Path, split: str) -> list[str]:
    """The complete ``<split>-*.tar`` shards in ``root``, sorted (``.tmp`` leftovers are ignored)."""
    urls = sorted(str(p) for p in Path(root).glob(f"{split}-*.tar"))
    if not urls:
        raise MissingShardsError(
            f"no {split!r} shards in {root}: write them with 'python -m preprocess shard ...' "
            "(or 'make demo' for the bundled samples), or point data.init_args.shards at the folder that has them"
        )
    return urls


def split_frames(root: str | Path, split: str) -> int | None:
    """Frames in ``split`` according to ``manifest.json`` (None when there is no manifest)."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("splits", {}).get(split, {}).get("frames")


def warn_and_skip(exn: Exception) -> bool:
    """WebDataset handler: name the unreadable shard data, skip it, keep training."""
    log.warning("skipping unreadable shard data (%s: %s); rewrite that shard with 'python -m preprocess shard'", type(exn).__name__, exn)
    return True


def worker_slot() -> tuple[int, int]:
    """(this DataLoader worker, number of workers); (0, 1) in the main process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


# -- evaluation: samples indexed, then dealt by clip --------------------------------------------------
@dataclass(frozen=True)
class SampleRef:
    """Where one sample's members lie in its shard: read with :func:`read_sample` without reading the others."""

    url: str
    key: str
    frames: int
    members: tuple[tuple[str, int, int], ...]  # (member name after the key, byte offset, size)


def index_samples(urls: list[str]) -> list[SampleRef]:
    """Every sample of ``urls`` in shard order, from the tar headers and the small meta.json members.

    The tar files are opened for random access, so the large members (video, landmarks) are skipped, not read.
    A shard that ends early (truncated) keeps the samples before the damage, with a warning.
    """
    refs: list[SampleRef] = []
    for url in urls:
        members: dict[str, list[tuple[str, int, int]]] = {}
        frames: dict[str, int] = {}
        try:
            with tarfile.open(url) as tar:
                for info in tar:
                    key, _, ext = info.name.partition(".")
                    if not info.isfile() or not ext:
                        continue
                    members.setdefault(key, []).append((ext, info.offset_data, info.size))
                    if ext == "meta.json" and (f := tar.extractfile(info)):
                        frames[key] = int(json.loads(f.read()).get("num_frames", 0))
        except (tarfile.TarError, OSError, json.JSONDecodeError) as e:
            warn_and_skip(ValueError(f"{url}: {e}"))
        refs += [SampleRef(url, key, frames[key], tuple(m)) for key, m in members.items() if key in frames]
    return refs


def read_sample(ref: SampleRef) -> dict[str, Any]:
    """The raw sample (member name -> bytes) ``ref`` points to, as ``webdataset.tarfile_to_samples`` would give it."""
    sample: dict[str, Any] = {"__key__": ref.key, "__url__": ref.url}
    with open(ref.url, "rb") as f:
        for ext, offset, size in ref.members:
            f.seek(offset)
            sample[ext] = f.read(size)
            if len(sample[ext]) != size:
                raise ValueError(f"{ref.url} is truncated inside sample {ref.key}")
    return sample


def deal(weights: list[int], parts: int) -> list[list[int]]:
    """Indices of ``weights`` (e.g. clips' frame counts) split into ``parts`` lists of about equal total weight:
    heaviest first to the least loaded, each list in index order. The first ``parts`` items go one to each part,
    so every part gets one whenever there are enough; the same split in every process."""
    load = [(0, p) for p in range(parts)]
    out: list[list[int]] = [[] for _ in range(parts)]
    for i in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        total, p = heapq.heappop(load)
        out[p].append(i)
        heapq.heappush(load, (total + weights[i], p))
    return [sorted(part) for part in out]


class EvalItems(IterableDataset):
    """Every item ``transform`` makes from ``refs``, once: clips dealt to ranks, then to this rank's workers.

    With ``pad``, worker 0 of a rank whose own clips gave no item yields one item of another clip marked
    ``pad=True`` (every item carries ``pad``), so every rank runs at least one evaluation batch.
    """

    def __init__(self, refs: list[SampleRef], rank: int, world_size: int, transform: Callable[[dict[str, Any]], Iterator[dict[str, Any]]], pad: bool = True) -> None:
        self.refs, self.rank, self.world_size, self.transform, self.pad = list(refs), rank, world_size, transform, pad

    def _items(self, ref: SampleRef) -> Iterator[dict[str, Any]]:
        try:
            raw = read_sample(ref)
        except (OSError, ValueError) as e:
            warn_and_skip(e)
            return
        yield from self.transform(raw)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers = worker_slot()
        rank_refs = [self.refs[i] for i in deal([r.frames for r in self.refs], self.world_size)[self.rank]]
        mine = [rank_refs[i] for i in deal([r.frames for r in rank_refs], workers)[worker]]
        produced = False
        for ref in mine:
            for item in self._items(ref):
                produced = True
                yield {**item, "pad": False} if self.pad else item
        if self.pad and worker == 0 and not produced and self.refs:
            start = self.rank % len(self.refs)
            for ref in self.refs[start:] + self.refs[:start]:
                for item in self._items(ref):
                    yield {**item, "pad": True}
                    return


# -- training: rounds of clips, positions that survive a restart -------------------------------------
@dataclass
class WorkerState:
    """Where one worker's stream stands after the batches it has yielded (see module docstring)."""

    epoch: int = 0
    batches: int = 0  # yielded this epoch
    round: int = 0  # the round the next item comes from
    shard: int = 0  # that round's first sample: the ``shard``-th shard of this worker's sequence ...
    sample: int = 0  # ... its ``sample``-th sample
    offset: int = 0  # items of that round already batched

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class StreamConfig:
    """What every worker of a :class:`TrainStream` needs (pickled into the worker processes)."""

    urls: list[str]
    seed: int
    rank: int
    world_size: int
    batch_size: int
    clips_per_round: int
    batches_per_worker: int
    resume: dict[int, dict[str, int]] = field(default_factory=dict)  # global slot -> WorkerState fields


class TrainStream(IterableDataset):
    """Endless, seeded training batches for one rank, cut to ``batches_per_worker`` per worker and epoch.

    Args:
        config: shards, seed, this rank's place, batch and round sizes, states to resume from.
        items: (key, decoded sample, round generator) -> the sample's items; must draw only from that generator.
        decode: raw sample -> decoded sample, or None to skip it.
        collate: items -> batch.
    """

    def __init__(self, config: StreamConfig, items: Callable[[str, dict[str, Any], np.random.Generator], list[Any]],
                 decode: Callable[[dict[str, Any]], dict[str, Any] | None], collate: Callable[[list[Any]], dict[str, Any]]) -> None:
        self.config, self.items, self.decode, self.collate = config, items, decode, collate
        # shared with the worker processes, which keep their copy of this object when they persist across epochs
        self.epoch = torch.zeros((), dtype=torch.long).share_memory_()

    def shard_at(self, n: int, slot: int, slots: int, epoch: int) -> str:
        """The ``n``-th shard this slot reads in ``epoch``.

        Each pass over the list shuffles it with a seed every rank shares and gives every (world x workers)-th
        shard to this slot: shuffle, then split by node, then by worker. With fewer shards than slots a slot
        would get none, so each slot then draws shards at random (resampling).
        """
        urls, seed = self.config.urls, self.config.seed
        if len(urls) < slots:
            return random.Random(f"{seed}-{epoch}-{slot}-{n}").choice(urls)
        per_pass = len(urls[slot::slots])
        order = list(urls)
        random.Random(f"{seed}-{epoch}-{n // per_pass}").shuffle(order)
        return order[slot::slots][n % per_pass]

    def samples(self, slot: int, slots: int, epoch: int, shard: int, sample: int) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """(shard, sample, raw sample) from the given position on, endless."""
        empty = 0
        for n in count(shard):
            url = self.shard_at(n, slot, slots, epoch)
            first = sample if n == shard else 0
            raw = wds.tarfile_to_samples(handler=warn_and_skip)(iter([{"url": url}]))
            read = 0
            for s, item in enumerate(islice(raw, first, None), start=first):
                read += 1
                yield n, s, item
            empty = 0 if read else empty + 1
            if empty > len(self.config.urls) + slots:  # every shard this worker reads is unreadable: say so instead of spinning
                raise RuntimeError(f"no readable sample in {empty} shards in a row ({url} ...): rewrite them with 'python -m preprocess shard'")

    def make_round(self, raws: list[dict[str, Any]], rng: np.random.Generator) -> list[Any]:
        items: list[Any] = []
        for raw in raws:
            if (sample := self.decode(raw)) is not None:
                items += self.items(sample["__key__"], sample, rng)
        return [items[i] for i in rng.permutation(len(items))]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        cfg = self.config
        worker, workers = worker_slot()
        slot, slots, epoch = cfg.rank * workers + worker, cfg.world_size * workers, int(self.epoch)
        saved = cfg.resume.get(slot)
        state = WorkerState(**saved) if saved and saved["epoch"] == epoch else WorkerState(epoch=epoch)
        stream = self.samples(slot, slots, epoch, state.shard, state.sample)
        batches, round_index, offset, start = state.batches, state.round, state.offset, (state.shard, state.sample)
        pending: list[Any] = []
        upcoming = next(stream)  # read one sample ahead: a round's last batch must say where the next round starts
        while batches < cfg.batches_per_worker:
            raws = []
            while len(raws) < cfg.clips_per_round:
                raws.append(upcoming[2])
                upcoming = next(stream)
            after = upcoming[:2]
            items = self.make_round(raws, np.random.default_rng([cfg.seed, epoch, slot, round_index]))
            for j in range(offset, len(items)):
                pending.append(items[j])
                if len(pending) < cfg.batch_size:
                    continue
                batch, pending, batches = self.collate(pending), [], batches + 1
                ended = j + 1 == len(items)  # then the next item is the next round's first: it need not be re-made on resume
                here = WorkerState(epoch, batches, round_index + ended, *(after if ended else start), 0 if ended else j + 1)
                batch[LOADER_STATE] = {"slot": slot, "slots": slots, **here.as_dict()}
                yield batch
                if batches >= cfg.batches_per_worker:
                    return
            round_index, offset, start = round_index + 1, 0, after


class TrainLoader(DataLoader):
    """A DataLoader that tells the stream which epoch starts before the workers read it.

    Lightning calls ``set_epoch`` only on samplers, and an IterableDataset has none; the epoch travels in
    shared memory, so persistent workers see it too.
    """

    def __init__(self, dataset: TrainStream, epoch_fn: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        self._epoch_fn = epoch_fn

    def __iter__(self):  # noqa: ANN204 - DataLoader's own iterator types are private
        self.dataset.epoch.fill_(self._epoch_fn())
        return super().__iter__()
