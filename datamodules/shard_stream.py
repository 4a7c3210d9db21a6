"""Streaming the shard folders written by ``python -m preprocess shard`` under DDP and DataLoader workers.

Training streams are infinite and cut by ``with_epoch``, so every rank and every worker yields
the same number of batches per epoch however unevenly the shards divide (an uneven count would
leave one DDP rank waiting forever in an all-reduce). Evaluation streams read every sample once,
each rank and worker keeping its own share of the items, so they need no shard-count arithmetic.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any

import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from preprocess.errors import ConfigError

log = logging.getLogger(__name__)


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


class ShardCycle(IterableDataset):
    """Endless ``{"url": ...}`` stream for one rank and DataLoader worker.

    Each pass shuffles the shard list with a seed every rank shares, then keeps every
    (world x workers)-th shard from this slot on: shuffle, then split by node, then by worker.
    With fewer shards than slots a slot would get none; each slot then draws shards at random
    instead (resampling), with a warning.
    """

    def __init__(self, urls: list[str], seed: int, rank: int, world_size: int) -> None:
        self.urls, self.seed, self.rank, self.world_size = list(urls), seed, rank, world_size
        self.epoch = 0

    def __iter__(self) -> Iterator[dict[str, str]]:
        worker, workers = worker_slot()
        slots, slot = self.world_size * workers, self.rank * workers + worker
        if len(self.urls) < slots:
            if slot == 0:
                log.warning("%d shards for %d ranks x %d workers: every worker samples shards at random", len(self.urls), self.world_size, workers)
            rng = random.Random(f"{self.seed}-{self.epoch}-{slot}")
            while True:
                yield {"url": rng.choice(self.urls)}
        for p in count():
            order = list(self.urls)
            random.Random(f"{self.seed}-{self.epoch}-{p}").shuffle(order)
            for url in order[slot::slots]:
                yield {"url": url}


class EvalItems(IterableDataset):
    """Every item ``transform`` makes from the samples of ``urls``, once, spread over ranks and workers.

    Items (e.g. windows), not samples, are dealt round-robin, so every rank gets at least one
    batch whenever there are at least as many items as ranks: a rank with no batch would skip
    the metric synchronisation the others wait in. Each rank reads the whole split to do this,
    which is cheap for evaluation-sized splits.
    """

    def __init__(self, urls: list[str], rank: int, world_size: int, transform: Callable[[dict[str, Any]], Iterator[Any]]) -> None:
        self.urls, self.rank, self.world_size, self.transform = list(urls), rank, world_size, transform

    def __iter__(self) -> Iterator[Any]:
        worker, workers = worker_slot()
        slots, slot = self.world_size * workers, self.rank * workers + worker
        raw = wds.tarfile_to_samples(handler=warn_and_skip)(iter({"url": u} for u in self.urls))
        items = (item for sample in raw for item in self.transform(sample))
        for i, item in enumerate(items):
            if i % slots == slot:
                yield item


class EpochLoader(DataLoader):
    """A DataLoader that tells the shard cycle which epoch starts before the workers copy it.

    Lightning calls ``set_epoch`` only on samplers, and an IterableDataset has none.
    """

    def __init__(self, dataset: IterableDataset, cycle: ShardCycle, epoch_fn: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self._cycle, self._epoch_fn = cycle, epoch_fn

    def __iter__(self):  # noqa: ANN204 - DataLoader's own iterator types are private
        self._cycle.epoch = self._epoch_fn()
        return super().__iter__()
