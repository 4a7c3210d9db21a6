"""``python -m lightning_modules.inference.contact_sheet``: frames of a source video above the same frames dubbed.

    python -m lightning_modules.inference.contact_sheet --source face.mpg --dubbed dubbed.mp4 --out sheet.png

A PNG to look at instead of reading numbers: N evenly spaced frames (25 fps, as ``dub`` writes them), the
source's in the top row and the dubbed video's below, each cut to the lower half of the frame's centre where
the redrawn mouth is (``--full`` keeps whole frames). Both videos are decoded with the preprocessing's reader.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from preprocess.errors import ClipError
from preprocess.media import iter_frames


def pick(frames: np.ndarray, count: int) -> np.ndarray:
    """``count`` frames evenly spaced over [T, H, W, 3] (all of them when there are fewer)."""
    idx = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    return frames[idx]


def lower_centre(frames: np.ndarray) -> np.ndarray:
    """The lower middle of each frame: rows 40–90% and the middle half of the columns."""
    h, w = frames.shape[1:3]
    return frames[:, int(0.4 * h) : int(0.9 * h), w // 4 : w - w // 4]


def sheet(source: Path, dubbed: Path, count: int = 8, full: bool = False) -> np.ndarray:
    """[2·h, count·w, 3] uint8: source frames over dubbed frames, at the same times."""
    a, b = (np.stack(list(iter_frames(p))) for p in (source, dubbed))
    n = min(len(a), len(b))
    top, bottom = pick(a[:n], count), pick(b[:n], count)
    if bottom.shape[1:3] != top.shape[1:3]:
        raise SystemExit(f"error: {source} is {top.shape[2]}x{top.shape[1]} but {dubbed} is {bottom.shape[2]}x{bottom.shape[1]}; pass the video that was dubbed")
    if not full:
        top, bottom = lower_centre(top), lower_centre(bottom)
    return np.concatenate([np.concatenate(list(top), 1), np.concatenate(list(bottom), 1)], 0)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m lightning_modules.inference.contact_sheet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, required=True, help="the video that was dubbed")
    p.add_argument("--dubbed", type=Path, required=True, help="dub's output")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--frames", type=int, default=8, help="frames per row (default 8)")
    p.add_argument("--full", action="store_true", help="whole frames instead of the lower middle")
    args = p.parse_args(argv)
    from PIL import Image

    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        image = sheet(args.source, args.dubbed, args.frames, args.full)
    except ClipError as e:  # a missing or unreadable video: one line, no traceback
        raise SystemExit(f"error: {e}") from None
    Image.fromarray(image).save(args.out)
    print(f"{args.out}: top {args.source.name}, bottom {args.dubbed.name}, {args.frames} frames")


if __name__ == "__main__":
    main()
