"""``python -m lightning_modules.a2e.linear_baseline``: how much of β the audio can explain, linearly.

A reference for the A2E validation numbers on a small corpus. Per-frame ridge regression from
the audio rows of a frame (2t and 2t + 1, concatenated) to its expression β is fitted on the
train split and scored on the val split with the A2E metric (mean squared error over frames and
the β dimensions), next to the trivial predictors:

- ``clip mean (oracle)``: every frame = the clip's own mean β (what ``val/exp_mse_clip_mean`` logs);
- ``training mean``: every frame = the mean β of the training frames, the best constant a model
  without priors can know;
- ``linear, no priors``: ridge on the raw audio rows with an intercept;
- ``linear + clip mean (oracle)``: ridge on the clip-centred audio rows added to the clip's own
  mean β: an upper bound on what a linear audio model gains over the oracle.

The ridge strength is chosen by leave-one-clip-out cross-validation on the train split only, so
the val split is never used for a choice. With ``--face-model`` (the model the shards were fitted
with) each error is also split into its part in the lips' subspace of β
(:meth:`preprocess.face_model.FaceModel.mouth_subspace`), as the A2E's ``val/exp_mse_mouth``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from datamodules.a2e_windows import clip_arrays
from preprocess.bench import format_table
from preprocess.preview import iter_samples

LAMBDAS = (1e0, 1e1, 1e2, 1e3, 1e4, 1e5)


@dataclass
class Clip:
    audio: np.ndarray  # [T, 2·D]: the two audio rows of each valid frame
    exp: np.ndarray  # [T, De]: β of each valid frame


def load_clips(shards: Path, split: str) -> list[Clip]:
    clips = []
    for s in iter_samples(shards, pattern=f"{split}-*.tar", frames=False):
        c = clip_arrays(s)
        valid = c["valid"]
        audio = c["audio"][: 2 * len(valid)].reshape(len(valid), -1).astype(np.float64)  # rows 2t, 2t + 1 -> frame t
        clips.append(Clip(audio[valid], c["exp"][valid].astype(np.float64)))
    if not clips:
        raise SystemExit(f"no {split!r} clips with seen faces in {shards}")
    return clips


def ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """W minimising |xW - y|² + lam·|W|² (x and y already centred when no intercept is wanted)."""
    return np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)


def centred(clips: list[Clip]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([c.audio - c.audio.mean(0) for c in clips]), np.concatenate([c.exp - c.exp.mean(0) for c in clips])


def with_intercept(clips: list[Clip]) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([c.audio for c in clips])
    return np.concatenate([x, np.ones((len(x), 1))], 1), np.concatenate([c.exp for c in clips])


def mse(pred: list[np.ndarray], clips: list[Clip], subspace: np.ndarray | None = None) -> float:
    """Mean over every frame and β dimension of the split (frames weigh equally, as in val/exp_mse).

    With ``subspace`` [De, k] (orthonormal) only the error's part in it, still divided by De, so that
    the parts in a subspace and in its complement add up to the whole.
    """
    err = [p - c.exp for p, c in zip(pred, clips)]
    if subspace is not None:
        err = [e @ subspace for e in err]
    return float(sum((e**2).sum() for e in err) / sum(c.exp.size for c in clips))


def predict_centred(w: np.ndarray, clips: list[Clip]) -> list[np.ndarray]:
    return [(c.audio - c.audio.mean(0)) @ w + c.exp.mean(0) for c in clips]


def predict_raw(w: np.ndarray, clips: list[Clip]) -> list[np.ndarray]:
    return [np.concatenate([c.audio, np.ones((len(c.audio), 1))], 1) @ w for c in clips]


Design = Callable[[list[Clip]], tuple[np.ndarray, np.ndarray]]
Predict = Callable[[np.ndarray, list[Clip]], list[np.ndarray]]


def cv_errors(train: list[Clip], design: Design, predict: Predict) -> dict[float, float]:
    """Leave-one-clip-out error on the training clips for each ridge strength of ``LAMBDAS``.

    Both designs are built clip by clip, so each fold's normal equations are the whole training
    set's minus one clip's: one pass over the data instead of one per fold and strength.
    """
    parts = [design([c]) for c in train]
    grams = [(x.T @ x, x.T @ y) for x, y in parts]
    gram, cross = sum(g for g, _ in grams), sum(b for _, b in grams)
    eye = np.eye(len(gram))

    def cv(lam: float) -> float:
        return float(np.mean([
            mse(predict(np.linalg.solve(gram - g + lam * eye, cross - b), [c]), [c]) for (g, b), c in zip(grams, train)
        ]))

    return {lam: cv(lam) for lam in LAMBDAS}


def choose_lambda(train: list[Clip], design: Design, predict: Predict) -> float:
    """The ridge strength with the lowest leave-one-clip-out error on the training clips."""
    errors = cv_errors(train, design, predict)
    return min(errors, key=errors.get)


def report(shards: Path, train_split: str, val_split: str, face_model: Path | None = None) -> list[list[str]]:
    train, val = load_clips(shards, train_split), load_clips(shards, val_split)
    train_mean = np.concatenate([c.exp for c in train]).mean(0)
    lam_c = choose_lambda(train, centred, predict_centred)
    lam_r = choose_lambda(train, with_intercept, predict_raw)
    preds = {  # predictor: (ridge λ, predictions on the val clips)
        "clip mean (oracle)": ("-", [np.broadcast_to(c.exp.mean(0), c.exp.shape) for c in val]),
        "training mean": ("-", [np.broadcast_to(train_mean, c.exp.shape) for c in val]),
        "linear, no priors": (f"{lam_r:g}", predict_raw(ridge(*with_intercept(train), lam_r), val)),
        "linear + clip mean (oracle)": (f"{lam_c:g}", predict_centred(ridge(*centred(train), lam_c), val)),
    }
    lips = None
    if face_model is not None:
        from preprocess.face_model import FaceModel

        lips = FaceModel(face_model).mouth_subspace().double().numpy()
    oracle = mse(preds["clip mean (oracle)"][1], val)
    print(f"{len(train)} {train_split} clips ({sum(len(c.exp) for c in train)} frames) -> {len(val)} {val_split} clips "
          f"({sum(len(c.exp) for c in val)} frames), β {train[0].exp.shape[1]}-d, audio {train[0].audio.shape[1] // 2}-d")
    rows = []
    for name, (lam, pred) in preds.items():
        err = mse(pred, val)
        rows.append([name, lam, f"{err:.3f}", *([f"{mse(pred, val, lips):.3f}"] if lips is not None else []), f"{err / oracle:.2f}x"])
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=Path, required=True, help="folder with <split>-*.tar shards")
    ap.add_argument("--train-split", default="train")
    ap.add_argument("--val-split", default="val")
    ap.add_argument("--face-model", type=Path, help="the shards' face model .npz: adds the error's part in the lips' subspace of β")
    args = ap.parse_args(argv)
    header = ["predictor", "ridge λ (train CV)", "expression MSE", *(["of which lips' subspace"] if args.face_model else []), "vs oracle"]
    print(format_table(header, report(args.shards, args.train_split, args.val_split, args.face_model)))


if __name__ == "__main__":
    main()
