"""One clip in, samples (one per face-track segment) or a ClipError out."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import closing
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from preprocess.audio_features import FEATURE_RATE, ROWS_PER_FRAME, build_audio_features
from preprocess.config import ShardJob
from preprocess.datasets import Clip
from preprocess.errors import ClipError
from preprocess.face_fit import FaceFitter
from preprocess.face_model import FaceModel
from preprocess.face_track import (
    Segment,
    Track,
    apply_crop,
    crop_boxes,
    crop_matrix,
    track_face,
)
from preprocess.landmarks import FaceLandmarker
from preprocess.media import (
    AUDIO_RATE,
    SAMPLES_PER_FRAME,
    VIDEO_FPS,
    MediaInfo,
    encode_mp4,
    iter_frames,
    load_audio,
    probe,
    wav_bytes,
)
from preprocess.schema import SCHEMA_VERSION, encode_sample, make_key

_VERSIONED = ("mediapipe", "av", "numpy", "torch", "webdataset")


def package_versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


@dataclass
class ClipResult:
    """What a worker sends back: samples to write, failed segments, per-stage seconds."""

    clip: Clip
    samples: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (split, sample)
    failures: list[dict[str, str]] = field(default_factory=list)
    frames: int = 0
    fit_err_px: list[float] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))


def landmarks_to_crop(lmk: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks [T, K, 3] from source to crop pixels (z scaled alike) and the [T, 2, 3] crop matrices."""
    mats = np.stack([crop_matrix(b, size) for b in boxes])
    k = mats[:, 0, 0]
    xy = np.einsum("tij,tkj->tki", mats[:, :, :2], lmk[..., :2]) + mats[:, None, :, 2]
    return np.concatenate([xy, lmk[..., 2:] * k[:, None, None]], -1), mats


class ClipProcessor:
    """Holds the per-process models (landmarker, face model, audio features) and processes clips."""

    def __init__(self, job: ShardJob) -> None:
        self.job = job
        self.face_model = FaceModel(job.face_model)
        self.fitter = FaceFitter(self.face_model, job.fit)
        self.landmarker = FaceLandmarker(job.landmarker_task, max_faces=job.max_faces)
        self.audio = build_audio_features(job.audio)
        self.config_hash = job.processing_hash(self.face_model.full_name)
        self.versions = package_versions()

    def landmarks(self, clip: Clip, res: ClipResult) -> tuple[list[list[np.ndarray]], MediaInfo]:
        """Decode pass 1: faces per frame at 25 fps (landmarks only; frames are not kept)."""
        info = probe(Path(clip.path), Path(clip.audio_path) if clip.audio_path else None)
        if not info.has_audio:
            raise ClipError("audio", "no audio stream; every clip needs its speech (give the audio file or skip this video)")
        self.landmarker.reset()
        faces = []
        t = time.perf_counter()
        for frame in iter_frames(Path(clip.path), clip.start, clip.end):
            decoded = time.perf_counter()
            faces.append(self.landmarker(frame))
            res.seconds["decode"] += decoded - t
            t = time.perf_counter()
            res.seconds["landmarks"] += t - decoded
        if not faces:
            raise ClipError("decode", "no video frames could be decoded")
        return faces, info

    def __call__(self, clip: Clip) -> ClipResult:
        res = ClipResult(clip)
        job = self.job
        faces, info = self.landmarks(clip, res)

        t = time.perf_counter()
        audio = load_audio(Path(clip.audio_path or clip.path), clip.start, clip.end, same_container=clip.audio_path is None)
        res.seconds["audio_decode"] = time.perf_counter() - t
        n = len(faces)
        if len(audio) < (n - 2) * SAMPLES_PER_FRAME:  # audio ends early: keep the part with sound
            n = len(audio) // SAMPLES_PER_FRAME
        if n == 0:
            raise ClipError("audio", f"audio lasts {len(audio) / AUDIO_RATE:.3f} s, less than one video frame")
        audio = np.pad(audio, (0, max(0, n * SAMPLES_PER_FRAME - len(audio))))[: n * SAMPLES_PER_FRAME]

        track = track_face(faces[:n], info.width, info.height, job.track)
        min_frames = max(1, int(round(job.min_seconds * VIDEO_FPS)))
        segments: list[tuple[int, Segment]] = []
        for i, seg in enumerate(track.segments):
            if seg.end - seg.start >= min_frames:
                segments.append((i, seg))
            else:
                res.failures.append({"key": self._seg_key(clip, i, len(track.segments)), "path": clip.path, "stage": "length",
                                     "reason": f"{seg.end - seg.start} frames with a face, fewer than min_seconds={job.min_seconds}"})
        if not segments:
            raise ClipError("length", f"no stretch of at least {min_frames} frames with a face (clip has {n} frames)")

        # crop boxes and coefficients per segment
        size = job.crop.size
        plans = []
        for i, seg in segments:
            t = time.perf_counter()
            boxes = crop_boxes(seg.landmarks, job.crop)
            lmk, mats = landmarks_to_crop(seg.landmarks, boxes, size)
            fit = self.fitter(lmk, seg.valid, size)
            res.seconds["fit"] += time.perf_counter() - t
            plans.append((i, seg, boxes, lmk, mats, fit))

        # decode pass 2: cut the crops
        t = time.perf_counter()
        crops: list[list[np.ndarray]] = [[] for _ in plans]
        owner = {}
        for j, (_, seg, *_rest) in enumerate(plans):
            for f in range(seg.start, seg.end):
                owner[f] = j
        t_crop = 0.0
        with closing(iter_frames(Path(clip.path), clip.start, clip.end)) as decoded_frames:
            for f, frame in enumerate(decoded_frames):
                if f >= n:
                    break
                j = owner.get(f)
                if j is not None:
                    tc = time.perf_counter()
                    seg, boxes = plans[j][1], plans[j][2]
                    crops[j].append(apply_crop(frame, boxes[f - seg.start], size))
                    t_crop += time.perf_counter() - tc
        res.seconds["decode"] += time.perf_counter() - t - t_crop
        res.seconds["crop"] = t_crop

        for j, (i, seg, _boxes, lmk, mats, fit) in enumerate(plans):
            key = self._seg_key(clip, i, len(track.segments))
            frames = crops[j]
            if len(frames) != seg.end - seg.start:
                raise ClipError("decode", f"second decode gave {len(frames)} frames instead of {seg.end - seg.start}")
            t = time.perf_counter()
            mp4 = encode_mp4(frames, VIDEO_FPS, job.crf, keyframe_interval=job.keyframe_interval)
            res.seconds["encode"] += time.perf_counter() - t
            seg_audio = audio[seg.start * SAMPLES_PER_FRAME : seg.end * SAMPLES_PER_FRAME]
            t = time.perf_counter()
            feats = self.audio(seg_audio, len(frames))
            res.seconds["audio_features"] += time.perf_counter() - t
            coeffs = {"shape": fit["shape"], "exp": fit["exp"], "pose": fit["pose"], "camera": fit["camera"],
                      "lmk": lmk[..., :2].astype(np.float32), "crop": mats.astype(np.float32), "valid": seg.valid.astype(bool)}
            err = float(fit["err_px"][seg.valid].mean()) if seg.valid.any() else float("nan")
            meta = self._meta(clip, key, info, i, seg, track, err, kept=len(segments))
            res.samples.append((clip.split, encode_sample(key, mp4, wav_bytes(seg_audio), feats, coeffs, meta)))
            res.frames += len(frames)
            res.fit_err_px.append(err)
        return res

    @staticmethod
    def _seg_key(clip: Clip, i: int, count: int) -> str:
        return clip.key if count == 1 else make_key(clip.key, f"s{i}")

    def _meta(self, clip: Clip, key: str, info: MediaInfo, index: int, seg: Segment, track: Track, err: float, kept: int) -> dict[str, Any]:
        t = seg.end - seg.start
        return {
            "schema_version": SCHEMA_VERSION,
            "key": key,
            "clip_key": clip.key,
            "segment": index,
            "segments_total": len(track.segments),
            "segments_kept": kept,  # the rest were too short (ledger lines): a resumed run counts the clip done without them
            "dataset": clip.dataset,
            "speaker": clip.speaker,
            "video": clip.video,
            "clip": clip.clip,
            "split": clip.split,
            "source_path": clip.path,
            "source_audio_path": clip.audio_path,
            "source": {"width": info.width, "height": info.height, "fps": info.fps, "duration": info.duration,
                       "audio_rate": info.audio_rate, "audio_channels": info.audio_channels},
            "start": clip.start + seg.start / VIDEO_FPS,
            "end": clip.start + seg.end / VIDEO_FPS,
            "num_frames": t,
            "fps": VIDEO_FPS,
            "crop_size": self.job.crop.size,
            "frames": {"codec": "h264", "keyframe_interval": self.job.keyframe_interval},
            "audio_rate": AUDIO_RATE,
            "face_model": {"name": self.face_model.name, "version": self.face_model.version, "full_name": self.face_model.full_name,
                           "shape_dim": self.face_model.shape_dim, "exp_dim": self.face_model.exp_dim},
            "audio_features": {"name": self.audio.name, "dim": self.audio.dim, "rate": FEATURE_RATE, "rows_per_frame": ROWS_PER_FRAME},
            "faces": {"max_faces": track.max_faces, "frames_with_other_faces": track.frames_with_other_faces,
                      "valid_fraction": float(seg.valid.mean()), "bridged_frames": int((~seg.valid).sum())},
            "fit_err_px": err,
            "config_hash": self.config_hash,
            "versions": self.versions,
        }

    def close(self) -> None:
        self.landmarker.close()
