"""``python -m lightning_modules stream``: a live feed simulated from a file, through :class:`RealtimeSession`.

    python -m lightning_modules stream --avatar face.mp4 --audio speech.wav --a2e CKPT --renderer CKPT --out out.mp4 --chunk-ms 40

Audio is pushed in ``--chunk-ms`` pieces at real-time pace (``--no-pace``: as fast as possible),
frames are pulled as soon as they can be computed, and a player that starts ``--buffer-ms`` after
the algorithmic latency drops every frame that is not ready by its display time. Reported:
frames/s, per-frame latency from the arrival of the frame's audio to the frame (p50/p95/max), its
two parts (algorithmic: audio that had to follow; compute: the time of the call that produced the
frame), and dropped frames. In Python::

    avatar = prepare_avatar("face.mp4", a2e.face_model)
    session = RealtimeSession(a2e, renderer, avatar)
    for chunk in microphone():            # 16 kHz mono float, any length
        session.push_audio(chunk)
        for frame in session.frames(flush=True):
            show(frame.image)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lightning_modules.inference.avatar import prepare_avatar
from lightning_modules.inference.dub import load_voice
from lightning_modules.inference.networks import load_pair
from lightning_modules.inference.session import RealtimeSession
from preprocess.errors import ClipError, ConfigError
from preprocess.media import AUDIO_RATE, SAMPLES_PER_FRAME, VIDEO_FPS, Mp4Writer


def simulate(session: RealtimeSession, voice: np.ndarray, chunk_ms: float, pace: bool, buffer_ms: float, writer: Mp4Writer | None = None) -> dict[str, float]:
    """Feed ``voice`` in chunks (paced like a microphone or not) and collect the frames; the timing report."""
    step = max(1, int(round(chunk_ms * AUDIO_RATE / 1000)))
    arrival = np.zeros(-(-len(voice) // SAMPLES_PER_FRAME))  # wall time at which each frame's audio was complete
    latency, algorithmic, compute, late = [], [], [], []
    frames_out = 0
    start = time.perf_counter()

    def collect(pushed: int, call_started: float) -> None:
        nonlocal frames_out
        for frame in session.frames(flush=True):
            now = time.perf_counter()
            latency.append(now - arrival[frame.index])
            late.append(now - (start + (frame.index + 1) / VIDEO_FPS))  # vs the frame's audio ending in a paced feed
            algorithmic.append(pushed / AUDIO_RATE - (frame.index + 1) / VIDEO_FPS)
            compute.append(now - call_started)
            frames_out += 1
            if writer is not None:
                writer.write(frame.image)

    pushed = 0
    for s in range(0, len(voice), step):
        if pace:
            time.sleep(max(0.0, start + s / AUDIO_RATE - time.perf_counter()))
        chunk = voice[s : s + step]
        t = time.perf_counter()
        pushed += len(chunk)
        done = pushed // SAMPLES_PER_FRAME
        arrival[frames_done(arrival, done)] = t
        session.push_audio(chunk)
        collect(pushed, t)
    t = time.perf_counter()
    arrival[arrival == 0] = t
    session.end()
    collect(max(pushed, len(arrival) * SAMPLES_PER_FRAME), t)
    wall = time.perf_counter() - start
    lat = np.array(latency)
    # a player showing frame i at (its audio's end + algorithmic bound + buffer) drops the frames not ready by then
    dropped = int((np.array(late) > session.latency_seconds + buffer_ms / 1000).sum()) if pace else 0
    return {
        "frames": frames_out, "wall_s": wall, "fps": frames_out / wall, "audio_s": len(voice) / AUDIO_RATE,
        "latency_p50_ms": 1000 * float(np.percentile(lat, 50)), "latency_p95_ms": 1000 * float(np.percentile(lat, 95)), "latency_max_ms": 1000 * float(lat.max()),
        "algorithmic_p50_ms": 1000 * float(np.median(algorithmic)), "algorithmic_max_ms": 1000 * float(np.max(algorithmic)),
        "compute_p50_ms": 1000 * float(np.median(compute)), "compute_p95_ms": 1000 * float(np.percentile(compute, 95)),
        "algorithmic_bound_ms": 1000 * session.latency_seconds, "dropped": dropped,
    }


def frames_done(arrival: np.ndarray, done: int) -> slice:
    """Frames whose audio became complete with this chunk: those not yet stamped, up to ``done``."""
    first = int(np.argmax(arrival == 0)) if (arrival == 0).any() else len(arrival)
    return slice(first, max(first, min(done, len(arrival))))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lightning_modules stream", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--avatar", required=True, help="face video (prepared once and cached)")
    p.add_argument("--audio", required=True, help="speech file to play as if it were live")
    p.add_argument("--a2e", required=True, help="A2E checkpoint (.ckpt or run folder)")
    p.add_argument("--renderer", required=True, help="renderer checkpoint (.ckpt or run folder)")
    p.add_argument("--out", help="write the frames (and the audio) to this mp4")
    p.add_argument("--chunk-ms", type=float, default=40.0, help="audio piece size, 10 … 1000 ms (default 40)")
    p.add_argument("--no-pace", action="store_true", help="push audio as fast as possible instead of in real time")
    p.add_argument("--buffer-ms", type=float, default=200.0, help="player buffer on top of the algorithmic latency (dropped-frame count)")
    p.add_argument("--avatar-seconds", type=float, default=10.0, help="use at most this much of the avatar video (it loops ping-pong)")
    p.add_argument("--lookahead-ms", type=float, default=500.0, help="audio after a feature block encoded with it (more: closer to offline features, later frames)")
    p.add_argument("--block-ms", type=float, default=400.0, help="audio features are computed in blocks of this length")
    p.add_argument("--batch-size", type=int, default=8, help="most frames per renderer call")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cache-dir", type=Path, help="per-video cache of face tracks")
    p.add_argument("--no-ema", action="store_true", help="the renderer's last weights instead of their moving average (when it was trained with ema_decay)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        a2e, renderer = load_pair(args.a2e, args.renderer, ema=not args.no_ema)
        voice = load_voice(args.audio)
        avatar = prepare_avatar(args.avatar, a2e.face_model, int(args.avatar_seconds * VIDEO_FPS), args.cache_dir)
        rows = lambda ms: 2 * max(1, round(ms / 40))  # noqa: E731  (50 Hz rows, whole frames)
        session = RealtimeSession(a2e, renderer, avatar, args.device, "ping-pong", "streaming", block=rows(args.block_ms),
                                  lookahead=rows(args.lookahead_ms) if args.lookahead_ms > 0 else 0, batch=args.batch_size)
    except (ClipError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    writer = Mp4Writer(Path(args.out)) if args.out else None
    report = simulate(session, voice, args.chunk_ms, not args.no_pace, args.buffer_ms, writer)
    if writer is not None:
        writer.close(np.pad(voice, (0, max(0, writer.frames * SAMPLES_PER_FRAME - len(voice))))[: writer.frames * SAMPLES_PER_FRAME])
    r = report
    print(f"stream: {r['frames']} frames of {r['audio_s']:.2f} s audio in {r['wall_s']:.2f} s = {r['fps']:.1f} frames/s ({'paced' if not args.no_pace else 'unpaced'}, "
          f"{args.chunk_ms:g} ms chunks, {args.device}); latency p50 {r['latency_p50_ms']:.0f} ms, p95 {r['latency_p95_ms']:.0f} ms, max {r['latency_max_ms']:.0f} ms "
          f"(algorithmic p50 {r['algorithmic_p50_ms']:.0f} ms, bound {r['algorithmic_bound_ms']:.0f} ms; compute p50 {r['compute_p50_ms']:.0f} ms, p95 {r['compute_p95_ms']:.0f} ms); "
          f"dropped {r['dropped']}" + (f"; wrote {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
