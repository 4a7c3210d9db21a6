"""``python -m lightning_modules.inference.bench``: `dub` and `stream` end to end, per stage, on a bundled clip.

Rows: the demo checkpoints (``make demo``), the CPU real-time preset with and without the corpus
preset's mouth sketch, the same preset at 256 px with the sketch (the speaker model's second stage) and the paper-size
renderer (configs/experiment/renderer_cpu_realtime.yaml, renderer_corpus.yaml, renderer_s1_256.yaml,
configs/model/renderer.yaml; random weights: speed does not depend on them)
behind the demo A2E; the reference-feature cache on/off; ONNX Runtime vs PyTorch eager. Frames/s
per stage are frames divided by the seconds spent in that stage.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml

from lightning_modules.inference.avatar import prepare_avatar
from lightning_modules.inference.compose import CropRenderer
from lightning_modules.inference.dub import STAGES, dub_one, load_voice
from lightning_modules.inference.networks import RendererNetwork, load_pair
from lightning_modules.inference.session import RealtimeSession
from lightning_modules.inference.stream import simulate
from lightning_modules.renderer.generator import FIARenderer

REPO = Path(__file__).resolve().parents[2]


def preset_renderer(like: RendererNetwork, *configs: str) -> RendererNetwork:
    """A randomly initialised renderer with the widths and image size of the given YAML presets (later ones win)."""
    net_args, size = {}, like.image_size
    for c in configs:
        cfg = yaml.safe_load((REPO / c).read_text())
        net_args |= cfg.get("model", {}).get("init_args", {}).get("net", {}).get("init_args", {})
        size = cfg.get("data", {}).get("init_args", {}).get("image_size", size)
    fm = like.face_model
    net = FIARenderer(shape_dim=fm.shape_dim, exp_dim=fm.exp_dim, **{k: tuple(v) if isinstance(v, list) else v for k, v in net_args.items()}).eval()
    return RendererNetwork(net, int(size), like.mask, fm, Path(configs[-1]))


def timed(fn, seconds: float = 1.0) -> float:
    """Mean seconds per call (after two warm-up calls), over at least ``seconds``."""
    fn()
    fn()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds or n < 3:
        fn()
        n += 1
    return (time.perf_counter() - start) / n


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m lightning_modules.inference.bench", description=__doc__)
    p.add_argument("--video", default=str(REPO / "sharded_data/samples/bbaf2n.mpg"))
    p.add_argument("--audio", default=str(REPO / "sharded_data/samples/lbax4n.mpg"))
    p.add_argument("--a2e", default=str(REPO / "checkpoints/a2e-demo"))
    p.add_argument("--renderer", default=str(REPO / "checkpoints/renderer-demo"))
    p.add_argument("--paper-seconds", type=float, default=1.0, help="audio dubbed with the paper-size renderer (it is slow on a CPU)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    try:
        a2e, demo = load_pair(args.a2e, args.renderer)
    except Exception as e:  # noqa: BLE001
        raise SystemExit(f"error: {e} (run `make demo` first, or pass --a2e/--renderer)") from None
    print(f"# dub / stream bench: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {args.device}")
    voice = load_voice(args.audio)
    cache = Path(tempfile.mkdtemp(prefix="realtalk-bench-"))
    prepare_avatar(args.video, a2e.face_model, None, cache, progress=False)  # face track cached: the rows below time a second voice
    variants = {
        "demo checkpoint": demo,
        "CPU real-time preset": preset_renderer(demo, "configs/model/renderer.yaml", "configs/data/renderer.yaml", "configs/experiment/renderer_cpu_realtime.yaml"),
        # the corpus preset's mouth sketch: what drawing it per frame adds to dub and stream
        "CPU real-time + mouth sketch": preset_renderer(demo, "configs/model/renderer.yaml", "configs/data/renderer.yaml",
                                                        "configs/experiment/renderer_cpu_realtime.yaml", "configs/experiment/renderer_corpus.yaml"),
        # the speaker model's second stage: the CPU preset drawing at the crops' own 256 px (sharper, slower)
        "CPU preset at 256 px (speaker model)": preset_renderer(demo, "configs/model/renderer.yaml", "configs/data/renderer.yaml",
                                                                "configs/experiment/renderer_cpu_realtime.yaml", "configs/experiment/renderer_s1.yaml",
                                                                "configs/experiment/renderer_s1_256.yaml"),
        "paper-size": preset_renderer(demo, "configs/model/renderer.yaml", "configs/data/renderer.yaml"),
    }
    header = ["renderer", "px", "frames", *STAGES, "total fps"]
    print("\n## dub (fps per stage; the face track comes from the cache, landmarks/fit are a first run's cost)\n")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    first = prepare_avatar(args.video, a2e.face_model, None, Path(tempfile.mkdtemp()), progress=False)
    n = first.num_frames
    print("| (first run of a video) | | " + str(n) + " | " + " | ".join(f"{n / first.seconds[k]:.0f}" if first.seconds.get(k) else "" for k in STAGES) + " | |")
    for name, renderer in variants.items():
        audio = voice[: int(args.paper_seconds * 16000)] if name == "paper-size" else voice
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "voice.wav"
            from preprocess.media import wav_bytes

            wav.write_bytes(wav_bytes(audio))
            report, _ = dub_one(args.video, wav, Path(tmp) / "out.mp4", a2e, renderer, device=args.device, cache_dir=cache, progress=False)
        cells = [f"{report.frames / report.seconds[k]:.0f}" if report.seconds.get(k) else "" for k in STAGES]
        print(f"| {name} | {renderer.image_size} | {report.frames} | " + " | ".join(cells) + f" | {report.frames / report.wall:.1f} |")

    print("\n## stream (unpaced, 40 ms chunks, streaming features: block 400 ms, lookahead 500 ms)\n")
    print("| renderer | frames/s | compute latency p50 / p95 ms | algorithmic latency bound ms |\n|---|---|---|---|")
    avatar = prepare_avatar(args.video, a2e.face_model, None, cache, progress=False)
    fast = {name: r for name, r in variants.items() if name != "paper-size"}  # the paper-size renderer is ~1 fps on a CPU
    for name, renderer in fast.items():
        session = RealtimeSession(a2e, renderer, avatar, args.device, features="streaming", block=20, lookahead=26)
        r = simulate(session, voice, 40, pace=False, buffer_ms=0)
        print(f"| {name} | {r['fps']:.1f} | {r['compute_p50_ms']:.0f} / {r['compute_p95_ms']:.0f} | {r['algorithmic_bound_ms']:.0f} |")

    print("\n## reference features cached vs encoded with every batch (renderer step, batch 8)\n")
    print("| renderer | cached ms/frame | uncached ms/frame | speed-up |\n|---|---|---|---|")
    idx = np.flatnonzero(avatar.has_face)[:8]
    crops, coeffs = avatar.crops(idx), {k: v[idx] for k, v in avatar.coeffs.items()}
    exp = torch.from_numpy(coeffs["exp"])
    ref_crop = avatar.crops(np.array([avatar.reference_index]))[0]
    for name, renderer in variants.items():
        ms = []
        for cache_ref in (True, False):
            cr = CropRenderer(renderer.net, renderer.image_size, renderer.mask, str(renderer.face_model.path), ref_crop, torch.device(args.device), cache_ref)
            ms.append(1000 * timed(lambda cr=cr: cr(crops, coeffs, exp), 2.0) / len(idx))
        print(f"| {name} | {ms[0]:.1f} | {ms[1]:.1f} | {ms[1] / ms[0]:.2f}× |")

    print("\n## ONNX Runtime (CPU) vs PyTorch eager\n")
    print("| graph | batch | eager ms | onnxruntime ms | speed-up |\n|---|---|---|---|---|")
    import onnxruntime as ort

    from lightning_modules.inference.export import RendererWithReference, example_inputs, export

    with tempfile.TemporaryDirectory() as tmp:
        for name, renderer in fast.items():
            out = Path(tmp) / name.replace(" ", "_")
            export(a2e, renderer, out)
            modules = {"a2e": a2e.net, "renderer": RendererWithReference(renderer.net)}
            for batch in (1, 8):
                inputs = example_inputs(a2e, renderer, batch)
                for graph in ("a2e", "renderer") if name == "demo checkpoint" else ("renderer",):
                    session = ort.InferenceSession(str(out / f"{graph}.onnx"), providers=["CPUExecutionProvider"])
                    wanted = {i.name for i in session.get_inputs()}
                    feed = {k: v.numpy() for k, v in inputs[graph].items() if k in wanted}
                    args_ = tuple(inputs[graph].values())
                    with torch.no_grad():
                        eager = timed(lambda f=modules[graph], x=args_: f(*x))
                    onnx_s = timed(lambda s=session, x=feed: s.run(None, x))
                    label = "A2E (one window)" if graph == "a2e" else f"renderer, {name}"
                    print(f"| {label} | {batch} | {1000 * eager:.2f} | {1000 * onnx_s:.2f} | {eager / onnx_s:.2f}× |")


if __name__ == "__main__":
    main()
