"""``python -m preprocess.shard_report --shards DIR [DIR ...]``: what a face model made of a shard set.

Per shard folder and split: clips, frames, speakers, the mean landmark fit error (px at the 256 px
crop) and the share of the expression coefficients' variance that speaker identity explains
(between-speaker variance of per-speaker mean β over the total variance of β, over seen frames).
A face model whose identity basis spans the corpus's face shapes leaves little identity in β,
so β carries expression. Reads coefficients and metadata only (no video decoding).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from preprocess.preview import iter_samples


def identity_share(exp_by_speaker: dict[str, list[np.ndarray]]) -> float:
    """Between-speaker sum of squares of β over its total sum of squares (0 = identity leaves no trace in β)."""
    rows = np.concatenate([np.concatenate(v) for v in exp_by_speaker.values()]).astype(np.float64)
    grand = rows.mean(0)
    total = ((rows - grand) ** 2).sum()
    between = sum(len(np.concatenate(v)) * ((np.concatenate(v).mean(0) - grand) ** 2).sum() for v in exp_by_speaker.values())
    return float(between / total) if total > 0 else float("nan")


def report(shards: Path) -> list[dict]:
    stats: dict[str, dict] = defaultdict(lambda: {"clips": 0, "frames": 0, "err": [], "exp": defaultdict(list), "face_model": None})
    for sample in iter_samples(shards, frames=False):
        meta, c = sample["meta"], sample["coeffs"]
        s = stats[meta["split"]]
        s["clips"] += 1
        s["frames"] += int(meta["num_frames"])
        s["err"].append((float(meta["fit_err_px"]), int(meta["num_frames"])))
        s["exp"][meta["speaker"]].append(c["exp"][c["valid"].astype(bool)])
        s["face_model"] = meta["face_model"]["full_name"]
    rows = []
    for split in sorted(stats):
        s = stats[split]
        err = np.array(s["err"])
        rows.append({"shards": str(shards), "split": split, "face model": s["face_model"], "clips": s["clips"], "frames": s["frames"],
                     "speakers": len(s["exp"]), "fit error px": float(np.average(err[:, 0], weights=err[:, 1])),
                     "identity share of β variance": identity_share(s["exp"])})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m preprocess.shard_report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", nargs="+", type=Path, required=True, help="shard folders (e.g. one per face model)")
    args = p.parse_args(argv)
    cols = ["shards", "split", "face model", "clips", "frames", "speakers", "fit error px", "identity share of β variance"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for folder in args.shards:
        for r in report(folder):
            print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
