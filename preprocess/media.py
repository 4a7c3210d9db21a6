"""Video and audio I/O with PyAV: constant-rate decoding, 16 kHz mono audio, mp4/wav bytes.

Everything downstream assumes 25 fps video and 16 kHz audio, so the resampling to those
rates happens here and nowhere else.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import av
import numpy as np

from preprocess.errors import ClipError

VIDEO_FPS = 25
AUDIO_RATE = 16_000
SAMPLES_PER_FRAME = AUDIO_RATE // VIDEO_FPS  # 640


@dataclass(frozen=True)
class MediaInfo:
    """What the source file says about itself (recorded in meta.json)."""

    width: int
    height: int
    fps: float
    duration: float
    video_start: float
    has_audio: bool
    audio_rate: int | None
    audio_channels: int | None


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise ClipError("open", f"file not found: {path}")
    if path.stat().st_size == 0:
        raise ClipError("open", f"empty file (0 bytes): {path}")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise ClipError("open", f"not a readable video ({e.__class__.__name__}: {e}); re-download or remove {path}") from e


def probe(path: Path, audio_path: Path | None = None) -> MediaInfo:
    """Read stream headers; raise ClipError for files without a usable video stream."""
    with _open(path) as c:
        if not c.streams.video:
            raise ClipError("open", f"no video stream in {path}")
        vs = c.streams.video[0]
        rate = float(vs.average_rate or vs.guessed_rate or 0) or float(VIDEO_FPS)
        duration = float(c.duration / av.time_base) if c.duration else float((vs.duration or 0) * vs.time_base)
        start = float(vs.start_time * vs.time_base) if vs.start_time is not None else 0.0
        width, height = vs.codec_context.width, vs.codec_context.height
        audio = c.streams.audio[0] if c.streams.audio and audio_path is None else None
    if audio_path is not None:
        with _open(audio_path) as ac:
            audio = ac.streams.audio[0] if ac.streams.audio else None
            a_rate, a_ch = (audio.rate, audio.channels) if audio is not None else (None, None)
    else:
        a_rate, a_ch = (audio.rate, audio.channels) if audio is not None else (None, None)
    if width <= 0 or height <= 0:
        raise ClipError("open", f"video stream has no frame size: {path}")
    return MediaInfo(width, height, rate, duration, start, audio is not None, a_rate, a_ch)


def iter_frames(
    path: Path,
    start: float = 0.0,
    end: float | None = None,
    fps: int = VIDEO_FPS,
) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames resampled to a constant ``fps``.

    Output frame i shows the source frame on screen at ``start + i / fps`` seconds after
    the first video frame, so variable-frame-rate and 30 fps sources come out evenly
    spaced (frames repeated or dropped as a player would). ``end`` bounds the output.
    """
    tol = 1e-3  # container pts rounding (well under 1 ms) must not shift a frame by one
    c = _open(path)
    try:
        vs = c.streams.video[0]
        t0 = float(vs.start_time * vs.time_base) if vs.start_time is not None else 0.0
        if start > 1.0:
            c.seek(int((t0 + start - 1.0) / vs.time_base), stream=vs, backward=True)
        step = 1.0 / float(vs.average_rate or fps)
        i = 0
        held: av.VideoFrame | None = None  # the source frame currently on screen
        held_rgb: np.ndarray | None = None  # converted lazily: dropped frames are never converted

        def show_held_until(t_next: float) -> Iterator[np.ndarray]:
            """Output frames while the held frame is on screen (before ``t_next``) and before ``end``."""
            nonlocal i, held_rgb
            while start + i / fps + tol < t_next and (end is None or start + i / fps < end - 1e-6):
                if held_rgb is None:
                    held_rgb = held.to_ndarray(format="rgb24")
                yield held_rgb
                i += 1

        last_t = -1.0
        for frame in c.decode(vs):
            t = (float(frame.time) - t0) if frame.time is not None else last_t + step
            last_t = t
            if held is not None:
                yield from show_held_until(t)
                if end is not None and start + i / fps >= end - 1e-6:
                    return
            held, held_rgb = frame, None
        if held is not None:  # the last source frame stays on screen for one nominal frame duration
            yield from show_held_until(last_t + step)
    except av.error.FFmpegError as e:
        raise ClipError("decode", f"video stream is corrupt or truncated ({e}); re-download {path}") from e
    finally:
        c.close()


def load_audio(path: Path, start: float = 0.0, end: float | None = None, same_container: bool = True) -> np.ndarray:
    """Decode audio to float32 mono at 16 kHz; sample 0 is at ``start`` on the video clock.

    With ``same_container`` the audio/video start offset of the container is honoured;
    a separate audio file (MEAD) is taken to start with the video.
    """
    c = _open(path)
    try:
        if not c.streams.audio:
            raise ClipError("audio", f"no audio stream in {path}; every clip needs its speech")
        ast = c.streams.audio[0]
        a0 = float(ast.start_time * ast.time_base) if ast.start_time is not None else 0.0
        v0 = a0
        if same_container and c.streams.video and c.streams.video[0].start_time is not None:
            vs = c.streams.video[0]
            v0 = float(vs.start_time * vs.time_base)
        if start > 1.0:
            c.seek(int((v0 + start - 1.0) / ast.time_base), stream=ast, backward=True)
        # average channels ourselves: FFmpeg's stereo->mono matrix sums at -3 dB and clips
        channels = ast.codec_context.channels or 1
        resampler = av.AudioResampler(format="flt", layout=ast.codec_context.layout, rate=AUDIO_RATE)
        chunks: list[np.ndarray] = []
        first_t: float | None = None
        for frame in c.decode(ast):
            if first_t is None:
                first_t = float(frame.time) if frame.time is not None else a0
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1, channels).mean(axis=1))
            if end is not None and frame.time is not None and float(frame.time) - v0 > end + 1.0:
                break
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1, channels).mean(axis=1))
    except av.error.FFmpegError as e:
        raise ClipError("audio", f"audio stream is corrupt or truncated ({e}); re-download {path}") from e
    finally:
        c.close()
    if not chunks:
        raise ClipError("audio", f"audio stream of {path} decodes to no samples")
    samples = np.concatenate(chunks).astype(np.float32)
    # place the decoded samples on the video clock, then cut [start, end)
    offset = int(round(((first_t or a0) - v0 - start) * AUDIO_RATE))
    if offset > 0:
        samples = np.concatenate([np.zeros(offset, np.float32), samples])
    elif offset < 0:
        samples = samples[-offset:]
    if end is not None:
        samples = samples[: int(round((end - start) * AUDIO_RATE))]
    return samples


KEYFRAME_INTERVAL = 8
"""Frames between keyframes in shard videos (schema 2): a reader seeks to the keyframe before a frame and
decodes at most this many frames to reach it (docs/preprocessing.md "Schema 2": 2.1 ms per training image, 1.7x the
bytes of a default-GOP stream, measured on the corpus shards)."""


def encode_mp4(frames: Sequence[np.ndarray], fps: int = VIDEO_FPS, crf: int = 18, preset: str = "veryfast", keyframe_interval: int | None = None) -> bytes:
    """H.264 mp4 (yuv420p, constant ``fps``) in memory; one output frame per input frame.

    ``keyframe_interval`` k: a keyframe exactly every k frames and no B-frames, so :func:`decode_frames`
    reaches any frame by decoding at most k frames (None: x264's defaults, keyframes every 250 frames).
    """
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as c:
        s = c.add_stream("libx264", rate=Fraction(fps))
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        s.options = {"crf": str(crf), "preset": preset}
        if keyframe_interval:
            s.options["x264-params"] = f"keyint={keyframe_interval}:min-keyint={keyframe_interval}:scenecut=0:bframes=0"
        s.codec_context.thread_count = 1
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        c.mux(s.encode(None))
    return buf.getvalue()


class Mp4Writer:
    """H.264 (yuv420p) + optional AAC mp4 written frame by frame, so long videos never sit in memory.

    Sides are cut to even numbers (yuv420p needs them). Use as a context manager; ``audio``
    (mono float at ``rate``) is muxed when the writer closes.
    """

    def __init__(self, path: Path, fps: int = VIDEO_FPS, crf: int = 20, preset: str = "veryfast", audio_rate: int = AUDIO_RATE, with_audio: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w", format="mp4")
        self.video = self.container.add_stream("libx264", rate=Fraction(fps))
        self.video.pix_fmt = "yuv420p"
        self.video.options = {"crf": str(crf), "preset": preset}
        self.audio_rate = audio_rate
        self.audio = self.container.add_stream("aac", rate=audio_rate, layout="mono") if with_audio else None
        self.size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        if self.size is None:
            h, w = frame.shape[:2]
            self.size = (h - h % 2, w - w % 2)
            self.video.height, self.video.width = self.size
        h, w = self.size
        self.container.mux(self.video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:h, :w]), format="rgb24")))
        self.frames += 1

    def close(self, audio: np.ndarray | None = None) -> None:
        self.container.mux(self.video.encode(None))
        if self.audio is not None and audio is not None and len(audio):
            pcm = np.ascontiguousarray(np.clip(audio, -1, 1).astype(np.float32)[None])
            frame = av.AudioFrame.from_ndarray(pcm, format="flt", layout="mono")
            frame.sample_rate = self.audio_rate
            self.container.mux(self.audio.encode(frame))
            self.container.mux(self.audio.encode(None))
        self.container.close()

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.container.close()


def write_mp4(path: Path, frames: Sequence[np.ndarray], audio: np.ndarray | None = None, fps: int = VIDEO_FPS, rate: int = AUDIO_RATE, crf: int = 20) -> Path:
    """A playable H.264 mp4 (yuv420p) with, when given, mono float ``audio`` muxed as AAC."""
    with Mp4Writer(path, fps, crf, audio_rate=rate, with_audio=audio is not None) as w:
        for f in frames:
            w.write(f)
        w.close(audio)
    return path


def decode_mp4(data: bytes) -> np.ndarray:
    """Decode mp4 bytes to uint8 RGB frames [T, H, W, 3]."""
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def decode_frames(data: bytes, indices: Sequence[int], keyframe_interval: int = KEYFRAME_INTERVAL) -> np.ndarray:
    """uint8 RGB frames [len(indices), H, W, 3]: frames ``indices`` (any order, repeats allowed) of an mp4 in memory.

    Wanted frames are visited in order; the decoder seeks (to the keyframe before the frame) only when the
    next wanted frame lies ``keyframe_interval`` or more frames ahead, else it decodes on. Only wanted frames
    are converted to RGB. Any H.264 mp4 decodes correctly; one written with ``encode_mp4(keyframe_interval=k)``
    costs at most k decoded frames per wanted frame (a default-GOP stream up to 250).
    """
    want = sorted({int(i) for i in indices})
    got: dict[int, np.ndarray] = {}
    with av.open(io.BytesIO(data), format="mp4") as c:
        vs = c.streams.video[0]
        vs.thread_type = "NONE"  # one loader process = one core; frame threads would only add latency
        per_frame = 1 / (VIDEO_FPS * vs.time_base)  # frame duration in stream ticks
        start = vs.start_time or 0
        decoded: Iterator[av.VideoFrame] | None = None
        position = -1  # the last frame the decoder returned
        for t in want:
            if decoded is None or t <= position or t - position > keyframe_interval:
                c.seek(start + int(round(t * per_frame)), stream=vs, backward=True)
                decoded = c.decode(vs)
            for frame in decoded:
                position = int(round((frame.pts - start) / per_frame))
                if position == t:
                    got[t] = frame.to_ndarray(format="rgb24")
                    break
                if position > t:
                    break
            if t not in got:
                raise ValueError(f"frame {t} is not in this video (it has frames up to {position})")
    return np.stack([got[int(i)] for i in indices])


def wav_bytes(samples: np.ndarray, rate: int = AUDIO_RATE) -> bytes:
    """16-bit PCM mono wav in memory."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Inverse of :func:`wav_bytes`: float32 samples in [-1, 1] and the sample rate."""
    with wave.open(io.BytesIO(data), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError("only 16-bit PCM wav is supported")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, w.getnchannels())
        return pcm.mean(axis=1).astype(np.float32) / 32767.0, w.getframerate()
