"""``python -m lightning_modules dub``: a face video and a voice in, the lip-synced mp4 out.

    python -m lightning_modules dub --video face.mp4 --audio speech.wav --a2e CKPT --renderer CKPT --out out.mp4
    python -m lightning_modules dub --pairs pairs.csv --a2e CKPT --renderer CKPT      # lines: video,audio,out

The video: anything PyAV decodes (mp4/mov/mkv/webm/mpg/flv…, any frame rate incl. variable, any
size); it is resampled to 25 fps and the main face tracked, cropped and fitted as the preprocessing
does (cached per file, so a second voice on the same face skips that). The voice: any audio file
PyAV decodes, or a video whose sound track drives it. The output: H.264 + AAC at the source's
resolution, 25 fps, with the driving audio; only the lower face is redrawn and pasted back with a
feathered edge, every other pixel is the source's.

Lengths: audio longer than the video runs the video forward and back (``--loop ping-pong``), or
starts over (``repeat``), or stops with the video (``none``: the audio is cut). Video longer than
the audio is cut at the end of the audio unless ``--keep-tail``. Frames without a face pass through.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lightning_modules.inference.avatar import Avatar, default_cache_dir, prepare_avatar
from lightning_modules.inference.networks import A2ENetwork, RendererNetwork, load_pair
from lightning_modules.inference.session import Frame, RealtimeSession
from lightning_modules.tracking.run_logger import run_tracking_uri
from preprocess.errors import ClipError, ConfigError
from preprocess.media import AUDIO_RATE, SAMPLES_PER_FRAME, VIDEO_FPS, Mp4Writer, load_audio

log = logging.getLogger(__name__)
SILENCE = 1e-4  # peak amplitude below which a file counts as silent (16-bit PCM's smallest step is 3e-5)
STAGES = ("decode", "landmarks", "fit", "audio_features", "a2e", "mask", "renderer", "paste", "encode")


@dataclass
class DubReport:
    out: Path
    frames: int
    redrawn: int
    faces_lost: int
    seconds: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0

    def line(self) -> str:
        per_stage = ", ".join(f"{k} {self.frames / self.seconds[k]:.0f}" for k in STAGES if self.seconds.get(k, 0) > 0)
        return (f"{self.out}: {self.frames} frames ({self.frames / VIDEO_FPS:.2f} s) in {self.wall:.1f} s = {self.frames / max(self.wall, 1e-9):.1f} fps; "
                f"fps per stage: {per_stage}; faces lost: {self.faces_lost}")


def load_voice(path: str | Path) -> np.ndarray:
    """16 kHz mono samples of an audio file (or a video's sound track); ClipError for silent or too short audio."""
    samples = load_audio(Path(path))
    if len(samples) < SAMPLES_PER_FRAME:
        raise ClipError("audio", f"{path} lasts {len(samples) / AUDIO_RATE * 1000:.0f} ms, less than one video frame (40 ms)")
    if float(np.abs(samples).max()) < SILENCE:
        raise ClipError("audio", f"{path} is silent (peak amplitude below {SILENCE}); pass the speech to dub with")
    return samples


def dub_one(video: str | Path, audio: str | Path, out: str | Path, a2e: A2ENetwork, renderer: RendererNetwork, *, loop: str = "ping-pong",
            keep_tail: bool = False, features: str = "whole", device: str = "cpu", batch: int = 8, crf: int = 18,
            cache_dir: Path | None = None, avatar: Avatar | None = None, progress: bool = True,
            on_frame: Callable[[Frame], None] | None = None) -> tuple[DubReport, Avatar]:
    """Dub one video; returns the report and the avatar (pass it back in to dub the same video again).

    ``on_frame`` sees every redrawn or passed-through frame before it is encoded.
    """
    start = time.perf_counter()
    out = Path(out)
    voice = load_voice(audio)
    audio_frames = -(-len(voice) // SAMPLES_PER_FRAME)
    needed = None if keep_tail else audio_frames  # video frames to decode: up to the end of the audio, or all (for the tail)
    if not (avatar is not None and avatar.source == Path(video) and (avatar.complete or needed is not None and avatar.num_frames >= needed)):
        avatar = prepare_avatar(video, a2e.face_model, needed, cache_dir, progress=progress)
    session = RealtimeSession(a2e, renderer, avatar, device, loop, features, batch=batch)
    session.push_audio(voice)
    session.end()
    total = audio_frames if loop != "none" else min(audio_frames, avatar.num_frames)
    tail = range(audio_frames, avatar.num_frames) if keep_tail else range(0)
    partial = out.with_name(f".{out.stem}.partial{out.suffix or '.mp4'}")
    seconds = dict(avatar.seconds)
    redrawn = 0
    t_encode = 0.0
    try:
        with Mp4Writer(partial, VIDEO_FPS, crf) as writer, tqdm(total=total + len(tail), desc=f"dub {Path(video).name}", unit="frame", disable=not progress, leave=False) as bar:
            for frame in session.frames():
                if frame.index >= total:
                    break
                if on_frame is not None:
                    on_frame(frame)
                t = time.perf_counter()
                writer.write(frame.image)
                t_encode += time.perf_counter() - t
                redrawn += frame.redrawn
                bar.update()
            for s in tail:  # the rest of the video with its own mouth, under silence
                writer.write(np.asarray(avatar.frames[s]))
                bar.update()
            t = time.perf_counter()
            frames = writer.frames
            writer.close(np.pad(voice, (0, max(0, frames * SAMPLES_PER_FRAME - len(voice))))[: frames * SAMPLES_PER_FRAME])
            t_encode += time.perf_counter() - t
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    seconds |= {k: v for k, v in session.seconds.items()}
    seconds["encode"] = t_encode
    report = DubReport(out, frames, redrawn, session.faces_lost, seconds, time.perf_counter() - start)
    return report, avatar


def read_pairs(path: str | Path) -> list[tuple[str, str, str]]:
    """Lines ``video,audio,out`` (a header line and ``#`` comments are skipped)."""
    pairs = []
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or row[0].strip().startswith("#") or [c.strip() for c in row] == ["video", "audio", "out"]:
                continue
            if len(row) != 3:
                raise ConfigError(f"{path}:{n}: expected 'video,audio,out', got {len(row)} fields")
            pairs.append(tuple(c.strip() for c in row))
    if not pairs:
        raise ConfigError(f"{path} lists no video,audio,out line")
    return pairs


def log_to_run(renderer: RendererNetwork, files: list[Path]) -> str | None:
    """Log the mp4s as artifacts ``dub/`` of the MLflow run that trained the renderer."""
    run = torch.load(renderer.path, map_location="cpu", weights_only=True, mmap=True).get("mlflow_run")
    if not run or not run.get("run_id"):
        log.warning("the renderer checkpoint %s names no MLflow run; nothing logged", renderer.path)
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(run_tracking_uri(run))
    for f in files:
        client.log_artifact(run["run_id"], str(f), "dub")
    return f"{run['experiment']} / {run['run_name']}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lightning_modules dub", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", help="face video to dub")
    p.add_argument("--audio", help="driving speech: an audio file, or a video whose sound track to use")
    p.add_argument("--out", help="output mp4")
    p.add_argument("--pairs", help="CSV of video,audio,out lines to dub many (instead of --video/--audio/--out)")
    p.add_argument("--a2e", required=True, help="A2E checkpoint: a .ckpt or a run folder (its newest last.ckpt)")
    p.add_argument("--renderer", required=True, help="renderer checkpoint, likewise")
    p.add_argument("--loop", choices=("ping-pong", "repeat", "none"), default="ping-pong", help="audio longer than the video (default ping-pong)")
    p.add_argument("--keep-tail", action="store_true", help="video longer than the audio: keep the rest with its own mouth (default: cut)")
    p.add_argument("--features", choices=("whole", "streaming"), default="whole",
                   help="audio features of the whole file at once, as trained (default), or in the blocks `stream` uses")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=8, help="frames per renderer call")
    p.add_argument("--crf", type=int, default=18, help="H.264 quality (lower is better; 18 is visually lossless)")
    p.add_argument("--cache-dir", type=Path, help=f"per-video cache of face tracks (default {default_cache_dir()}, or $REALTALK_CACHE/avatars)")
    p.add_argument("--mlflow", action="store_true", help="log the mp4s to the MLflow run that trained the renderer (artifacts dub/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-ema", action="store_true", help="the renderer's last weights instead of their moving average (when it was trained with ema_decay)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    single = (args.video, args.audio, args.out)
    if args.pairs and any(single) or not args.pairs and not all(single):
        parser.error("give --video, --audio and --out, or --pairs")
    try:
        pairs = read_pairs(args.pairs) if args.pairs else [single]
        a2e, renderer = load_pair(args.a2e, args.renderer, ema=not args.no_ema)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed, written, avatar = 0, [], None
    for video, audio, out in pairs:
        try:
            report, avatar = dub_one(video, audio, out, a2e, renderer, loop=args.loop, keep_tail=args.keep_tail, features=args.features,
                                     device=args.device, batch=args.batch_size, crf=args.crf, cache_dir=args.cache_dir,
                                     avatar=avatar, progress=not args.no_progress)
        except (ClipError, ConfigError) as e:
            print(f"error: {video} + {audio}: {e}", file=sys.stderr)
            failed += 1
            continue
        written.append(report.out)
        print(report.line())
    if args.mlflow and written and (run := log_to_run(renderer, written)):
        print(f"logged to MLflow run {run} (artifacts dub/)")
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
