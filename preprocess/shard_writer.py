"""Crash-safe shard writing: ``<split>-<rank>-<n>.tar``, written as ``.tar.tmp`` and renamed when complete.

A complete ``.tar`` is never touched again, so a rerun after ``kill -9`` keeps every clip
in complete shards, deletes the half-written ``.tmp`` shards of its own rank, and redoes
only the clips that were in them.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import webdataset as wds

SHARD_RE = re.compile(r"^(?P<split>[a-z]+)-(?P<rank>\d{3})-(?P<n>\d{6})\.tar$")


@dataclass
class ShardInfo:
    """What a complete shard holds (its manifest entry)."""

    name: str
    split: str
    keys: list[str] = field(default_factory=list)
    frames: int = 0
    clip_segments: list[tuple[str, int]] = field(default_factory=list)  # (clip key, samples that clip makes: its segments long enough)
    config_hashes: set[str] = field(default_factory=set)  # processing settings the samples were made with
    schema_versions: set[int] = field(default_factory=set)


def read_shard_info(path: Path) -> ShardInfo:
    """Keys and frame count of one complete shard, from its tar headers and meta.json members."""
    m = SHARD_RE.match(path.name)
    info = ShardInfo(path.name, m["split"] if m else "unknown")
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            if ext == "meta.json":
                f = tar.extractfile(member)
                meta = json.loads(f.read()) if f else {}
                info.keys.append(key)
                info.frames += int(meta.get("num_frames", 0))
                info.clip_segments.append((meta.get("clip_key", key), int(meta.get("segments_kept", meta.get("segments_total", 1)))))
                info.config_hashes.add(str(meta.get("config_hash")))
                info.schema_versions.add(int(meta.get("schema_version", 1)))
    return info


class SplitShardWriter:
    """One webdataset.ShardWriter per split, for one rank, continuing the shard numbering.

    Args:
        out_dir: output folder (created).
        rank: this process's rank; only its own shards and temporaries are touched.
        maxcount: samples per shard.
        maxsize: bytes per shard.
        on_complete: called with each shard's path once it is complete (renamed).
    """

    def __init__(self, out_dir: Path, rank: int, maxcount: int, maxsize: float, on_complete: Callable[[Path], None] | None = None) -> None:
        self.out_dir = out_dir
        self.rank = rank
        self.maxcount = maxcount
        self.maxsize = maxsize
        self.on_complete = on_complete
        out_dir.mkdir(parents=True, exist_ok=True)  # ShardWriter does not create it
        for tmp in out_dir.glob(f"*-{rank:03d}-*.tar.tmp"):
            tmp.unlink()  # half-written by a killed run; its clips are redone
        self._writers: dict[str, wds.ShardWriter] = {}
        self.completed: list[str] = []

    def _next_index(self, split: str) -> int:
        ns = [int(m["n"]) for p in self.out_dir.glob(f"{split}-{self.rank:03d}-*.tar") if (m := SHARD_RE.match(p.name))]
        return max(ns, default=-1) + 1

    def _finished(self, tmp_name: str) -> None:
        final = tmp_name.removesuffix(".tmp")
        os.replace(tmp_name, final)
        self.completed.append(final)
        if self.on_complete is not None:
            self.on_complete(Path(final))

    def write(self, split: str, sample: dict[str, Any]) -> None:
        if split not in self._writers:  # lazily: ShardWriter opens a file as soon as it exists
            pattern = str(self.out_dir / f"{split}-{self.rank:03d}-%06d.tar.tmp")
            self._writers[split] = wds.ShardWriter(
                pattern, maxcount=self.maxcount, maxsize=self.maxsize, post=self._finished,
                start_shard=self._next_index(split), verbose=0,
            )
        self._writers[split].write(sample)

    def close(self) -> None:
        """Finish every open shard and rename it complete."""
        for w in self._writers.values():
            w.close()
        self._writers.clear()

    def abort(self) -> None:
        """Close without renaming: an interrupted write may have left a partial sample in the
        open shard, so it stays ``.tmp`` and the next run deletes it and redoes its clips."""
        for w in self._writers.values():
            w.post = None
            w.close()
        self._writers.clear()
