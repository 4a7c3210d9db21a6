"""Constant-rate decoding, audio resampling and alignment, mp4/wav round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from preprocess.errors import ClipError
from preprocess.media import (
    decode_mp4,
    encode_mp4,
    iter_frames,
    load_audio,
    probe,
    read_wav,
    wav_bytes,
)
from tests.conftest import SAMPLE_CLIPS, tone, write_video


def _level_frames(n: int) -> np.ndarray:
    """Frame i is flat grey at level 5 * i, so a decoded frame says which source frame it is."""
    return np.stack([np.full((32, 32, 3), 5 * i, np.uint8) for i in range(n)])


def _source_index(frame: np.ndarray) -> int:
    return int(round(frame.mean() / 5))


def test_thirty_fps_resampled_to_constant_25(tmp_path: Path) -> None:
    p = write_video(tmp_path / "a.mp4", _level_frames(30), fps=30)  # exactly 1 s
    idx = [_source_index(f) for f in iter_frames(p)]
    assert len(idx) == 25
    # output frame i shows the source frame on screen at i/25 s: floor(i * 30 / 25)
    assert idx == [int(np.floor(i * 30 / 25 + 1e-9)) for i in range(25)]


def test_variable_frame_rate_picks_frame_on_screen(tmp_path: Path) -> None:
    pts = [0, 20, 100, 120, 200, 280, 300]  # ms; uneven gaps
    p = write_video(tmp_path / "vfr.mp4", _level_frames(len(pts)), pts_ms=pts)
    idx = [_source_index(f) for f in iter_frames(p)]
    expect = [max(j for j, t in enumerate(pts) if t <= 40 * i + 1) for i in range(len(idx))]
    assert idx == expect
    assert len(idx) == 9  # the last frame (300 ms) is still on screen at 320 ms


def test_start_end_window(tmp_path: Path) -> None:
    p = write_video(tmp_path / "b.mp4", _level_frames(50))
    idx = [_source_index(f) for f in iter_frames(p, start=0.4, end=1.2)]
    assert idx == list(range(10, 30))


@pytest.mark.parametrize("rate,stereo", [(48000, True), (22050, False), (16000, False)])
def test_audio_resampled_to_16k_mono(tmp_path: Path, rate: int, stereo: bool) -> None:
    p = write_video(tmp_path / "c.mp4", _level_frames(25), audio=tone(1.0, rate, 440.0), audio_rate=rate, stereo=stereo)
    a = load_audio(p)
    assert abs(len(a) - 16000) < 1100  # AAC priming/padding is at most one 1024-sample frame
    spec = np.abs(np.fft.rfft(a[2000:14000]))
    peak_hz = np.argmax(spec) * 16000 / 12000
    assert abs(peak_hz - 440) < 3
    assert 0.2 < np.abs(a[2000:14000]).max() < 0.35  # channels averaged, not summed


def test_grid_sample_probe_and_lengths() -> None:
    p = SAMPLE_CLIPS[0]
    info = probe(p)
    assert (info.width, info.height, info.fps, info.audio_rate, info.audio_channels) == (360, 288, 25.0, 44100, 2)
    assert len(list(iter_frames(p))) == 75
    assert abs(len(load_audio(p)) - 3 * 16000) < 640


def test_bad_files_raise_clip_errors(tmp_path: Path) -> None:
    empty = tmp_path / "e.mp4"
    empty.write_bytes(b"")
    with pytest.raises(ClipError, match="empty file"):
        probe(empty)
    with pytest.raises(ClipError, match="not found"):
        probe(tmp_path / "missing.mp4")
    junk = tmp_path / "j.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ClipError) as e:
        probe(junk)
    assert e.value.stage == "open"
    silent = write_video(tmp_path / "s.mp4", _level_frames(5))
    with pytest.raises(ClipError, match="no audio stream"):
        load_audio(silent)


def test_mp4_and_wav_round_trip() -> None:
    frames = np.random.default_rng(1).integers(0, 255, (12, 64, 64, 3), dtype=np.uint8)
    frames = np.repeat(np.repeat(frames[:, ::8, ::8], 8, 1), 8, 2)  # blocky: compresses well
    back = decode_mp4(encode_mp4(list(frames), crf=10))
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 6
    a = tone(0.5, 16000)
    b, rate = read_wav(wav_bytes(a))
    assert rate == 16000 and np.abs(a - b).max() < 1e-4
