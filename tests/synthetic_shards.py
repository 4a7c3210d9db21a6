"""Tiny synthetic A2E shards: learnable, fast, and made with the real shard writer and schema."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from datamodules.face_masks import fill_polygons
from preprocess.face_model import FaceModel
from preprocess.media import KEYFRAME_INTERVAL, SAMPLES_PER_FRAME, encode_mp4, wav_bytes
from preprocess.schema import SCHEMA_VERSION, encode_sample, make_key
from preprocess.shard_writer import SplitShardWriter

AUDIO_NAME = "synthetic"


def synthetic_clip(rng: np.random.Generator, frames: int, audio_dim: int, mixing: np.ndarray, fm: FaceModel) -> dict[str, np.ndarray]:
    """Smooth random audio features; expressions a fixed linear function of them plus a per-clip offset."""
    rows = 2 * frames
    audio = np.cumsum(rng.normal(0, 0.3, (rows, audio_dim)), 0)
    audio = (audio - audio.mean(0)) / (audio.std(0) + 1e-6)
    per_frame = audio.reshape(frames, 2, audio_dim).mean(1)
    exp = per_frame @ mixing + rng.normal(0, 0.3, fm.exp_dim)
    shape = np.repeat(rng.normal(0, 1, (1, fm.shape_dim)), frames, 0)
    pose = np.zeros((frames, 6))
    pose[:, 5] = 500.0
    camera = np.tile([2.0, 128.0, 128.0], (frames, 1))
    return {"audio": audio, "exp": exp, "shape": shape, "pose": pose, "camera": camera}


def draw_faces(fm: FaceModel, c: dict[str, np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 frames [T, size, size, 3]: the projected face oval on a per-clip background, the mouth opening with β."""
    pts = fm(*(torch.from_numpy(c[k]).float() for k in ("shape", "exp", "pose", "camera")))
    face = fill_polygons(pts[:, fm.index_sets["face_oval"]], size)[:, 0, ..., None]
    mouth = fill_polygons(pts[:, fm.index_sets["inner_mouth"]], size)[:, 0, ..., None]
    shade = torch.linspace(0.7, 1.0, size).view(1, size, 1, 1)  # vertical gradient: not a flat colour
    background, skin = torch.from_numpy(rng.uniform(0, 255, (2, 3))).float()
    img = background * (1 - face) + skin * shade * face
    img = img * (1 - mouth) + torch.tensor([90.0, 10.0, 20.0]) * mouth
    return img.clamp(0, 255).round().byte().numpy()


def write_synthetic_shards(
    root: Path, clips: dict[str, int] | None = None, frames: int = 40, audio_dim: int = 16, maxcount: int = 2, seed: int = 0, short_clip: bool = False,
    image_size: int | None = None, schema: int = SCHEMA_VERSION,
) -> Path:
    """Shards ``<split>-000-<n>.tar`` in ``root`` plus a manifest.json; returns root.

    ``image_size`` also draws the faces into ``frames.mp4`` (renderer tests), with cameras that
    fit the face into the crop; otherwise the video member is empty (A2E reads no pixels). ``schema`` 1
    writes the videos as shards of that schema were (x264's default keyframe interval).
    """
    clips = clips or {"train": 4, "val": 2, "test": 2}
    rng = np.random.default_rng(seed)
    fm = FaceModel()
    mixing = rng.normal(0, 1 / np.sqrt(audio_dim), (audio_dim, fm.exp_dim))
    writer = SplitShardWriter(root, rank=0, maxcount=maxcount, maxsize=1e9)
    splits = {}
    for split, n in clips.items():
        total = 0
        for i in range(n):
            t = frames // 3 if short_clip and i == 0 else frames
            c = synthetic_clip(rng, t, audio_dim, mixing, fm)
            video = b""
            if image_size:
                c["pose"][:, 5] = 0.0
                c["camera"] = np.tile([0.8 * image_size / 180, image_size / 2, image_size / 2], (t, 1))
                c["shape"] *= 0.3
                video = encode_mp4(list(draw_faces(fm, c, image_size, rng)), crf=10, keyframe_interval=KEYFRAME_INTERVAL if schema >= 2 else None)
            key = make_key("syn", split, i)
            coeffs = {
                "shape": c["shape"].astype(np.float32), "exp": c["exp"].astype(np.float32), "pose": c["pose"].astype(np.float32),
                "camera": c["camera"].astype(np.float32), "lmk": np.zeros((t, 478, 2), np.float32),
                "crop": np.tile(np.eye(2, 3, dtype=np.float32), (t, 1, 1)), "valid": np.ones(t, bool),
            }
            meta = {
                "schema_version": schema,
                "key": key, "num_frames": t, "split": split, "speaker": f"{split}{i}", "crop_size": image_size or 64,
                "face_model": {"full_name": fm.full_name, "shape_dim": fm.shape_dim, "exp_dim": fm.exp_dim},
                "audio_features": {"name": AUDIO_NAME, "dim": audio_dim, "rate": 50, "rows_per_frame": 2},
            }
            if schema >= 2:
                meta["frames"] = {"codec": "h264", "keyframe_interval": KEYFRAME_INTERVAL}
            audio = np.zeros(t * SAMPLES_PER_FRAME, np.float32)
            writer.write(split, encode_sample(key, video, wav_bytes(audio), c["audio"].astype(np.float16), coeffs, meta))
            total += t
        splits[split] = {"samples": n, "frames": total}
    writer.close()
    (root / "manifest.json").write_text(json.dumps({"splits": splits}))
    return root
