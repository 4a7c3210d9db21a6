"""Run a ShardJob: split clips across ranks and workers, skip finished ones, write, summarise."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from preprocess.config import ShardJob
from preprocess.datasets import Clip, list_clips, read_speaker_map
from preprocess.errors import ClipError, ConfigError
from preprocess.face_model import FaceModel
from preprocess.manifest import all_done, merge, other_ranks_shards, write_partial
from preprocess.schema import SCHEMA_VERSION, clip_key_of
from preprocess.shard_writer import SHARD_RE, ShardInfo, SplitShardWriter, read_shard_info

EXIT_OK, EXIT_CONFIG, EXIT_SOME_FAILED = 0, 2, 3


def rank_and_world() -> tuple[int, int]:
    """This process's share of a multi-machine job, from torchrun or SLURM variables."""
    for r, w in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if r in os.environ and w in os.environ:
            return int(os.environ[r]), int(os.environ[w])
    return 0, 1


def done_clip_keys(shards: list[ShardInfo]) -> set[str]:
    """Clips whose every sample (each segment long enough) is in a complete shard (any rank, any earlier run)."""
    seen: Counter[str] = Counter()
    totals: dict[str, int] = {}
    for s in shards:
        for clip_key, total in s.clip_segments:
            seen[clip_key] += 1
            totals[clip_key] = total
    return {k for k, n in seen.items() if n >= totals[k]}


def kept_failures(path: Path, done: set[str]) -> list[str]:
    """Ledger lines of an earlier run for clips this run skips as done (a short segment of a written clip):
    they stay in the ledger, since the clip is not processed again to record them anew."""
    if not path.exists():
        return []
    lines = [ln for ln in path.read_text().splitlines(keepends=True) if ln.strip()]
    return [ln for ln in lines if clip_key_of(json.loads(ln)["key"]) in done]


_processor = None


def _init_worker(job: ShardJob) -> None:
    global _processor
    import torch

    torch.set_num_threads(1)  # one core per worker process; parallelism comes from the pool
    from preprocess.pipeline import ClipProcessor

    _processor = ClipProcessor(job)


def _process(clip: Clip):
    from preprocess.pipeline import ClipResult

    try:
        return _processor(clip)
    except ClipError as e:
        res = ClipResult(clip)
        res.failures.append({"key": clip.key, "path": clip.path, "stage": e.stage, "reason": e.reason})
        return res
    except Exception as e:  # a bug or an input nobody foresaw: record it, keep the job going
        res = ClipResult(clip)
        where = traceback.extract_tb(e.__traceback__)[-1]
        res.failures.append({"key": clip.key, "path": clip.path, "stage": "internal",
                             "reason": f"{e.__class__.__name__}: {e} (at {Path(where.filename).name}:{where.lineno}); please report"})
        return res


def _results(job: ShardJob, todo: list[Clip]) -> Iterator:
    if job.workers <= 1:
        _init_worker(job)
        try:
            yield from map(_process, todo)
        finally:
            _processor.close()
        return
    # spawn: MediaPipe and torch thread pools do not survive fork
    with mp.get_context("spawn").Pool(job.workers, _init_worker, (job,), maxtasksperchild=200) as pool:
        yield from pool.imap_unordered(_process, todo, chunksize=1)


def run_shard(job: ShardJob) -> int:
    rank, world = rank_and_world()
    clips = list_clips(job.dataset, job.root, job.split, job.meta_csv, job.audio_root, job.mead_view, job.speaker, read_speaker_map(job.speakers))
    random.Random(job.seed).shuffle(clips)  # mixes speakers across shards; same order on every rank
    if job.limit is not None:
        clips = clips[: job.limit]
    mine = clips[rank::world]
    if job.dry_run:
        for c in mine:
            span = f" [{c.start:.2f}-{c.end:.2f}s]" if c.end is not None else ""
            print(f"{c.split:5s}  {c.key}  {c.path}{span}")
        counts = Counter(c.split for c in mine)
        print(f"{len(mine)} clips for rank {rank}/{world} ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}); nothing written")
        return EXIT_OK

    job.out.mkdir(parents=True, exist_ok=True)
    if job.overwrite:
        for p in list(job.out.glob(f"*-{rank:03d}-*.tar")) + list(job.out.glob(f"*-{rank:03d}-*.tar.tmp")):
            p.unlink()
    # this rank's own tars, and what the other ranks recorded in their partial manifests (never their tars)
    own = [read_shard_info(p) for p in sorted(job.out.glob(f"*-{rank:03d}-*.tar")) if SHARD_RE.match(p.name)]
    existing = own + other_ranks_shards(job.out, rank)
    about = {"dataset": job.dataset, "root": str(job.root)}
    write_partial(job.out, rank, world, own, False, about)
    config_hash = job.processing_hash(FaceModel(job.face_model).full_name)
    other = set().union(*(s.config_hashes for s in existing)) - {config_hash}
    if other:  # resuming into them would mix samples made with other settings or another face model
        raise ConfigError(f"{job.out} holds shards made with other settings (config hash {', '.join(sorted(other))}; "
                          f"this run: {config_hash}): pass --overwrite true to redo them, or choose another --out")
    old = set().union(*(s.schema_versions for s in existing)) - {SCHEMA_VERSION}
    if old:  # the frames of older shards are encoded differently: readers refuse a folder that mixes them
        raise ConfigError(f"{job.out} holds shards of schema {', '.join(map(str, sorted(old)))} (this run writes {SCHEMA_VERSION}): "
                          f"convert them first with 'python -m preprocess reencode --shards {job.out}', or pass --overwrite true to redo them")

    def completed(path: Path) -> None:  # recorded as soon as it is complete: a killed rank's partial stays true
        own.append(read_shard_info(path))
        write_partial(job.out, rank, world, own, False, about)

    writer = SplitShardWriter(job.out, rank, job.shard_maxcount, job.shard_maxsize, on_complete=completed)
    done = done_clip_keys(existing)
    todo = [c for c in mine if c.key not in done]
    skipped = len(mine) - len(todo)
    fail_path = job.out / f"failures-rank{rank:03d}.jsonl"
    reasons: Counter[str] = Counter()
    stage_s: Counter[str] = Counter()
    written = frames = 0
    errs: list[float] = []
    t0 = time.time()
    print(f"rank {rank}/{world}: {len(mine)} clips, {skipped} already in complete shards, {len(todo)} to do -> {job.out}", file=sys.stderr)
    kept = kept_failures(fail_path, {c.key for c in mine if c.key in done})
    with open(fail_path, "w") as fails, tqdm(total=len(todo), unit="clip", disable=not job.progress, dynamic_ncols=True) as bar:
        try:
            fails.writelines(kept)
            reasons.update(json.loads(ln)["stage"] for ln in kept)
            for res in _results(job, todo):
                for split, sample in res.samples:
                    writer.write(split, sample)
                written += len(res.samples)
                frames += res.frames
                errs += res.fit_err_px
                stage_s.update(res.seconds)
                for f in res.failures:
                    fails.write(json.dumps(f) + "\n")
                    fails.flush()
                    reasons[f["stage"]] += 1
                bar.update(1)
                bar.set_postfix(samples=written, failed=sum(reasons.values()), fps=f"{frames / max(time.time() - t0, 1e-9):.0f}")
        except BaseException:
            writer.abort()
            raise
        writer.close()
    write_partial(job.out, rank, world, own, True, about)
    # the last rank to finish sees every rank done and merges; two finishing together both merge the same partials
    manifest = merge(job.out) if all_done(job.out, world) else None
    elapsed = time.time() - t0
    _print_summary(rank, world, len(mine), skipped, written, frames, reasons, errs, elapsed, stage_s, manifest, job.out)
    return EXIT_SOME_FAILED if reasons else EXIT_OK


def _print_summary(rank, world, n, skipped, written, frames, reasons, errs, elapsed, stage_s, manifest, out) -> None:
    import numpy as np

    rows = [
        ("clips for this rank", f"{n} (rank {rank}/{world})"),
        ("skipped (already written)", str(skipped)),
        ("samples written", str(written)),
        ("failed", f"{sum(reasons.values())}" + (f"  ({', '.join(f'{k}: {v}' for k, v in sorted(reasons.items()))})" if reasons else "")),
        ("frames written", f"{frames} ({frames / 25 / 3600:.4f} h)"),
        ("fit error, mean px @256", f"{np.nanmean(errs):.3f}" if errs else "-"),
        ("time", f"{elapsed:.1f} s ({frames / max(elapsed, 1e-9):.1f} frames/s)"),
    ]
    if stage_s and frames:
        rows.append(("stage ms/frame", ", ".join(f"{k} {1000 * v / frames:.2f}" for k, v in sorted(stage_s.items()))))
    if manifest is None:
        rows.append(("output totals", f"other ranks are still running: the last one writes {out}/manifest.json (or: python -m preprocess merge --out {out})"))
    else:
        t = manifest["totals"]
        rows.append(("output totals", f"{t['samples']} samples in {t['shards']} shards, {t['frames']} frames, {t['hours']:.4f} h"))
        rows.append(("files", f"{out}/manifest.json, {out}/failures.jsonl"))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
