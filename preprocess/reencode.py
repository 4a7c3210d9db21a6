"""``python -m preprocess reencode``: bring a shard folder's frames.mp4 to the current schema in place (see :class:`ReencodeJob`)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from preprocess.config import ReencodeJob
from preprocess.errors import ConfigError
from preprocess.media import decode_mp4, encode_mp4
from preprocess.runner import EXIT_OK, EXIT_SOME_FAILED, rank_and_world
from preprocess.schema import SCHEMA_VERSION
from preprocess.shard_writer import SHARD_RE

TMP_SUFFIX = ".reencode.tmp"


@dataclass
class ShardResult:
    name: str
    samples: int = 0
    frames: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0
    skipped: bool = False  # already of this schema
    damaged: list[str] = field(default_factory=list)  # "key: reason" of samples whose frames do not decode


def shard_schema(path: Path) -> int:
    """The schema of a shard's first sample (a converted shard is converted whole)."""
    with tarfile.open(path) as tar:
        for member in tar:
            if member.name.endswith(".meta.json") and (f := tar.extractfile(member)):
                return int(json.loads(f.read()).get("schema_version", 1))
    return SCHEMA_VERSION  # no sample: nothing to convert


def reencode_sample(sample: dict[str, bytes], keyframe_interval: int, crf: int) -> tuple[dict[str, bytes], int]:
    """The sample with frames.mp4 encoded again and meta.json updated; (sample, frames). Raises on frames that do not decode."""
    meta = json.loads(sample["meta.json"])
    frames = decode_mp4(sample["frames.mp4"])
    if len(frames) != int(meta["num_frames"]):
        raise ValueError(f"frames.mp4 has {len(frames)} frames, meta.json says {meta['num_frames']}")
    meta["schema_version"] = SCHEMA_VERSION
    meta["frames"] = {"codec": "h264", "keyframe_interval": keyframe_interval, "reencoded_crf": crf}
    out = {k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"}
    out["frames.mp4"] = encode_mp4(list(frames), crf=crf, keyframe_interval=keyframe_interval)
    out["meta.json"] = json.dumps(meta, sort_keys=True).encode()
    return out, len(frames)


def damaged_sample(sample: dict[str, bytes], reason: str) -> dict[str, bytes]:
    """The sample as it was, its meta.json brought to this schema with the reason its frames are unusable.

    Readers that decode frames then skip it with a warning, as they skip any damaged sample, and readers
    that do not (A2E) keep using its coefficients and audio.
    """
    out = {k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"}
    meta = json.loads(sample["meta.json"])
    meta["schema_version"] = SCHEMA_VERSION
    meta["frames"] = {"codec": "h264", "keyframe_interval": None, "damaged": reason}
    out["meta.json"] = json.dumps(meta, sort_keys=True).encode()
    return out


def reencode_shard(path: Path, keyframe_interval: int, crf: int) -> ShardResult:
    """Convert one shard: written to ``<name>.reencode.tmp`` and renamed over the shard when complete."""
    res = ShardResult(path.name, bytes_before=path.stat().st_size)
    if shard_schema(path) >= SCHEMA_VERSION:
        res.skipped = True
        return res
    start = time.perf_counter()
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with wds.TarWriter(str(tmp)) as writer:
        for sample in wds.tarfile_to_samples()(iter([{"url": str(path)}])):
            try:
                new, frames = reencode_sample(sample, keyframe_interval, crf)
            except Exception as e:  # noqa: BLE001 - a damaged sample must not stop the shard: kept, named, and marked
                reason = f"{type(e).__name__}: {e}"
                res.damaged.append(f"{sample['__key__']}: {reason}")
                new, frames = damaged_sample(sample, reason), 0
            writer.write(new)
            res.samples += 1
            res.frames += frames
    os.replace(tmp, path)
    res.bytes_after, res.seconds = path.stat().st_size, time.perf_counter() - start
    return res


def _convert(args: tuple[Path, int, int]) -> ShardResult:
    import torch

    torch.set_num_threads(1)
    return reencode_shard(*args)


def run_reencode(job: ReencodeJob) -> int:
    """Convert this rank's share of ``job.shards``; print one summary; exit status as in :class:`ReencodeJob`."""
    if not job.shards.is_dir():
        raise ConfigError(f"no shard folder at {job.shards}: pass --shards with the folder 'python -m preprocess shard' wrote")
    shards = sorted(p for p in job.shards.glob("*.tar") if SHARD_RE.match(p.name))
    if not shards:
        raise ConfigError(f"no <split>-<rank>-<n>.tar shards in {job.shards}")
    if job.keyframe_interval < 1:
        raise ConfigError(f"--keyframe_interval must be >= 1, got {job.keyframe_interval}")
    rank, world = rank_and_world()
    mine = shards[rank::world]
    for leftover in job.shards.glob(f"*{TMP_SUFFIX}"):
        if Path(str(leftover).removesuffix(TMP_SUFFIX)) in mine:
            leftover.unlink()  # a killed run's half-written copy; its shard is still the old one
    start = time.perf_counter()
    results: list[ShardResult] = []
    tasks = [(p, job.keyframe_interval, job.crf) for p in mine]
    with tqdm(total=len(tasks), unit="shard", disable=not job.progress, dynamic_ncols=True) as bar:
        if job.workers <= 1:
            outputs = map(_convert, tasks)
            pool = None
        else:
            pool = mp.get_context("spawn").Pool(job.workers)
            outputs = pool.imap_unordered(_convert, tasks)
        try:
            for res in outputs:
                results.append(res)
                for line in res.damaged:
                    print(f"{res.name}: frames do not decode, sample kept and marked damaged: {line}", file=sys.stderr)
                bar.update(1)
                done = [r for r in results if not r.skipped]
                bar.set_postfix(frames_per_s=f"{sum(r.frames for r in done) / max(time.perf_counter() - start, 1e-9):.0f}")
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    converted = [r for r in results if not r.skipped]
    frames, elapsed = sum(r.frames for r in converted), time.perf_counter() - start
    before, after = sum(r.bytes_before for r in converted), sum(r.bytes_after for r in converted)
    damaged = sum(len(r.damaged) for r in results)
    print(f"rank {rank}/{world}: {len(converted)} shards converted to schema {SCHEMA_VERSION} ({sum(r.samples for r in converted)} samples, "
          f"{frames} frames in {elapsed:.1f} s, {frames / max(elapsed, 1e-9):.0f} frames/s with {max(job.workers, 1)} workers; "
          f"{before / 2**20:.1f} -> {after / 2**20:.1f} MiB), {len(results) - len(converted)} already converted"
          + (f"; {damaged} samples with damaged frames kept as they were" if damaged else ""))
    return EXIT_SOME_FAILED if damaged else EXIT_OK
