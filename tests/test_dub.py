"""`dub` and `stream` on a real bundled clip with tiny networks: lengths, resolution, sound, untouched pixels,
the bad inputs, the face-track cache, and stream ≡ dub whatever the chunk size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from lightning_modules.inference.avatar import prepare_avatar
from lightning_modules.inference.dub import dub_one, main
from lightning_modules.inference.networks import load_pair
from lightning_modules.inference.session import RealtimeSession, source_frame
from preprocess.media import iter_frames, load_audio, probe, wav_bytes
from tests.conftest import SAMPLES, tone, write_video
from tests.tiny_checkpoints import other_face_model, tiny_a2e, tiny_renderer

VIDEO = SAMPLES / "bbaf2n.mpg"  # 75 frames, 360x288, GRID (CC BY 4.0)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpts")
    return {"a2e": tiny_a2e(d / "a2e.ckpt"), "renderer": tiny_renderer(d / "renderer.ckpt"), "dir": d}


@pytest.fixture(scope="module")
def nets(ckpts):
    return load_pair(ckpts["a2e"], ckpts["renderer"])


@pytest.fixture(scope="module")
def cache(tmp_path_factory, nets) -> Path:
    """An avatar cache holding the whole bundled clip's face track: later dubs of it skip the landmarks."""
    folder = tmp_path_factory.mktemp("avatar_cache")
    prepare_avatar(VIDEO, nets[0].face_model, None, folder, progress=False).close()
    return folder


@pytest.fixture(scope="module")
def voice(tmp_path_factory) -> Path:
    """2.0 s of another GRID speaker (lbax4n) as a 44.1 kHz-free plain wav."""
    path = tmp_path_factory.mktemp("voice") / "lbax4n_2s.wav"
    path.write_bytes(wav_bytes(load_audio(SAMPLES / "lbax4n.mpg")[:32000]))
    return path


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_source_frame_ping_pong_repeat_none():
    assert [source_frame(i, 4, "ping-pong") for i in range(12)] == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1]
    assert [source_frame(i, 3, "repeat") for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert [source_frame(i, 3, "none") for i in range(5)] == [0, 1, 2, None, None]
    assert [source_frame(i, 1, "ping-pong") for i in range(3)] == [0, 0, 0]


def test_dub_real_clip(tmp_path, nets, cache, voice):
    """Duration = the audio's, size = the source's, AAC present, pixels outside the redrawn region the source's."""
    a2e, renderer = nets
    regions, source = {}, np.stack(list(iter_frames(VIDEO)))[:50]

    def keep(frame):
        assert frame.redrawn
        (x0, y0, x1, y1), full = frame.box, np.zeros(source.shape[1:3], bool)
        full[y0:y1, x0:x1] = frame.weight > 0
        regions[frame.index] = full
        assert np.array_equal(frame.image[~full], source[frame.index][~full])  # before encoding: exactly the source

    out = tmp_path / "out.mp4"
    # crf 12: re-encoding GRID's noisy MPEG-1 at the default crf 18 gives 39.4 dB even for an unchanged frame
    report, avatar = dub_one(VIDEO, voice, out, a2e, renderer, crf=12, cache_dir=cache, progress=False, on_frame=keep)
    info = probe(out)
    assert (info.width, info.height) == (360, 288)
    assert info.has_audio
    assert report.frames == 50 and report.faces_lost == 0 and len(regions) == 50
    assert abs(len(load_audio(out)) / 16000 - 2.0) <= 0.04 + 0.09  # ± one frame, plus AAC's priming/padding
    dubbed = np.stack(list(iter_frames(out)))
    assert len(dubbed) == 50
    changed_inside, outside = [], []
    for i, full in regions.items():
        grown = binary_dilation(full, iterations=8)  # H.264's blocks carry a change a few pixels out
        outside.append(psnr(dubbed[i][~grown], source[i][~grown]))
        changed_inside.append(np.abs(dubbed[i][full].astype(int) - source[i][full]).mean())
    assert min(outside) >= 40.0, f"pixels outside the redrawn region changed: PSNR {min(outside):.1f} dB"
    assert np.mean(changed_inside) > 5.0  # the region really was redrawn (random networks: visibly)
    assert not list(tmp_path.glob(".*partial*"))
    assert report.seconds["landmarks"] == 0  # the cache fixture tracked this clip already

    # a second voice on the same face: the face track comes from the cache, the same as computed afresh
    fresh = prepare_avatar(VIDEO, a2e.face_model, 50, tmp_path / "fresh_cache", progress=False)
    assert avatar.from_cache and not fresh.from_cache
    assert np.array_equal(fresh.crop_matrix, avatar.crop_matrix) and np.allclose(fresh.coeffs["exp"], avatar.coeffs["exp"], atol=1e-4)


def test_dub_lengths(tmp_path, nets, cache, voice, grid_frames):
    a2e, renderer = nets
    short = write_video(tmp_path / "short.mp4", grid_frames["bbaf2n"][:30])  # 1.2 s of video, 2 s of voice
    for loop, frames in (("ping-pong", 50), ("none", 30)):
        report, _ = dub_one(short, voice, tmp_path / f"{loop}.mp4", a2e, renderer, loop=loop, cache_dir=cache, progress=False)
        assert report.frames == frames == len(list(iter_frames(tmp_path / f"{loop}.mp4")))
    tail, _ = dub_one(VIDEO, voice, tmp_path / "tail.mp4", a2e, renderer, keep_tail=True, cache_dir=cache, progress=False)
    assert tail.frames == 75


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, ckpts, grid_frames) -> dict[str, list[str]]:
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    faceless = write_video(d / "faceless.mp4", rng.integers(0, 255, (20, 144, 176, 3), dtype=np.uint8), audio=tone(0.8, 16000))
    (d / "silent.wav").write_bytes(wav_bytes(np.zeros(16000, np.float32)))
    (d / "blip.wav").write_bytes(wav_bytes(tone(0.02, 16000)))
    (d / "garbage.wav").write_bytes(b"RIFF not really a wav file" * 10)
    (d / "voice.wav").write_bytes(wav_bytes(tone(1.0, 16000)))
    other = tiny_renderer(d / "renderer_other.ckpt", face_model=str(other_face_model(d / "other_face_model.npz")))
    whisper_a2e = tiny_a2e(d / "a2e_384.ckpt", audio_features="mel", audio_dim=384)
    good = ["--a2e", str(ckpts["a2e"]), "--renderer", str(ckpts["renderer"])]
    v, a = str(VIDEO), str(d / "voice.wav")
    return {
        "no face in the video": ["--video", str(faceless), "--audio", a, *good],
        "no video stream": ["--video", a, "--audio", a, *good],
        "unreadable audio": ["--video", v, "--audio", str(d / "garbage.wav"), *good],
        "silent audio": ["--video", v, "--audio", str(d / "silent.wav"), *good],
        "audio shorter than a frame": ["--video", v, "--audio", str(d / "blip.wav"), *good],
        "missing audio file": ["--video", v, "--audio", str(d / "nope.wav"), *good],
        "different face models": ["--video", v, "--audio", a, "--a2e", str(ckpts["a2e"]), "--renderer", str(other)],
        "audio features of another width": ["--video", v, "--audio", a, "--a2e", str(whisper_a2e), "--renderer", str(ckpts["renderer"])],
        "missing checkpoint": ["--video", v, "--audio", a, "--a2e", str(d / "none.ckpt"), "--renderer", str(ckpts["renderer"])],
        "not a checkpoint": ["--video", v, "--audio", a, "--a2e", a, "--renderer", str(ckpts["renderer"])],
    }


@pytest.mark.parametrize("case", [
    "no face in the video", "no video stream", "unreadable audio", "silent audio", "audio shorter than a frame", "missing audio file",
    "different face models", "audio features of another width", "missing checkpoint", "not a checkpoint",
])
def test_dub_bad_input_one_line_exit_2_no_file(case, bad_inputs, tmp_path, cache, capsys):
    out = tmp_path / "out.mp4"
    code = main([*bad_inputs[case], "--out", str(out), "--cache-dir", str(cache), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    assert list(tmp_path.iterdir()) == []  # no output, no partial file


def test_pairs_dub_many_and_continue_past_a_bad_one(tmp_path, ckpts, cache, voice, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"video,audio,out\n{VIDEO},{voice},{tmp_path / 'a.mp4'}\n{VIDEO},{tmp_path / 'missing.wav'},{tmp_path / 'b.mp4'}\n"
                     f"{VIDEO},{SAMPLES / 'brbk7n.mpg'},{tmp_path / 'c.mp4'}\n")
    code = main(["--pairs", str(pairs), "--a2e", str(ckpts["a2e"]), "--renderer", str(ckpts["renderer"]), "--cache-dir", str(cache), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2
    assert (tmp_path / "a.mp4").is_file() and (tmp_path / "c.mp4").is_file() and not (tmp_path / "b.mp4").exists()
    assert captured.out.count("fps per stage") == 2 and "faces lost: 0" in captured.out
    assert "missing.wav" in captured.err


def stream_frames(nets, avatar, samples: np.ndarray, chunk: int) -> list[np.ndarray]:
    session = RealtimeSession(*nets, avatar, features="streaming")
    out = []
    for s in range(0, len(samples), chunk):
        session.push_audio(samples[s : s + chunk])
        out += [f.image for f in session.frames(flush=True)]
    session.end()
    return out + [f.image for f in session.frames()]


def test_stream_equals_dub_whatever_the_chunks(tmp_path, nets, cache, voice):
    a2e, renderer = nets
    avatar = prepare_avatar(VIDEO, a2e.face_model, 50, cache, progress=False)
    samples = load_audio(voice)
    by_40ms = stream_frames(nets, avatar, samples, 640)
    by_1s = stream_frames(nets, avatar, samples, 16000)
    dubbed = []
    dub_one(VIDEO, voice, tmp_path / "dub.mp4", a2e, renderer, features="streaming", avatar=avatar, progress=False, on_frame=lambda f: dubbed.append(f.image))
    assert len(by_40ms) == len(by_1s) == len(dubbed) == 50
    for a, b in ((by_40ms, dubbed), (by_1s, dubbed)):
        diff = np.abs(np.stack(a).astype(int) - np.stack(b))
        assert diff.max() <= 1, diff.max()  # float rounding of different batch sizes, at most one level
        assert (diff > 0).mean() < 1e-3


def test_a_renderer_that_takes_the_mouth_sketch_streams(tmp_path, ckpts, nets, cache, voice):
    """The runtime draws the sketch from the predicted β (compose.redraw) for renderers that take it."""
    a2e, plain = nets
    _, sketching = load_pair(ckpts["a2e"], tiny_renderer(tmp_path / "sketch.ckpt", sketch_channels=2))
    avatar = prepare_avatar(VIDEO, a2e.face_model, 50, cache, progress=False)
    samples = load_audio(voice)
    drawn, before = stream_frames((a2e, sketching), avatar, samples, 16000), stream_frames((a2e, plain), avatar, samples, 16000)
    assert len(drawn) == len(before) == 50 and drawn[0].shape == before[0].shape
    assert any(np.abs(a.astype(int) - b).max() > 0 for a, b in zip(drawn, before))  # the lower face is the other network's


@pytest.mark.parametrize("sketch_channels", [0, 2])
def test_export_onnx_equals_pytorch(tmp_path, ckpts, sketch_channels):
    import onnxruntime as ort
    import torch

    from lightning_modules.inference.export import main as export_main

    renderer_ckpt = ckpts["renderer"] if not sketch_channels else tiny_renderer(tmp_path / "sketch.ckpt", sketch_channels=sketch_channels)
    assert export_main(["--a2e", str(ckpts["a2e"]), "--renderer", str(renderer_ckpt), "--out", str(tmp_path)]) == 0
    a2e, renderer = load_pair(ckpts["a2e"], renderer_ckpt)
    # the three graphs chained as a runtime would, at a batch size never traced: the renderer's output matches PyTorch's
    g = torch.Generator().manual_seed(5)
    s, b = renderer.image_size, 4
    reference = torch.rand(1, 3, s, s, generator=g) * 2 - 1
    source = torch.rand(b, 3, s, s, generator=g) * 2 - 1
    mask = torch.zeros(b, 1, s, s)
    mask[..., s // 2 :, :] = 1
    coeffs = torch.randn(b, renderer.net.coeff_dim, generator=g)
    sketch = torch.rand(b, sketch_channels, s, s, generator=g) if sketch_channels else None
    run = lambda name, feed: ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)  # noqa: E731
    ref = run("reference_encoder", {"reference": reference.numpy()})
    inputs = {i.name for i in ort.InferenceSession(str(tmp_path / "renderer.onnx"), providers=["CPUExecutionProvider"]).get_inputs()}
    feed = {"source_masked": (source * (1 - mask)).numpy(), "mask": mask.numpy(), "coeffs": coeffs.numpy(), **{f"ref_{i}": r for i, r in enumerate(ref)}}
    if sketch is not None:
        feed["sketch"] = sketch.numpy()
    assert ("sketch" in inputs) == bool(sketch_channels)
    image = run("renderer", {k: v for k, v in feed.items() if k in inputs})[0]
    with torch.no_grad():
        want = renderer.net(source * (1 - mask), mask, reference.expand(b, -1, -1, -1), coeffs, sketch).numpy()
    assert np.abs(image - want).max() < 1e-4


def test_contact_sheet_puts_the_same_times_above_each_other(tmp_path):
    from lightning_modules.inference.contact_sheet import sheet

    same = sheet(VIDEO, VIDEO, count=4)
    assert same.shape == (2 * (int(0.9 * 288) - int(0.4 * 288)), 4 * 180, 3)
    top, bottom = np.split(same, 2)
    assert np.array_equal(top, bottom)
    other = sheet(VIDEO, SAMPLES / "lbax4n.mpg", count=4, full=True)
    assert other.shape == (2 * 288, 4 * 360, 3) and not np.array_equal(*np.split(other, 2))


def test_contact_sheet_names_a_missing_video_in_one_line(tmp_path):
    from lightning_modules.inference.contact_sheet import main

    with pytest.raises(SystemExit) as e:
        main(["--source", str(VIDEO), "--dubbed", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "s.png")])
    assert str(e.value).startswith("error: open: file not found") and "nope.mp4" in str(e.value)
    assert not (tmp_path / "s.png").exists()
