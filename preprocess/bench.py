"""``python -m preprocess.bench``: per-stage preprocessing throughput on the bundled GRID samples.

Pinned to one CPU core (affinity + one torch/OpenCV thread), so figures are per core; a
job with ``--workers N`` scales by about N. Whisper is also timed on CUDA when present.
Targets (issue #2): video stages together >= 50 frames/s per core, audio >= 100x real time.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from statistics import median
from typing import Callable, Sequence

SAMPLES = Path(__file__).resolve().parents[1] / "sharded_data" / "samples"


def _timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return median(times)


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain-text table: left-aligned columns, a dashed rule under the header."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows])


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=Path, default=SAMPLES, help="folder of clips to time (default: the bundled GRID samples)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions per stage (median reported)")
    ap.add_argument("--all-cores", action="store_true", help="do not pin to one core")
    args = ap.parse_args(argv)

    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from preprocess.audio_features import (
        AudioFeatureConfig,
        MelFeatures,
        build_audio_features,
    )
    from preprocess.face_fit import FaceFitter
    from preprocess.face_model import FaceModel
    from preprocess.face_track import (
        CropConfig,
        TrackConfig,
        apply_crop,
        crop_boxes,
        track_face,
    )
    from preprocess.landmarks import FaceLandmarker
    from preprocess.media import encode_mp4, iter_frames, load_audio
    from preprocess.pipeline import landmarks_to_crop

    clips = sorted(p for p in args.samples.iterdir() if p.suffix.lower() in (".mpg", ".mp4", ".mov", ".mkv", ".webm"))
    frames = {p: list(iter_frames(p)) for p in clips}
    n_frames = sum(len(f) for f in frames.values())
    seconds = n_frames / 25
    rows: list[tuple[str, str, str, str]] = []

    def video_row(name: str, t: float, target: str = "") -> float:
        rows.append((name, f"{n_frames / t:9.1f} frames/s", f"{1000 * t / n_frames:7.2f} ms/frame", target))
        return t / n_frames

    def audio_row(name: str, t: float, target: str = "") -> None:
        rows.append((name, f"{seconds / t:9.1f} x real time", f"{1000 * t / seconds:7.2f} ms/s audio", target))

    per_frame = {}
    per_frame["decode"] = video_row("decode to 25 fps RGB (PyAV)", _timed(lambda: [list(iter_frames(p)) for p in clips], args.repeats))
    lm = FaceLandmarker(max_faces=2)

    def landmarks() -> list:
        out = []
        for p in clips:
            lm.reset()
            out.append([lm(f) for f in frames[p]])
        return out

    faces = landmarks()
    per_frame["landmarks"] = video_row("landmarks (MediaPipe, 2 faces max)", _timed(landmarks, args.repeats))
    model = FaceModel()
    fitter = FaceFitter(model)
    crop_cfg = CropConfig()

    def track_and_fit() -> dict:
        """What the pipeline does between the two decodes: track, crop boxes, 3DMM fit."""
        out = {}
        for p, f in zip(clips, faces):
            seg = track_face(f, frames[p][0].shape[1], frames[p][0].shape[0], TrackConfig()).segments[0]
            boxes = crop_boxes(seg.landmarks, crop_cfg)
            fitter(landmarks_to_crop(seg.landmarks, boxes, crop_cfg.size)[0], seg.valid, crop_cfg.size)
            out[p] = (seg, boxes)
        return out

    per_frame["fit"] = video_row("track + crop boxes + 3DMM fit", _timed(track_and_fit, args.repeats))
    plans = track_and_fit()

    def crop_encode() -> None:
        for p, (s, boxes) in plans.items():
            encode_mp4([apply_crop(f, b, crop_cfg.size) for f, b in zip(frames[p][s.start : s.end], boxes)])

    per_frame["crop"] = video_row("crop 256 + H.264 encode", _timed(crop_encode, args.repeats))
    lm.close()
    # the pipeline decodes twice (landmarks pass, crop pass) so it never holds a whole video in memory
    total = 2 * per_frame["decode"] + per_frame["landmarks"] + per_frame["fit"] + per_frame["crop"]
    rows.append(("video stages together (2 decodes)", f"{1 / total:9.1f} frames/s", f"{1000 * total:7.2f} ms/frame", ">= 50 frames/s"))

    audio = {p: load_audio(p) for p in clips}
    audio_row("audio decode + resample to 16 kHz", _timed(lambda: [load_audio(p) for p in clips], args.repeats))
    for name, ext in (("whisper-tiny fp32 (default)", build_audio_features(AudioFeatureConfig())),
                      ("whisper-tiny int8", build_audio_features(AudioFeatureConfig(precision="int8"))),
                      ("log-mel 80", MelFeatures())):
        audio_row(f"features: {name}", _timed(lambda ext=ext: [ext(a, len(frames[p])) for p, a in audio.items()], args.repeats),
                  ">= 100x" if "whisper" in name else "")
    cuda = "not available"
    if torch.cuda.is_available():
        ext = build_audio_features(AudioFeatureConfig())
        ext.encoder.cuda()
        from preprocess.audio_features import log_mel

        def on_gpu() -> None:
            for a in audio.values():
                ext.encoder(log_mel(a, 160, 400)[None].cuda())
            torch.cuda.synchronize()

        with torch.inference_mode():
            audio_row(f"features: whisper-tiny fp32 on {torch.cuda.get_device_name()}", _timed(on_gpu, args.repeats))
        cuda = torch.cuda.get_device_name()

    print(f"machine: {_cpu_name()}, {os.cpu_count()} cores, {'all cores' if args.all_cores else 'pinned to 1 core'}; "
          f"CUDA: {cuda}; torch {torch.__version__}")
    print(f"input: {len(clips)} clips from {args.samples} ({n_frames} frames, {seconds:.1f} s)")
    print(format_table(("stage", "throughput", "cost", "target"), rows))


if __name__ == "__main__":
    main()
