"""``manifest.json`` and ``failures.jsonl`` of a shard folder, from each rank's partial manifest.

Every rank of ``python -m preprocess shard`` keeps ``manifest-rank<NNN>.json``: what its own complete
shards hold (keys, frames, clips, settings), rewritten atomically after each shard it completes and at
its start (from its own tars) and end. No rank reads another rank's tars: what other ranks wrote, for
resuming and for the merge, comes from their partials. The merge (:func:`merge`) writes ``manifest.json``
and ``failures.jsonl`` from the partials and the ranks' ``failures-rank<NNN>.jsonl``; the last rank to
finish runs it, and ``python -m preprocess merge --out DIR`` runs it by hand (the SLURM recipe does,
after ``srun`` returns). A shard on disk that no partial lists (a rank killed between completing a
shard and recording it) is read by the merge and named in a warning.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from preprocess.shard_writer import SHARD_RE, ShardInfo, read_shard_info

PARTIAL = "manifest-rank{rank:03d}.json"


def write_json(path: Path, data: Any) -> None:
    """Write ``path`` atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=sorted))  # sets (config hashes, versions) as sorted lists
    os.replace(tmp, path)


def write_partial(out: Path, rank: int, world: int, shards: list[ShardInfo], done: bool, about: dict[str, Any]) -> None:
    """This rank's partial manifest: its complete shards; ``done`` once the rank has finished its clips."""
    write_json(out / PARTIAL.format(rank=rank), {"rank": rank, "world": world, "done": done, **about, "shards": [asdict(s) for s in shards]})


def read_partials(out: Path) -> list[dict[str, Any]]:
    """Every rank's partial manifest in ``out``, by rank."""
    parts = [json.loads(p.read_text()) for p in sorted(out.glob("manifest-rank*.json"))]
    for part in parts:
        part["shards"] = [ShardInfo(**{**s, "clip_segments": [tuple(c) for c in s["clip_segments"]], "config_hashes": set(s["config_hashes"]),
                                       "schema_versions": set(s["schema_versions"])}) for s in part["shards"]]
    return parts


def other_ranks_shards(out: Path, rank: int) -> list[ShardInfo]:
    """The shards other ranks (of this run or earlier ones) recorded in their partials."""
    return [s for part in read_partials(out) if part["rank"] != rank for s in part["shards"]]


def all_done(out: Path, world: int) -> bool:
    """Whether every rank of a ``world``-rank run has recorded its end."""
    parts = {p["rank"]: p for p in read_partials(out)}
    return all(r in parts and parts[r]["done"] and parts[r]["world"] == world for r in range(world))


def merge(out: Path) -> dict[str, Any]:
    """Write ``manifest.json`` and ``failures.jsonl`` from the partials (see the module docstring); the manifest."""
    parts = read_partials(out)
    shards = {s.name: s for part in parts for s in part["shards"]}
    unlisted = [p for p in sorted(out.glob("*.tar")) if SHARD_RE.match(p.name) and p.name not in shards]
    if unlisted:
        print(f"merge: {len(unlisted)} shards in {out} are in no partial manifest ({', '.join(p.name for p in unlisted[:5])}...): "
              "read them; rerun their rank to record them", file=sys.stderr)
        shards |= {p.name: read_shard_info(p) for p in unlisted}
    listed = sorted(shards.values(), key=lambda s: s.name)
    by_split: dict[str, dict[str, float]] = {}
    for s in listed:
        d = by_split.setdefault(s.split, {"shards": 0, "samples": 0, "frames": 0})
        d["shards"] += 1
        d["samples"] += len(s.keys)
        d["frames"] += s.frames
    frames = sum(s.frames for s in listed)
    about = parts[-1] if parts else {}
    manifest = {
        "shards": [{"name": s.name, "split": s.split, "samples": len(s.keys), "frames": s.frames} for s in listed],
        "splits": by_split,
        "totals": {"shards": len(listed), "samples": sum(len(s.keys) for s in listed), "frames": frames, "hours": frames / 25 / 3600},
        "dataset": about.get("dataset"),
        "root": about.get("root"),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(out / "manifest.json", manifest)
    lines = []
    for f in sorted(out.glob("failures-rank*.jsonl")):
        lines += [ln for ln in f.read_text().splitlines() if ln.strip()]
    tmp = out / f"failures.jsonl.tmp{os.getpid()}"
    tmp.write_text("".join(ln + "\n" for ln in lines))
    os.replace(tmp, out / "failures.jsonl")
    return manifest
