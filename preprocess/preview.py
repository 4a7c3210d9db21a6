"""Pictures of shards: the fitted face model drawn over the stored crops.

``python -m preprocess preview --shards DIR --out preview.png`` draws a contact sheet;
``python -m preprocess.figures`` uses the same drawing for the docs figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import torch

from preprocess.face_model import FaceModel

COLOURS = {"lower_face": (230, 60, 60), "face_oval": (60, 200, 60), "inner_mouth": (250, 220, 40), "mouth": (230, 60, 230)}


def iter_samples(shards: Path, limit: int | None = None, pattern: str = "*.tar", frames: bool = True) -> Iterator[dict[str, Any]]:
    """Decoded samples of the shards matching ``pattern`` in a folder, in shard order (``frames=False`` skips the video)."""
    import webdataset as wds

    from preprocess.schema import decode_sample

    urls = [str(p) for p in sorted(shards.glob(pattern))]
    if not urls:
        raise FileNotFoundError(f"no {pattern} shards in {shards}")
    for i, raw in enumerate(wds.WebDataset(urls, shardshuffle=False, empty_check=False)):
        if limit is not None and i >= limit:
            return
        yield decode_sample(raw, frames=frames)


def project_sample(model: FaceModel, coeffs: dict[str, np.ndarray]) -> np.ndarray:
    """Projected model vertices [T, V, 2] in crop pixels for a sample's coefficients."""
    c = {k: torch.from_numpy(np.asarray(coeffs[k], dtype=np.float32)) for k in ("shape", "exp", "pose", "camera")}
    with torch.no_grad():
        return model(c["shape"], c["exp"], c["pose"], c["camera"]).numpy()


def mouth_opening(points: np.ndarray, model: FaceModel) -> np.ndarray:
    """Inner-lip opening [T] in pixels of projected vertices or landmarks [T, >=468, 2] (see FaceModel.mouth_opening)."""
    return model.mouth_opening(torch.from_numpy(np.asarray(points, dtype=np.float32))).numpy()


def draw_set(img: np.ndarray, pts: np.ndarray, name: str, model: FaceModel, fill: bool = False) -> np.ndarray:
    """Draw one named vertex set: closed polygon (filled translucently) or points for ``mouth``."""
    idx = model.index_sets[name].numpy()
    colour = COLOURS[name]
    p = (pts[idx] * 4).round().astype(np.int32)  # 2 bits of sub-pixel precision
    if name == "mouth":
        for q in p:
            cv2.circle(img, tuple(int(v) for v in q), 6, colour, -1, cv2.LINE_AA, shift=2)
        return img
    if fill:
        layer = img.copy()
        cv2.fillPoly(layer, [p], colour, cv2.LINE_AA, shift=2)
        img[:] = cv2.addWeighted(layer, 0.35, img, 0.65, 0)
    cv2.polylines(img, [p], True, colour, 1, cv2.LINE_AA, shift=2)
    return img


def _label(img: np.ndarray, text: str) -> np.ndarray:
    cv2.putText(img, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def contact_sheet(shards: Path, out: Path, max_samples: int = 8, face_model: Path | None = None) -> Path:
    """Per sample: the frames with the smallest and largest mouth opening and a middle frame, model drawn on."""
    model = FaceModel(face_model)
    rows = []
    for d in iter_samples(shards, max_samples):
        pts = project_sample(model, d["coeffs"])
        opening = mouth_opening(pts, model)
        picks = [int(np.argmin(opening)), len(pts) // 2, int(np.argmax(opening))]
        tiles = []
        for t, what in zip(picks, ("most closed", "middle", "most open")):
            img = d["frames"][t].copy()  # picks may repeat a frame: never draw on the decoded array
            draw_set(img, pts[t], "lower_face", model, fill=True)
            draw_set(img, pts[t], "inner_mouth", model)
            tiles.append(_label(img, f"{what} t={t}"))
        m = d["meta"]
        head = _label(np.zeros_like(tiles[0]), d["__key__"][:30])
        for i, line in enumerate([f"split {m['split']}  T={m['num_frames']}", f"fit err {m['fit_err_px']:.2f} px",
                                  f"valid {m['faces']['valid_fraction']:.0%}", f"audio {m['audio_features']['name']}"]):
            cv2.putText(head, line, (4, 40 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (220, 220, 220), 1, cv2.LINE_AA)
        rows.append(np.concatenate([head] + tiles, 1))
    sheet = np.concatenate(rows, 0)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), sheet[:, :, ::-1])
    print(f"wrote {out} ({len(rows)} samples)")
    return out
