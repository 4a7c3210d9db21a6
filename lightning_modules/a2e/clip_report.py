"""``python -m lightning_modules.a2e.clip_report --predictions DIR --shards DIR``: the A2E's lips clip by clip.

Reads the ``<key>.npz`` files that ``predict`` writes (``ExpressionWriter``: β̂ and the fitted β per
clip) and the shards they came from, and prints per clip: frames, speaker, how closely the *fitted*
lips follow the sound's loudness (``preprocess.shard_report.lips_follow_audio``: the data's own
audio-lip tie), the same for the *predicted* lips, and the correlation of predicted with fitted
inner-lip opening within the clip. Across clips it prints how that last r relates to the fitted
lips' loudness tie: whether the A2E matches the fitted lips best on the clips whose lips follow
their sound, as it would if that tie were what limits it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from preprocess.face_model import FaceModel
from preprocess.preview import iter_samples
from preprocess.shard_report import lip_opening, lips_follow_audio


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x, y)[0, 1]) if len(x) > 2 and x.std() > 0 and y.std() > 0 else float("nan")


def clip_rows(predictions: Path, shards: Path, face_model: str | None) -> list[dict]:
    fm = FaceModel(face_model)
    rows = []
    for sample in iter_samples(shards, frames=False):
        file = predictions / f"{sample['__key__']}.npz"
        if not file.exists():
            continue
        p, c = np.load(file), sample["coeffs"]
        t = min(len(p["exp_pred"]), len(c["exp"]))
        valid = c["valid"][:t].astype(bool)
        audio = sample["audio"] if sample["audio"].ndim == 1 else sample["audio"].mean(1)
        true_open = lip_opening(fm, {"shape": c["shape"][:t], "exp": c["exp"][:t]})
        pred_open = lip_opening(fm, {"shape": c["shape"][:t], "exp": p["exp_pred"][:t]})
        rows.append({
            "clip": sample["__key__"], "speaker": sample["meta"]["speaker"], "frames": int(valid.sum()),
            "fitted lips follow loudness r": lips_follow_audio(audio, true_open, valid),
            "predicted lips follow loudness r": lips_follow_audio(audio, pred_open, valid),
            "predicted vs fitted opening r": pearson(pred_open[valid], true_open[valid]),
        })
    if not rows:
        raise SystemExit(f"error: no prediction in {predictions} matches a clip of {shards}; run predict on that split first")
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m lightning_modules.a2e.clip_report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictions", type=Path, default=Path("predictions/a2e"), help="folder of predict's <key>.npz files")
    p.add_argument("--shards", type=Path, required=True, help="the shard folder predict read")
    p.add_argument("--face-model", help="face model .npz of the shards (default: the shipped one)")
    args = p.parse_args(argv)
    rows = clip_rows(args.predictions, args.shards, args.face_model)
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in sorted(rows, key=lambda r: -np.nan_to_num(r["fitted lips follow loudness r"], nan=-9)):
        print("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in cols) + " |")
    sync, fit = (np.array([r[k] for r in rows]) for k in ("fitted lips follow loudness r", "predicted vs fitted opening r"))
    ok = ~(np.isnan(sync) | np.isnan(fit))
    print(f"\n{len(rows)} clips; median predicted vs fitted opening r {np.nanmedian(fit):.3f}; "
          f"across clips, its correlation with how closely the fitted lips follow loudness: {pearson(sync[ok], fit[ok]):.3f}")


if __name__ == "__main__":
    main()
