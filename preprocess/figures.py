"""``python -m preprocess.figures``: the docs figures, drawn from real shards (default: the demo's).

- ``face_model_index_sets.png``: each named vertex set of the face model on a real crop;
- ``mouth_opening_fit.png``: inner-lip opening over time, MediaPipe's landmarks vs the fitted
  model, on a clip of a speaker the shipped model never saw, with the extreme frames.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from preprocess.face_model import INDEX_SETS, FaceModel
from preprocess.preview import (
    _label,
    draw_set,
    iter_samples,
    mouth_opening,
    project_sample,
)


def index_sets_figure(sample: dict, model: FaceModel, out: Path) -> None:
    import cv2

    pts = project_sample(model, sample["coeffs"])
    t = int(np.argmax(mouth_opening(pts, model)))  # an open mouth shows the inner-lip loop best
    tiles = []
    for name in INDEX_SETS:
        img = sample["frames"][t].copy()
        draw_set(img, pts[t], name, model, fill=name != "mouth")
        tiles.append(_label(img, f"{name} ({len(model.index_sets[name])} vertices)"))
    cv2.imwrite(str(out), np.concatenate(tiles, 1)[:, :, ::-1])


def pyplot():  # noqa: ANN201 - the matplotlib.pyplot module
    """matplotlib.pyplot on the file-only Agg backend (no display on training nodes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: Path, tight: bool = True, dpi: int | None = 110) -> Path:  # noqa: ANN001 - a matplotlib Figure
    """Write ``fig`` to ``out`` (folder created) and free it."""
    if tight:
        fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    pyplot().close(fig)
    return out


def mouth_figure(sample: dict, model: FaceModel, out: Path) -> None:
    plt = pyplot()
    pts = project_sample(model, sample["coeffs"])
    fitted = mouth_opening(pts, model)
    measured = mouth_opening(sample["coeffs"]["lmk"], model)
    t = np.arange(len(fitted)) / 25
    lo, hi = int(np.argmin(fitted)), int(np.argmax(fitted))
    fig = plt.figure(figsize=(10, 3.6), dpi=110)
    ax = fig.add_axes([0.06, 0.14, 0.52, 0.76])
    ax.plot(t, measured, label="MediaPipe landmarks", lw=2, color="#999999")
    ax.plot(t, fitted, label="fitted face model", lw=1.2, color="#d62728")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("inner-lip opening (px @256)")
    r = np.corrcoef(fitted, measured)[0, 1]
    m = sample["meta"]
    ax.set_title(f"{m['key']}: r = {r:.3f}, fit error {m['fit_err_px']:.2f} px", fontsize=9)
    ax.legend(fontsize=8)
    for i, (k, what) in enumerate(((lo, "closed"), (hi, "open"))):
        sub = fig.add_axes([0.60 + 0.2 * i, 0.1, 0.19, 0.8])
        img = sample["frames"][k].copy()
        draw_set(img, pts[k], "inner_mouth", model)
        draw_set(img, pts[k], "mouth", model)
        sub.imshow(img[96:224, 64:192])
        sub.set_title(f"{what}, t={k / 25:.2f}s", fontsize=8)
        sub.axis("off")
    save_figure(fig, out, tight=False, dpi=None)  # hand-placed axes; dpi set on the figure


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=Path, default=Path("sharded_data/demo"), help="shards to draw from (run `make demo` first)")
    ap.add_argument("--out", type=Path, default=Path("docs"), help="output folder")
    ap.add_argument("--key", default="folder_lbax4n", help="sample key to draw")
    args = ap.parse_args(argv)
    model = FaceModel()
    sample = next((s for s in iter_samples(args.shards) if s["__key__"] == args.key), None)
    if sample is None:
        raise SystemExit(f"no sample {args.key!r} in {args.shards}")
    args.out.mkdir(parents=True, exist_ok=True)
    index_sets_figure(sample, model, args.out / "face_model_index_sets.png")
    mouth_figure(sample, model, args.out / "mouth_opening_fit.png")
    print(f"wrote {args.out}/face_model_index_sets.png and {args.out}/mouth_opening_fit.png")


if __name__ == "__main__":
    main()
