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

``--sync`` instead reports clip by clip, from the raw MediaPipe landmarks (no face model involved):
the correlation of the inner-lip opening with loudness, the audio shift (frames, ±``--max-offset``)
that maximises it, and whether the clip is kept (r at no shift ≥ ``--min-sync``); ``--out`` writes
that table (TSV) and beside it ``<name>.exclude.txt``, the dropped keys, which the datamodules take
as ``data.init_args.exclude`` (training leaves those clips out).
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


INNER_LIPS = ((13, 14), (82, 87), (312, 317))
"""Upper and lower inner-lip landmarks of MediaPipe's face mesh facing each other (middle, left, right)."""


def landmark_opening(lmk: np.ndarray) -> np.ndarray:
    """The inner-lip opening (crop pixels) of every frame from the raw landmarks [T, 478, 2]: the mean of three gaps."""
    return np.mean([np.linalg.norm(lmk[:, a] - lmk[:, b], axis=-1) for a, b in INNER_LIPS], axis=0)


def best_offset(audio: np.ndarray, opening: np.ndarray, valid: np.ndarray, max_offset: int) -> tuple[int, float]:
    """(k, r): the audio shift by k frames (positive: the sound comes k frames later than the lips) that
    maximises :func:`lips_follow_audio`, and that r."""
    best = (0, float("nan"))
    for k in range(-max_offset, max_offset + 1):
        pad = np.zeros(abs(k) * SAMPLES_PER_FRAME, audio.dtype)
        shifted = np.concatenate([audio[k * SAMPLES_PER_FRAME :], pad]) if k > 0 else np.concatenate([pad, audio[: len(audio) + k * SAMPLES_PER_FRAME]])
        heard = valid.astype(bool).copy()  # the frames the shift left without sound do not count
        if k > 0:
            heard[len(heard) - k :] = False
        elif k < 0:
            heard[:-k] = False
        r = lips_follow_audio(shifted, opening, heard)
        if np.isfinite(r) and not r <= best[1]:
            best = (k, r)
    return best


def sync_rows(shards: Path, min_sync: float, max_offset: int) -> list[dict]:
    """One row per clip: key, split, speaker, frames, r at no shift, the best shift and its r, kept."""
    rows = []
    for sample in iter_samples(shards, frames=False):
        meta, c = sample["meta"], sample["coeffs"]
        audio = sample["audio"] if sample["audio"].ndim == 1 else sample["audio"].mean(1)
        opening = landmark_opening(c["lmk"])
        r0 = lips_follow_audio(audio, opening, c["valid"])
        k, rk = best_offset(audio, opening, c["valid"], max_offset)
        rows.append({"key": sample["__key__"], "split": meta["split"], "speaker": meta["speaker"], "frames": int(meta["num_frames"]),
                     "r": r0, "best offset": k, "r at best offset": rk, "keep": bool(np.isfinite(r0) and r0 >= min_sync)})
    return rows


def write_sync(rows: list[dict], out: Path) -> Path:
    """The table as TSV at ``out`` and the dropped keys at ``<out without suffix>.exclude.txt``; the latter's path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cols = list(rows[0]) if rows else []
    out.write_text("\t".join(cols) + "\n" + "".join("\t".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + "\n" for r in rows))
    exclude = out.with_suffix(".exclude.txt")
    exclude.write_text("".join(f"{r['key']}\n" for r in rows if not r["keep"]))
    return exclude


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
    p.add_argument("--sync", action="store_true", help="per clip: lips against loudness from the raw landmarks, the best audio shift, keep or drop")
    p.add_argument("--min-sync", type=float, default=0.2, help="--sync: keep a clip whose r at no shift is at least this")
    p.add_argument("--max-offset", type=int, default=10, help="--sync: audio shifts tried, in frames each way (10 = 0.4 s)")
    p.add_argument("--out", type=Path, help="--sync: write the table here (TSV) and the dropped keys beside it (<name>.exclude.txt)")
    args = p.parse_args(argv)
    if args.sync:
        for folder in args.shards:
            rows = sync_rows(folder, args.min_sync, args.max_offset)
            cols = ["key", "split", "speaker", "frames", "r", "best offset", "r at best offset", "keep"]
            print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
            for r in rows:
                print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
            for split in sorted({r["split"] for r in rows}):
                part = [r for r in rows if r["split"] == split]
                print(f"{folder} {split}: {sum(r['keep'] for r in part)} of {len(part)} clips kept (r >= {args.min_sync}); median r {np.nanmedian([r['r'] for r in part]):.3f}, "
                      f"at the best shift {np.nanmedian([r['r at best offset'] for r in part]):.3f}")
            if args.out:
                print(f"wrote {args.out} and {write_sync(rows, args.out if len(args.shards) == 1 else args.out.with_name(f'{folder.name}-{args.out.name}'))}")
        return
    cols = ["shards", "split", "face model", "clips", "frames", "speakers", "fit error px", "identity share of β variance", "lips follow audio, median r"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for folder in args.shards:
        for r in report(folder, args.face_model):
            print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
