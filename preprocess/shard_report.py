"""``python -m preprocess.shard_report --shards DIR [DIR ...]``: what a face model made of a shard set.

Per shard folder and split: clips, frames, speakers, the mean landmark fit error (px at the 256 px
crop) and the share of the expression coefficients' variance that speaker identity explains
(between-speaker variance of per-speaker mean β over the total variance of β, over seen frames).
A face model whose identity basis spans the corpus's face shapes leaves little identity in β,
so β carries expression. With the shards' face model (``--face-model``) also how closely the fitted
lips follow the sound: per clip, the correlation over its seen frames between the log loudness of
each frame's 40 ms of audio and the fitted inner-lip opening; the median over clips. Speech opens
the mouth when it is loud, so a clip far below its split's median has lips that do not follow its
audio (out of sync, dubbed, or fitted badly), and a split whose median is low gives an A2E little to learn.
Reads coefficients, audio and metadata only (no video decoding).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from preprocess.media import AUDIO_RATE, VIDEO_FPS
from preprocess.preview import iter_samples

SAMPLES_PER_FRAME = AUDIO_RATE // VIDEO_FPS


def lips_follow_audio(audio: np.ndarray, opening: np.ndarray, valid: np.ndarray) -> float:
    """Pearson r between each frame's log RMS loudness and its inner-lip opening, over the seen frames."""
    t = min(len(opening), len(audio) // SAMPLES_PER_FRAME)
    frames = audio[: t * SAMPLES_PER_FRAME].reshape(t, SAMPLES_PER_FRAME).astype(np.float64)
    loud = np.log(np.sqrt((frames**2).mean(1)) + 1e-6)
    keep = valid[:t].astype(bool)
    if keep.sum() < 10 or loud[keep].std() == 0 or opening[:t][keep].std() == 0:
        return float("nan")
    return float(np.corrcoef(loud[keep], opening[:t][keep])[0, 1])


def lip_opening(face_model, coeffs: dict[str, np.ndarray]) -> np.ndarray:
    """The fitted inner-lip opening (mm) of every frame."""
    import torch

    with torch.no_grad():
        v = face_model.vertices(torch.from_numpy(coeffs["shape"].astype(np.float32)), torch.from_numpy(coeffs["exp"].astype(np.float32)))
        return face_model.mouth_opening(v).numpy()


def identity_share(exp_by_speaker: dict[str, list[np.ndarray]]) -> float:
    """Between-speaker sum of squares of β over its total sum of squares (0 = identity leaves no trace in β)."""
    rows = np.concatenate([np.concatenate(v) for v in exp_by_speaker.values()]).astype(np.float64)
    grand = rows.mean(0)
    total = ((rows - grand) ** 2).sum()
    between = sum(len(np.concatenate(v)) * ((np.concatenate(v).mean(0) - grand) ** 2).sum() for v in exp_by_speaker.values())
    return float(between / total) if total > 0 else float("nan")


def report(shards: Path, face_models: Sequence[Path] = ()) -> list[dict]:
    from preprocess.face_model import FaceModel

    models = {m.full_name: m for m in map(FaceModel, [None, *face_models])}
    stats: dict[str, dict] = defaultdict(lambda: {"clips": 0, "frames": 0, "err": [], "exp": defaultdict(list), "face_model": None, "sync": []})
    for sample in iter_samples(shards, frames=False):
        meta, c = sample["meta"], sample["coeffs"]
        s = stats[meta["split"]]
        s["clips"] += 1
        s["frames"] += int(meta["num_frames"])
        s["err"].append((float(meta["fit_err_px"]), int(meta["num_frames"])))
        s["exp"][meta["speaker"]].append(c["exp"][c["valid"].astype(bool)])
        s["face_model"] = meta["face_model"]["full_name"]
        if (fm := models.get(s["face_model"])) is not None:
            audio = sample["audio"] if sample["audio"].ndim == 1 else sample["audio"].mean(1)
            s["sync"].append(lips_follow_audio(audio, lip_opening(fm, c), c["valid"]))
    rows = []
    for split in sorted(stats):
        s = stats[split]
        err = np.array(s["err"])
        rows.append({"shards": str(shards), "split": split, "face model": s["face_model"], "clips": s["clips"], "frames": s["frames"],
                     "speakers": len(s["exp"]), "fit error px": float(np.average(err[:, 0], weights=err[:, 1])),
                     "identity share of β variance": identity_share(s["exp"]),
                     "lips follow audio, median r": float(np.nanmedian(s["sync"])) if s["sync"] else "—"})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m preprocess.shard_report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", nargs="+", type=Path, required=True, help="shard folders (e.g. one per face model)")
    p.add_argument("--face-model", nargs="*", type=Path, default=[],
                   help="face model .npz files the shards were fitted with (the shipped one is known): adds 'lips follow audio'")
    args = p.parse_args(argv)
    cols = ["shards", "split", "face model", "clips", "frames", "speakers", "fit error px", "identity share of β variance", "lips follow audio, median r"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for folder in args.shards:
        for r in report(folder, args.face_model):
            print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
