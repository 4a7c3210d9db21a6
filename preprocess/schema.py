"""The shard contract (ARCHITECTURE §3): one WebDataset sample = one clip.

Writers build samples with :func:`encode_sample`; readers decode with :func:`decode_sample`
and call :func:`check_compatible` before training on a shard set.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import numpy as np

from preprocess.errors import ConfigError
from preprocess.media import KEYFRAME_INTERVAL, decode_frames, decode_mp4, read_wav

SCHEMA_VERSION = 2
"""2: frames.mp4 has a keyframe every ``meta["frames"]["keyframe_interval"]`` frames and no B-frames, so a
reader decodes only the frames it uses (:func:`sample_frames`). 1: x264's default GOP (a keyframe every 250
frames); ``python -m preprocess reencode`` turns 1 into 2 without redoing landmarks and fits."""
FRAME_READERS_NEED = 2
"""The oldest schema whose frames the training readers accept (older ones would cost a whole clip's decode per image)."""
MEMBERS = ("frames.mp4", "audio.wav", "audio_feats.npy", "coeffs.npz", "meta.json")
COEFF_KEYS = ("shape", "exp", "pose", "camera", "lmk", "crop", "valid")
"""coeffs.npz arrays, all with T rows: ``shape`` [T, Ds] α, ``exp`` [T, De] β, ``pose`` [T, 6]
axis-angle + translation (mm), ``camera`` [T, 3] (px per mm, cx, cy), ``lmk`` [T, 478, 2]
MediaPipe landmarks in crop pixels, ``crop`` [T, 2, 3] affine source px -> crop px,
``valid`` [T] bool (False: face not seen, landmarks interpolated)."""


def make_key(*parts: str | int) -> str:
    """Stable sample key: parts joined by "_"; anything but letters, digits, "_" and "-" becomes "-"."""
    return "_".join(re.sub(r"[^A-Za-z0-9_-]+", "-", str(p)).strip("-_") for p in parts)


def clip_key_of(key: str) -> str:
    """The clip key of a segment's sample or ledger key (``make_key(clip_key, "s<i>")``, see ``ClipProcessor._seg_key``)."""
    return re.sub(r"_s[0-9]+$", "", key)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def encode_sample(key: str, frames_mp4: bytes, audio_wav: bytes, feats: np.ndarray, coeffs: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, Any]:
    """A WebDataset sample dict (member name -> bytes) for one clip."""
    if "." in key:
        raise ValueError(f"sample key must not contain dots: {key!r}")
    missing = set(COEFF_KEYS) - set(coeffs)
    if missing:
        raise ValueError(f"coeffs.npz is missing {sorted(missing)}")
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: coeffs[k] for k in COEFF_KEYS})
    return {
        "__key__": key,
        "frames.mp4": frames_mp4,
        "audio.wav": audio_wav,
        "audio_feats.npy": _npy(feats.astype(np.float16)),
        "coeffs.npz": buf.getvalue(),
        "meta.json": json.dumps(meta, sort_keys=True).encode(),
    }


def decode_sample(sample: dict[str, Any], frames: bool = True) -> dict[str, Any]:
    """Decode the members of one raw sample (bytes) into arrays; ``frames=False`` decodes no video frame
    (``video`` keeps the mp4 bytes for :func:`sample_frames`)."""
    out: dict[str, Any] = {"__key__": sample["__key__"], "meta": json.loads(sample["meta.json"]), "video": sample["frames.mp4"]}
    with np.load(io.BytesIO(sample["coeffs.npz"]), allow_pickle=False) as z:
        out["coeffs"] = {k: z[k] for k in COEFF_KEYS}
    out["audio_feats"] = np.load(io.BytesIO(sample["audio_feats.npy"]), allow_pickle=False)
    out["audio"], out["audio_rate"] = read_wav(sample["audio.wav"])
    if frames:
        out["frames"] = decode_mp4(sample["frames.mp4"])
    return out


def sample_frames(sample: dict[str, Any], indices: Any = None) -> np.ndarray:
    """uint8 RGB crops [len(indices), S, S, 3] of a decoded sample's frames ``indices``, decoding only what they need
    (None: every frame, in one pass)."""
    frames = sample["meta"].get("frames", {})
    if frames.get("damaged"):  # marked by python -m preprocess reencode
        raise ValueError(f"frames.mp4 does not decode ({frames['damaged']})")
    if indices is None:
        return decode_mp4(sample["video"])
    return decode_frames(sample["video"], indices, frames.get("keyframe_interval") or KEYFRAME_INTERVAL)


def validate_sample(d: dict[str, Any]) -> list[str]:
    """Contract violations of a decoded sample (empty list = conforms)."""
    problems = []
    meta, c = d["meta"], d["coeffs"]
    t = int(meta["num_frames"])
    for k in COEFF_KEYS:
        if len(c[k]) != t:
            problems.append(f"coeffs.{k} has {len(c[k])} rows, meta says T={t}")
    if c["valid"].dtype != np.bool_:
        problems.append("coeffs.valid is not bool")
    if c["pose"].shape[1:] != (6,) or c["crop"].shape[1:] != (2, 3) or c["lmk"].shape[2:] != (2,):
        problems.append("pose/crop/lmk trailing shapes are not (6,), (2, 3), (K, 2)")
    f = d["audio_feats"]
    if f.dtype != np.float16 or f.shape != (2 * t, meta["audio_features"]["dim"]):
        problems.append(f"audio_feats {f.dtype} {f.shape}, expected float16 {(2 * t, meta['audio_features']['dim'])}")
    if d["audio_rate"] != 16000 or len(d["audio"]) != t * 640:
        problems.append(f"audio {len(d['audio'])} samples at {d['audio_rate']} Hz, expected {t * 640} at 16000")
    if "frames" in d:
        fr = d["frames"]
        size = meta["crop_size"]
        if fr.shape != (t, size, size, 3):
            problems.append(f"frames {fr.shape}, expected {(t, size, size, 3)}")
    return problems


class ShardMismatchError(ConfigError, ValueError):
    """Shards made with another face model, audio feature extractor or schema than the reader needs."""


def check_compatible(meta: dict[str, Any], face_model: str, audio_features: str | None, frames: bool = False, folder: str = "DIR") -> None:
    """Stop with a clear message when a shard does not match the reader's configuration (None: any audio features).

    ``frames``: the reader decodes frames.mp4, which must be of schema :data:`FRAME_READERS_NEED` or newer
    (``folder``, the shards' folder, goes into the message's command).
    """
    have_fm, have_af = meta["face_model"]["full_name"], meta["audio_features"]["name"]
    if have_fm != face_model or (audio_features is not None and have_af != audio_features):
        raise ShardMismatchError(
            f"sample {meta.get('key')} was made with face model {have_fm!r} and audio features {have_af!r}, "
            f"but the config asks for {face_model!r} and {audio_features!r}: regenerate the shards "
            "(python -m preprocess shard ...) or change the config to match"
        )
    version = int(meta.get("schema_version", 1))
    if version > SCHEMA_VERSION or (frames and version < FRAME_READERS_NEED):
        what = "update this checkout" if version > SCHEMA_VERSION else f"convert the folder (landmarks and fits are kept): python -m preprocess reencode --shards {folder}"
        raise ShardMismatchError(f"sample {meta.get('key')} has shard schema {version}; this reader needs {FRAME_READERS_NEED}..{SCHEMA_VERSION}: {what}")
