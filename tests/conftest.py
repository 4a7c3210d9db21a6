"""Tiny media fixtures in every dataset layout, cut from the bundled GRID samples (real faces).

Nothing here reads ../shared: a fresh clone has only the repo.
"""

from __future__ import annotations

import os
import shutil
import signal
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sharded_data" / "samples"
SAMPLE_CLIPS = sorted(SAMPLES.glob("*.mpg"))


def write_video(path: Path, frames: list[np.ndarray] | np.ndarray, fps: int = 25, audio: np.ndarray | None = None,
                audio_rate: int = 16000, stereo: bool = False, pts_ms: list[int] | None = None) -> Path:
    """mp4/mkv (H.264 + AAC) via PyAV; ``pts_ms`` gives variable frame timing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.height, vs.width = frames[0].shape[:2]
        vs.pix_fmt = "yuv420p"
        if pts_ms is not None:
            vs.codec_context.time_base = Fraction(1, 1000)
        ast = None
        if audio is not None:
            ast = c.add_stream("aac", rate=audio_rate, layout="stereo" if stereo else "mono")
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            if pts_ms is not None:
                vf.pts, vf.time_base = pts_ms[i], Fraction(1, 1000)
            c.mux(vs.encode(vf))
        c.mux(vs.encode(None))
        if ast is not None:
            data = np.stack([audio, audio], 1).reshape(1, -1) if stereo else audio[None]  # packed (interleaved)
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(data, dtype=np.float32), format="flt", layout="stereo" if stereo else "mono")
            af.sample_rate, af.pts = audio_rate, 0
            c.mux(ast.encode(af))
            c.mux(ast.encode(None))
    return path


def tone(seconds: float, rate: int, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="session")
def grid_frames() -> dict[str, np.ndarray]:
    """Decoded frames [75, 288, 360, 3] of each bundled sample, by stem."""
    from preprocess.media import iter_frames

    return {p.stem: np.stack(list(iter_frames(p))) for p in SAMPLE_CLIPS}


@pytest.fixture(scope="session")
def grid_audio() -> dict[str, np.ndarray]:
    from preprocess.media import load_audio

    return {p.stem: load_audio(p) for p in SAMPLE_CLIPS}


def _speech(grid_audio: dict[str, np.ndarray], stem: str, n_frames: int, rate: int) -> np.ndarray:
    from scipy.signal import resample_poly

    a = grid_audio[stem][: n_frames * 640]
    return resample_poly(a, rate, 16000).astype(np.float32) if rate != 16000 else a


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory, grid_frames, grid_audio) -> Path:
    """A `folder` dataset: good, VFR, 30 fps 48 kHz stereo, two faces, face lost, plus bad files."""
    root = tmp_path_factory.mktemp("folder")
    a = grid_frames["bbaf2n"]
    b = grid_frames["brbk7n"]
    write_video(root / "spk_a" / "good.mp4", a[10:50], audio=_speech(grid_audio, "bbaf2n", 50, 16000)[6400:])
    # 30 fps source with 48 kHz stereo audio: 45 frames = 1.5 s
    write_video(root / "spk_a" / "thirty.mkv", a[:45], fps=30, audio=_speech(grid_audio, "bbaf2n", 45, 48000), audio_rate=48000, stereo=True)
    # variable frame rate: gaps of 30, 40 and 50 ms
    steps = np.resize([30, 40, 50], 44)
    pts = np.concatenate([[0], np.cumsum(steps)]).tolist()
    write_video(root / "spk_b" / "vfr.mp4", b[:45], audio=_speech(grid_audio, "brbk7n", 60, 22050), audio_rate=22050, pts_ms=pts)
    two = np.concatenate([a[:40], b[:40]], axis=2)
    write_video(root / "spk_b" / "two_faces.mp4", two, audio=_speech(grid_audio, "bbaf2n", 40, 16000))
    lost = np.concatenate([b[:20], np.full((15, *b.shape[1:]), 128, np.uint8), b[35:60]])
    write_video(root / "spk_b" / "face_lost.mp4", lost, audio=_speech(grid_audio, "brbk7n", 60, 16000))
    write_video(root / "bad" / "no_audio.mp4", a[:30])
    rng = np.random.default_rng(0)
    write_video(root / "bad" / "faceless.mp4", rng.integers(0, 255, (30, 144, 176, 3), dtype=np.uint8), audio=tone(1.2, 16000))
    write_video(root / "bad" / "too_short.mp4", a[:8], audio=tone(0.32, 16000))
    (root / "bad" / "empty.mp4").write_bytes(b"")
    good = (root / "spk_a" / "good.mp4").read_bytes()
    (root / "bad" / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (root / "bad" / "broken_link.mp4").symlink_to(root / "does_not_exist.mp4")
    return root


@pytest.fixture(scope="session")
def good_root(tmp_path_factory, grid_frames, grid_audio) -> Path:
    """Six short good clips (two speakers), for resume and multi-rank tests."""
    root = tmp_path_factory.mktemp("good")
    for i in range(6):
        stem = ("bbaf2n", "lbax4n")[i % 2]
        s = 5 * i
        write_video(root / f"spk{i % 2}" / f"clip{i}.mp4", grid_frames[stem][s : s + 30], audio=_speech(grid_audio, stem, s + 30, 16000)[s * 640 :])
    return root


@pytest.fixture(scope="session")
def layouts(tmp_path_factory, grid_frames, grid_audio) -> dict[str, Path]:
    """VoxCeleb1, MEAD and HDTF (cut clips, and full video + annotation) layouts, 30 frames each."""
    base = tmp_path_factory.mktemp("layouts")
    a, c = grid_frames["bbaf2n"], grid_frames["lbax4n"]
    sa = _speech(grid_audio, "bbaf2n", 75, 16000)
    vox = base / "vox"
    write_video(vox / "id10001" / "1zcIwhmdeo4" / "00001.mp4", a[:30], audio=sa)
    write_video(vox / "id10002" / "AbC_dEf-123" / "00003.mp4", c[:30], audio=_speech(grid_audio, "lbax4n", 30, 16000))
    (vox / "vox1_meta.csv").write_text("VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\nid10001\tA\tm\tUK\tdev\nid10002\tB\tm\tUK\ttest\n")
    mead = base / "mead"
    write_video(mead / "M003" / "video" / "front" / "angry" / "level_1" / "001.mp4", a[:30])  # MEAD video has its own audio file
    write_video(mead / "M003" / "video" / "left_30" / "angry" / "level_1" / "001.mp4", a[:30])
    audio_only = mead / "M003" / "audio" / "angry" / "level_1" / "001.m4a"
    audio_only.parent.mkdir(parents=True)
    with av.open(str(audio_only), "w", format="mp4") as ct:
        st = ct.add_stream("aac", rate=48000, layout="mono")
        af = av.AudioFrame.from_ndarray(_speech(grid_audio, "bbaf2n", 30, 48000)[None], format="flt", layout="mono")
        af.sample_rate, af.pts = 48000, 0
        ct.mux(st.encode(af))
        ct.mux(st.encode(None))
    hdtf_cut = base / "hdtf_cut"
    write_video(hdtf_cut / "RD_Radio7_000.mp4", c[:30], audio=_speech(grid_audio, "lbax4n", 30, 16000))
    hdtf_full = base / "hdtf_full"
    write_video(hdtf_full / "WRA_Someone_0.mp4", a, audio=sa)
    (hdtf_full / "WRA_annotion_time.txt").write_text("Someone_0.mp4 00:00-00:01.4 00:01.5-00:02.9\n")
    return {"voxceleb1": vox, "mead": mead, "hdtf_cut": hdtf_cut, "hdtf_full": hdtf_full}


@pytest.fixture()
def copy_samples(tmp_path) -> Path:
    """The bundled GRID samples copied to a temporary root."""
    root = tmp_path / "samples"
    root.mkdir()
    for p in SAMPLE_CLIPS:
        shutil.copy(p, root / p.name)
    return root


_PROFILING_TIMER_ARMED: list[str] = []
# SIGPROF's default action ends the process: a profiling timer armed by a native library must not end the suite
signal.signal(signal.SIGPROF, signal.SIG_IGN)


@pytest.fixture(autouse=True)
def _no_profiling_timer_left_armed(request):
    """Disarm a CPU-profiling timer a native library may leave running after a test, and name the test.

    A fresh-clone run of the suite died in tests/test_resume.py with "Profiling timer expired": something in
    the process had armed ITIMER_PROF (libmediapipe.so is the one native library here that calls setitimer)
    and SIGPROF then met its default action. Nothing of ours arms it; disarming it after each test keeps one
    library's leftover from killing the whole suite, and the report below says which test left it.
    """
    yield
    if signal.getitimer(signal.ITIMER_PROF) != (0.0, 0.0):
        _PROFILING_TIMER_ARMED.append(request.node.nodeid)
        signal.setitimer(signal.ITIMER_PROF, 0)


def pytest_terminal_summary(terminalreporter):
    if _PROFILING_TIMER_ARMED:
        terminalreporter.write_line(f"profiling timer (ITIMER_PROF) found armed after: {', '.join(_PROFILING_TIMER_ARMED)}; disarmed")
