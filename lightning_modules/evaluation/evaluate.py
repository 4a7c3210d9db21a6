"""``python -m lightning_modules evaluate``: A2E -> renderer on a test shard set, scored like the paper's Table 2.

Two settings: **reconstruction** (each clip driven by its own audio, scored against its own
frames) and **cross-audio** (clip A driven by clip B's audio: the next clip in key order, a
pairing file, or one external wav). For every pair of A2E and renderer checkpoints given (several
of each = an ablation table, e.g. use_shape/use_history on/off or mask naive/learnable) it writes
``table.md`` and ``table.csv``, logs the values as ``eval/<setting>/<metric>`` metrics of the
renderer's MLflow run, and writes sample videos: generated crops pasted back into the source
video with the driving audio (mp4), also logged to MLflow.

``--baselines`` adds, in the reconstruction setting, two predictors that need no training, drawn under
the same mask and pasted the same way: the reference frame's lower face, and the source itself
blurred inside the mask (its low frequencies: roughly where the mouth is, not how it looks).
``--fitted`` adds, in the reconstruction setting, each renderer driven by the clip's own fitted
expressions instead of the A2E's: a perfect A2E, so that the row tells the renderer's share of the
error from the A2E's. Without ``--a2e`` only those rows (and the baselines) are made: a renderer on its own.

Runs on the device (the metrics' networks too) and, with ``--devices N`` (launched like ``fit``: this
command starts the other processes, or torchrun / srun start them), over N processes: the clips are
dealt to the ranks by frame count, each rank decodes and scores only its own, and every metric is
reduced across ranks, so the table is the one a single process writes. Metrics whose weights are
missing are left out of the default set and shown as "—"; asking for one explicitly without its
weights is an error.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import kornia
import numpy as np
import torch
from tqdm import tqdm

from datamodules.renderer_datamodule import RendererDataModule
from datamodules.renderer_frames import scale_camera, to_images, valid_frames
from datamodules.shard_stream import deal
from lightning_modules.a2e.inference import predict_expressions
from lightning_modules.a2e.module import A2EModule
from lightning_modules.evaluation.table_metrics import COLUMNS, LOWER_IS_BETTER, METRICS, SettingMetrics, default_metrics
from lightning_modules.inference.compose import redraw, to_crop_size
from lightning_modules.renderer.module import RendererModule
from lightning_modules.tracking.checkpoints import load_datamodule, load_module, resolve_checkpoint, run_of_checkpoint
from lightning_modules.tracking.run_logger import run_tracking_uri
from metrics.arcface import ArcFaceIdentity
from metrics.dlib_face import DlibFaces, to_uint8_hwc
from metrics.perceptual_similarity import LPIPS_NETS
from preprocess.audio_features import AudioFeatureConfig, build_audio_features
from preprocess.media import AUDIO_RATE, iter_frames, load_audio, write_mp4
from preprocess.schema import sample_frames

log = logging.getLogger(__name__)
SAMPLES_PER_FRAME = AUDIO_RATE // 25


@dataclass
class System:
    """One A2E + renderer pair under evaluation."""

    a2e: A2EModule | None  # None: the renderer on its own (fitted expressions only)
    renderer: RendererModule
    data: RendererDataModule
    label: str
    renderer_label: str
    run: dict[str, str] | None
    params: dict[str, Any]
    net: torch.nn.Module  # the generator evaluated: its weight average when it kept one, unless --no-ema


def load_system(a2e_ckpt: Path | None, renderer_ckpt: Path, shards: str, device: torch.device, ema: bool = True) -> System:
    try:
        a2e = load_module(A2EModule, a2e_ckpt, map_location=device).eval() if a2e_ckpt else None
        renderer = load_module(RendererModule, renderer_ckpt, map_location=device).eval()
    except TypeError as e:  # a checkpoint saved before networks were kept in the hyperparameters
        raise SystemExit(f"error: cannot rebuild the networks from {a2e_ckpt} / {renderer_ckpt} ({e}); retrain with this version") from e
    data = load_datamodule(RendererDataModule, renderer_ckpt, shards=shards, num_workers=0)
    runs = {k: run_of_checkpoint(p) or {} if p else {} for k, p in (("a2e", a2e_ckpt), ("renderer", renderer_ckpt))}
    names = {k: r.get("run_name") or Path(p).parent.name if p else "" for (k, r), p in zip(runs.items(), (a2e_ckpt, renderer_ckpt))}
    params = {
        "use_shape": a2e and a2e.net.use_shape, "use_history": a2e and a2e.net.use_history, "mask": data.hparams.mask,
        "blocks": renderer.net.blocks,
        "image_size": data.hparams.image_size,
    }
    generator = renderer.inference_net if ema else renderer.net
    data.masker.to(device)
    label = f"{names['a2e']} + {names['renderer']}" if a2e else names["renderer"]
    return System(a2e, renderer, data, label, names["renderer"], runs["renderer"] or None, params, generator)


# -- clips and pairings ---------------------------------------------------------------------------
def load_clips(data: RendererDataModule, splits: Sequence[str], max_clips: int | None) -> list[dict[str, Any]]:
    """Every usable clip of ``splits``, by key, without its frames (:func:`with_frames` decodes them where a clip is scored)."""
    clips = []
    for raw in (r for split in splits for r in data.raw_samples(split)):
        sample = data.decode(raw)
        if sample is None:
            continue
        if len(valid_frames(sample)) == 0:
            log.warning("skipping clip %s: no frame with a detected face", sample["__key__"])
            continue
        clips.append(sample)
        if max_clips and len(clips) >= max_clips:
            break
    if not clips:
        raise SystemExit(f"error: split(s) {', '.join(splits)} of {data.hparams.shards} have no usable clip")
    return sorted(clips, key=lambda c: c["__key__"])


def with_frames(clip: dict[str, Any]) -> dict[str, Any]:
    """The clip with its decoded frames [T, S, S, 3] (decoded again each time: the clips of a split need not fit in memory)."""
    return {**clip, "frames": sample_frames(clip)}


def cross_pairs(clips: list[dict[str, Any]], pairs_file: str | None) -> list[tuple[int, int]]:
    """(video clip, audio clip) indices: from the file (lines "video_key audio_key"), else each clip with the next."""
    index = {c["__key__"]: i for i, c in enumerate(clips)}
    if pairs_file:
        out = []
        for n, line in enumerate(Path(pairs_file).read_text().splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            keys = line.split()
            missing = [k for k in keys[:2] if k not in index]
            if len(keys) < 2 or missing:
                raise SystemExit(f"error: {pairs_file}:{n}: need 'video_key audio_key' of clips in the split; unknown {missing or keys}")
            out.append((index[keys[0]], index[keys[1]]))
        return out
    if len(clips) < 2:
        raise SystemExit("error: cross-audio needs at least 2 clips in the split (or --audio WAV)")
    return [(i, (i + 1) % len(clips)) for i in range(len(clips))]


def external_audio(path: str, clip: dict[str, Any]) -> dict[str, Any]:
    """A driving "clip" from a wav: its samples and features made as the shards' were."""
    samples = load_audio(Path(path))
    frames = len(samples) // SAMPLES_PER_FRAME
    name = clip["meta"]["audio_features"]["name"]
    try:
        extractor = build_audio_features(AudioFeatureConfig(name=name))
    except Exception as e:
        raise SystemExit(f"error: --audio needs the shards' audio features ({name!r}) on this machine: {e}") from e
    return {"__key__": Path(path).stem, "audio": samples, "audio_feats": extractor(samples, frames)}


# -- generation -----------------------------------------------------------------------------------
@torch.no_grad()
def generate(
    system: System, video: dict[str, Any], audio: dict[str, Any], batch: int, device: torch.device, fitted: bool = False
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, float]]:
    """Yield (first frame, generated crops, true crops, masks, seconds) for ``video`` driven by ``audio``.

    Crops are [n, 3, crop, crop] in [0, 1]: the renderer's output upsampled to the crop size and
    pasted into the true crop under the mask (see :func:`~lightning_modules.inference.compose.redraw`).
    ``fitted`` drives the renderer with the clip's own fitted expressions instead of the A2E's.
    """
    a2e, data = system.a2e, system.data
    c, crop, size = video["coeffs"], int(video["meta"]["crop_size"]), data.hparams.image_size
    frames = min(len(c["exp"]), len(audio["audio_feats"]) // 2)
    as_t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32)).to(device)  # noqa: E731
    sync(device)
    start = time.perf_counter()
    if fitted:
        exp_pred = as_t(c["exp"][:frames])
    else:
        rng = np.random.default_rng(0)
        history = c["exp"][rng.choice(len(c["exp"]), a2e.hparams.num_history, replace=len(c["exp"]) < a2e.hparams.num_history)]
        exp_pred = predict_expressions(
            a2e.net, as_t(audio["audio_feats"][: 2 * frames]), as_t(c["shape"][0]), as_t(history), a2e.hparams.window, a2e.hparams.inference_overlap
        )
    sync(device)
    a2e_seconds = time.perf_counter() - start
    reference = to_images(video["frames"][valid_frames(video)[:1]], size).to(device)
    for s in range(0, frames, batch):
        idx = np.arange(s, min(s + batch, frames))
        shape, pose = as_t(c["shape"][idx]), as_t(c["pose"][idx])
        camera = as_t(scale_camera(c["camera"][idx].astype(np.float32), crop, size))
        exp = exp_pred[idx]
        sync(device)
        start = time.perf_counter()
        source = to_images(video["frames"][idx], size).to(device)
        out, mask = redraw(system.net, data.masker, source, reference, shape, exp, as_t(c["exp"][idx]), pose, camera)
        sync(device)
        seconds = time.perf_counter() - start + a2e_seconds * len(idx) / frames
        real = unit_frames(video["frames"][idx]).to(device)
        fake, mask_crop = to_crop_size(out.add(1).div(2), mask, crop)
        yield s, (real * (1 - mask_crop) + fake.clamp(0, 1) * mask_crop), real, mask_crop, seconds


def unit_frames(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames [N, H, W, 3] -> float [N, 3, H, W] in [0, 1], the metrics' convention."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div(255)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- baselines that need no training -------------------------------------------------------------
BASELINES = {
    "reference": "baseline: reference frame's lower face",
    "blur": "baseline: source blurred in the mask",
}
BLUR_SIGMA = 0.04  # of the crop side: about the lip thickness in these crops, so the teeth and the lip line go


def baseline_crops(name: str, real: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A baseline's crops [n, 3, S, S]: the true crop outside ``mask``, the baseline's pixels inside it."""
    if name == "reference":
        inside = reference.expand_as(real)
    elif name == "blur":
        sigma = BLUR_SIGMA * real.shape[-1]
        k = 2 * math.ceil(3 * sigma) + 1
        inside = kornia.filters.gaussian_blur2d(real, (k, k), (sigma, sigma), border_type="replicate")
    else:
        raise ValueError(f"unknown baseline {name!r}; choose from {sorted(BASELINES)}")
    return real * (1 - mask) + inside * mask


# -- videos ---------------------------------------------------------------------------------------
def paste_back(video: dict[str, Any], crops: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Generated crops [T, S, S, 3] warped back into the clip's source video (the crops themselves when it is gone)."""
    meta = video["meta"]
    source = meta.get("source_path")
    if not source or not Path(source).is_file():
        log.warning("%s: source video %s not found; the sample video shows the crops", video["__key__"], source or "(none recorded)")
        return crops
    out = []
    for t, frame in enumerate(iter_frames(Path(source), meta["start"], meta["end"])):
        if t >= len(crops):
            break
        h, w = frame.shape[:2]
        inverse = cv2.invertAffineTransform(video["coeffs"]["crop"][t].astype(np.float64))
        patch = cv2.warpAffine(crops[t], inverse, (w, h), flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(masks[t], inverse, (w, h), flags=cv2.INTER_LINEAR)[..., None]
        out.append((frame * (1 - alpha) + patch * alpha).round().astype(np.uint8))
    return np.stack(out) if len(out) == len(crops) else crops


# -- the report -----------------------------------------------------------------------------------
def cell(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def no_face(row: dict[str, Any]) -> str:
    """Frames skipped by LMD (no face in the ground truth) and by CSIM, e.g. ``0 / 2`` (— when not measured)."""
    counts = [row.get("frames without a face"), row.get("CSIM frames skipped")]
    return " / ".join("—" if c is None else str(int(c)) for c in counts)


def switches(row: dict[str, Any]) -> str:
    """The ablation switches of a row's system (Tables 5–7), e.g. ``shape on, history off, mask learnable, blocks 2``."""
    p = row["params"]
    if not p:
        return ""
    on = lambda v: "on" if v else "off"  # noqa: E731
    a2e = f"shape {on(p['use_shape'])}, history {on(p['use_history'])}, " if p["use_shape"] is not None else ""
    return f"{a2e}mask {p['mask']}, blocks {p['blocks']}, {p['image_size']} px"


def write_tables(rows: list[dict[str, Any]], out: Path, notes: list[str]) -> str:
    header = ["system", "setting", *COLUMNS, "no-face frames", "switches"]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["system", "setting", *COLUMNS, "frames", "frames without a face", "CSIM frames skipped", "use_shape", "use_history", "mask", "blocks"])
        for r in rows:
            counts = (r.get(k) for k in ("frames", "frames without a face", "CSIM frames skipped"))
            w.writerow([r["system"], r["setting"], *(r.get(c) for c in COLUMNS), *counts, *(r["params"].get(k) for k in ("use_shape", "use_history", "mask", "blocks"))])
    arrows = {c: f"{c} {'↓' if c in LOWER_IS_BETTER else '↑'}" if c != "Sync conf" else c for c in COLUMNS} | {"Sharpness": "Sharpness →1"}
    lines = [
        "| " + " | ".join(["system", "setting", *(arrows[c] for c in COLUMNS), "no-face frames", "switches"]) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join([r["system"], r["setting"], *(cell(r.get(c)) for c in COLUMNS), no_face(r), switches(r)]) + " |" for r in rows),
    ]
    markdown = "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"
    (out / "table.md").write_text(markdown)
    return markdown


def metric_key(column: str) -> str:
    """MLflow name of a table column: ``M-LMD`` -> ``m_lmd``, ``ms/frame`` -> ``ms_per_frame``."""
    return column.lower().replace("/", "_per_").replace("-", "_").replace(" ", "_")


def log_to_mlflow(system: System, rows: list[dict[str, Any]], out: Path, videos: list[Path], prefix: str) -> str | None:
    if not system.run or not system.run.get("run_id"):
        log.warning("%s: the renderer checkpoint names no MLflow run; results are in %s only", system.label, out)
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(run_tracking_uri(system.run))
    run_id = system.run["run_id"]
    stamp = int(time.time() * 1000)
    for r in rows:
        for c in COLUMNS:
            v = r.get(c)
            if v is not None and not math.isnan(v):
                key = f"{prefix}{r.get('mlflow_prefix', '')}{r['setting']}/{metric_key(c)}"
                client.log_metric(run_id, key, v, timestamp=stamp, step=0)
    for f in ("table.md", "table.csv"):
        client.log_artifact(run_id, str(out / f), "eval")
    for v in videos:
        client.log_artifact(run_id, str(v), "eval/videos")
    return f"{system.run['experiment']} / {system.run['run_name']} ({run_id})"


# -- calibration ----------------------------------------------------------------------------------
def moved(frames: np.ndarray, dx: int) -> np.ndarray:
    """Frames [T, H, W, 3] moved right by ``dx`` whole pixels, the uncovered columns repeating the edge."""
    out = np.roll(frames, dx, axis=2)
    out[:, :, :dx] = frames[:, :, :1]
    return out


def calibration_rows(
    clips: list[dict[str, Any]], mine: list[int], chosen: list[str], faces: DlibFaces | None, identity: ArcFaceIdentity | None,
    args: argparse.Namespace, device: torch.device,
) -> list[dict[str, Any]]:
    """The metrics on real frames with known answers: each clip against itself (LMD 0, CSIM 1, LPIPS 0), against
    itself moved 3 px (LMD 3), and against the next clip's frames (another speaker: CSIM lower); this rank's clips."""
    cases = {
        "itself": lambda i, frames: (frames, frames),
        "itself moved 3 px": lambda i, frames: (moved(frames, 3), frames),
    }
    if len(clips) > 1:
        cases["next clip"] = lambda i, frames: (sample_frames(clips[(i + 1) % len(clips)]), frames)
    rows = []
    for name, case in cases.items():
        sm = SettingMetrics(
            True, [m for m in chosen if m in ("lmd", "csim", "quality", "lpips")], faces, lpips_weights=args.lpips_weights,
            lpips_net=args.lpips_net, identity_every=args.identity_every, identity=identity, device=device,
        )
        for i in mine:
            fake, real = case(i, sample_frames(clips[i]))
            t = min(len(fake), len(real))
            for s in range(0, t, args.batch_size):
                part = slice(s, min(s + args.batch_size, t))
                sm.update(unit_frames(fake[part]).to(device), unit_frames(real[part]).to(device), None, None, s)
        rows.append({"system": "ground truth (calibration)", "setting": f"vs {name}", "params": {}, **sm.row(), "ms/frame": None})
    return rows


# -- the command ----------------------------------------------------------------------------------
def launch(args: argparse.Namespace) -> Any:
    """The processes of this evaluation: ``--devices`` × ``--num-nodes`` ranks (started here, or by torchrun / srun), one when both are 1."""
    from lightning.fabric import Fabric

    accelerator = "cuda" if str(args.device).startswith("cuda") else "cpu"
    many = args.devices * args.num_nodes > 1
    fabric = Fabric(accelerator=accelerator, devices=args.devices, num_nodes=args.num_nodes, strategy="ddp" if many else "auto", precision="32-true")
    fabric.launch()
    return fabric


def gather(items: list[Any]) -> list[Any]:
    """Every rank's ``items``, concatenated in rank order (the list itself in one process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return items
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def evaluate(args: argparse.Namespace) -> str | None:
    """Write the tables (rank 0); the markdown table and where it was logged (None on the other ranks)."""
    fabric = launch(args)
    device, rank, world = fabric.device, fabric.global_rank, fabric.world_size
    chosen = args.metrics or default_metrics(args.lpips_weights, args.fid_weights, args.lpips_net)
    faces = DlibFaces() if {"lmd", "csim"} & set(chosen) else None
    identity = ArcFaceIdentity(args.arcface_weights, faces, str(device)) if args.arcface_weights and "csim" in chosen else None
    out = Path(args.out)
    all_rows, notes, where, calibrated = [], [], [], False
    with_fitted: set[Path] = set()
    for a2e_ckpt in map(resolve_checkpoint, args.a2e) if args.a2e else [None]:
        for renderer_ckpt in map(resolve_checkpoint, args.renderer):
            system = load_system(a2e_ckpt, renderer_ckpt, args.shards, device, ema=not args.no_ema)
            clips = load_clips(system.data, args.split, args.max_clips)
            mine = deal([len(c["coeffs"]["exp"]) for c in clips], world)[rank]  # by frame count: every rank about as long
            if system.a2e is None or "cross-audio" not in args.settings:  # the renderer alone: fitted expressions, no audio
                drivers = []
            elif args.audio:  # featurised once, as the shards' audio was
                spoken = external_audio(args.audio, clips[0])
                drivers = [(i, spoken) for i in range(len(clips))]
            else:
                drivers = [(i, clips[j]) for i, j in cross_pairs(clips, args.pairs)]
            settings = {"reconstruction": [(i, clips[i]) for i in range(len(clips))], "cross-audio": drivers}
            settings = {k: v for k, v in settings.items() if k in args.settings and v}
            rows, videos = [], []
            folder = out / system.label.replace(" + ", "__").replace("/", "-")
            for setting, pairs in settings.items():
                metrics = lambda recon=setting == "reconstruction": SettingMetrics(  # noqa: E731
                    recon, chosen, faces, lpips_weights=args.lpips_weights, fid_weights=args.fid_weights,
                    lpips_net=args.lpips_net, identity_every=args.identity_every, fd_every=args.fd_every, identity=identity, device=device,
                )
                sm = metrics() if system.a2e is not None else None  # without an A2E only the fitted row (below) is the renderer's
                # the baselines once, beside the first system and under its region (the union of the fitted and its A2E's
                # mouth), so that they are scored over the pixels that system redraws; no network of theirs depends on the A2E
                baselines = {b: metrics() for b in args.baselines} if setting == "reconstruction" and not all_rows else {}
                # the fitted-β row once per renderer: it does not depend on the A2E either
                fitted = metrics() if args.fitted and setting == "reconstruction" and renderer_ckpt not in with_fitted else None
                ours = [(n, i, driver) for n, (i, driver) in enumerate(pairs) if i in mine]
                for n, i, driver in tqdm(ours, desc=f"{setting} ({system.label})", unit="clip", disable=rank != 0):
                    video = with_frames(clips[i])
                    reference = unit_frames(video["frames"][valid_frames(video)[:1]]).to(device)
                    crops, masks = [], []
                    # without an A2E the renderer is driven by the fitted expressions, and only the baselines and that row are scored
                    for first, fake, real, mask, seconds in generate(system, video, driver, args.batch_size, device, fitted=system.a2e is None):
                        (sm or fitted).update(fake, real, reference, mask, first, seconds)
                        for b, bm in baselines.items():
                            bm.update(baseline_crops(b, real, reference, mask), real, reference, mask, first, 0.0)
                        if n < args.videos:
                            crops.append(to_uint8_hwc(fake))
                            masks.append(mask[:, 0].cpu().numpy())
                    if fitted is not None and system.a2e is not None:
                        for first, fake, real, mask, seconds in generate(system, video, driver, args.batch_size, device, fitted=True):
                            fitted.update(fake, real, reference, mask, first, seconds)
                    if n < args.videos:  # the first --videos pairs, written by the rank that scored them
                        frames = paste_back(video, np.concatenate(crops), np.concatenate(masks))
                        path = folder / "videos" / f"{setting}_{video['__key__']}_by_{driver['__key__']}.mp4"
                        videos.append(write_mp4(path, frames, driver["audio"][: len(frames) * SAMPLES_PER_FRAME]))
                # every rank computes every row: each metric reduces its state over the ranks there
                if sm is not None:
                    rows.append({"system": system.label, "setting": setting, "params": system.params, **sm.row()})
                for b, bm in baselines.items():
                    rows.append({"system": BASELINES[b], "setting": setting, "params": {}, **bm.row(), "ms/frame": None, "mlflow_prefix": f"baseline-{b}/"})
                if fitted is not None:
                    rows.append({"system": f"fitted β (a perfect A2E) + {system.renderer_label}", "setting": setting, "params": {}, **fitted.row(),
                                 "ms/frame": None, "mlflow_prefix": "fitted/"})
                    with_fitted.add(renderer_ckpt)
            videos = sorted(gather(videos))
            if rank == 0:
                write_tables(rows, folder, [])
                prefix = "eval/" if len(args.a2e or [None]) == 1 else f"eval/{Path(a2e_ckpt).parent.name}/"
                if not args.no_mlflow and (run := log_to_mlflow(system, rows, folder, videos, prefix)):
                    where.append(run)
            all_rows += rows
            if args.calibration and not calibrated:
                all_rows += calibration_rows(clips, mine, chosen, faces, identity, args, device)
                calibrated = True
    if rank != 0:
        return None
    missing = [m for m in METRICS if m not in chosen]
    if missing:
        # the default set leaves out only what lacks weights; an explicit --metrics leaves out the rest by choice
        why = "not asked for" if args.metrics else "weights not found: run 'make weights' (or pass --lpips-weights / --fid-weights)"
        notes.append(f"not computed: {', '.join(missing)} ({why})")
    if "lpips" in chosen:
        backbone = "AlexNet (the paper's)" if args.lpips_net == "alex" else "VGG16"
        notes.append(f"LPIPS: {backbone} ImageNet convolutions + LPIPS v0.1 heads")
    if "fid" in chosen:
        notes.append("FID: TF Inception 2015-12-05 pool features (the reference FID network), frames resized to 299 px with TF1 bilinear")
    notes.append(f"CSIM network: {'ArcFace ' + args.arcface_weights if identity else 'dlib 128-d face recognition ResNet'}")
    notes.append("Sync conf: not implemented (needs SyncNet's syncnet_v2.model, which is not available offline)")
    if "sharpness" in chosen:
        notes.append("Sharpness: Laplacian energy of the pasted region over the same region of the source frame (1 = as sharp; below 1 = softer)")
    notes.append("cross-audio has no ground truth: LMD, LPIPS, SSIM and PSNR are reconstruction-only; CSIM is against the reference frame")
    notes.append(f"split {'+'.join(args.split)} of {args.shards}, {device.type} x {world} process{'es' if world > 1 else ''}; "
                 f"renderer weights: {'the last ones' if args.no_ema else 'their moving average where kept'}; FD on a few hundred frames is a small-sample estimate")
    if args.fd_every > 1 or args.identity_every > 1:
        notes.append(f"FID/FD_effnet on one frame in {args.fd_every}, CSIM on one frame in {args.identity_every}")
    table = write_tables(all_rows, out, notes)
    (out / "runs.json").write_text(json.dumps(where, indent=1))
    return table + ("\nMLflow: metrics eval/<setting>/<metric> and artifacts eval/ of " + "; ".join(where) + "\n" if where else "")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lightning_modules evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a2e", nargs="+", help="A2E checkpoint(s) written by `fit`: .ckpt files or folders (their newest last.ckpt); "
                                            "without one, the renderers alone (needs --fitted)")
    p.add_argument("--renderer", nargs="+", required=True, help="renderer checkpoint(s), likewise")
    p.add_argument("--shards", required=True, help="shard folder (python -m preprocess shard ...)")
    p.add_argument("--split", nargs="+", default=["test"], help="split(s) to evaluate (default: test)")
    cross = p.add_mutually_exclusive_group()
    cross.add_argument("--pairs", help="cross-audio pairing file: lines 'video_key audio_key' (default: each clip with the next)")
    cross.add_argument("--audio", help="one external wav driving every clip in the cross-audio setting")
    p.add_argument("--settings", nargs="+", choices=("reconstruction", "cross-audio"), default=["reconstruction", "cross-audio"],
                   help="which settings to score (default both; cross-audio needs an A2E and two clips or --audio)")
    p.add_argument("--metrics", nargs="+", choices=METRICS, help="default: every metric whose weights are on this machine")
    p.add_argument("--lpips-net", choices=sorted(LPIPS_NETS), default="alex", help="LPIPS backbone (default alex, the paper's)")
    p.add_argument("--lpips-weights", help="the backbone's ImageNet convolutions, .safetensors or torchvision .pth (default: the weights store, make weights)")
    p.add_argument("--fid-weights", help="FID's converted TF Inception .safetensors (default: the weights store, make weights)")
    p.add_argument("--arcface-weights", help="ArcFace IResNet .pth for CSIM (default: dlib's 128-d identity network)")
    p.add_argument("--identity-every", type=int, default=1, help="CSIM on every N-th frame (dlib's identity network is ~150 ms/frame on CPU)")
    p.add_argument("--fd-every", type=int, default=1, help="FID and FD_effnet on every N-th frame (Inception is the costliest metric on a CPU; neighbouring frames add little)")
    p.add_argument("--videos", type=int, default=2, help="sample videos per setting")
    p.add_argument("--max-clips", type=int, help="evaluate at most this many clips")
    p.add_argument("--batch-size", type=int, default=16, help="frames per renderer call")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu (the metrics' networks run there too)")
    p.add_argument("--devices", type=int, default=1, help="processes on this machine (GPUs with --device cuda): the clips are dealt among them")
    p.add_argument("--num-nodes", type=int, default=1, help="machines, under torchrun or srun (one process per device each)")
    p.add_argument("--no-ema", action="store_true", help="the renderer's last weights instead of their moving average (when it was trained with ema_decay)")
    p.add_argument("--out", default="evaluation", help="output folder (tables, videos)")
    p.add_argument("--baselines", nargs="*", choices=sorted(BASELINES), default=[],
                   help="reconstruction-setting rows for predictors that need no training: 'reference' (the reference frame's lower face) and 'blur' (the source blurred in the mask)")
    p.add_argument("--fitted", action="store_true",
                   help="a reconstruction row per renderer driven by each clip's own fitted expressions instead of the A2E's (a perfect A2E)")
    p.add_argument("--calibration", action="store_true", help="add rows scoring the real frames against themselves, moved 3 px, and another clip")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to the renderer's MLflow run")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.a2e and not args.fitted:
        parser.error("without --a2e there is nothing to drive the renderer from audio: pass --a2e CKPT, or --fitted to score the renderer alone")
    if (table := evaluate(args)) is not None:
        print(table)


if __name__ == "__main__":
    main()
