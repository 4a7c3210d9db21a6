"""Everything about a face video that does not depend on the voice: frames, face track, crops, coefficients.

:func:`prepare_avatar` runs the preprocessing's own steps in memory (25 fps decoding, MediaPipe
landmarks, the main-face track, the smoothed crop, the face-model fit) and caches the result per
video file (keyed by its SHA-1, the face model and the crop settings), so a second voice on the
same face skips landmarks and fitting. Frames are kept in a memory-mapped temporary file, not in
RAM: a minute of 1080p is 9 GB of pixels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from preprocess.errors import ClipError
from preprocess.face_fit import FaceFitter, FitConfig
from preprocess.face_model import FaceModel
from preprocess.face_track import CropConfig, Segment, TrackConfig, apply_crop, crop_boxes, track_face
from preprocess.landmarks import FaceLandmarker
from preprocess.media import iter_frames, probe
from preprocess.pipeline import landmarks_to_crop

log = logging.getLogger(__name__)
CACHE_VERSION = "1"


def default_cache_dir() -> Path:
    return Path(os.environ.get("REALTALK_CACHE", Path.home() / ".cache" / "realtalk")) / "avatars"


def file_sha1(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Avatar:
    """A face video ready to be driven: per frame (25 fps) its coefficients and crop geometry.

    Arrays are indexed by frame; frames without a tracked face (``has_face`` False) hold zeros
    and are passed through untouched.
    """

    source: Path
    sha1: str
    frames: np.ndarray  # [T, H, W, 3] uint8, memory-mapped
    has_face: np.ndarray  # [T] bool: inside a face-track segment (short gaps are bridged)
    boxes: np.ndarray  # [T, 3] crop boxes (x0, y0, side) in source pixels
    crop_matrix: np.ndarray  # [T, 2, 3] source -> crop pixels
    coeffs: dict[str, np.ndarray]  # shape [T, Ds], exp [T, De], pose [T, 6], camera [T, 3] (crop pixels)
    crop_size: int
    reference_index: int  # the frame whose crop is the renderer's reference
    shape_ref: np.ndarray  # α of the main segment, the A2E's shape token
    seen_exp: np.ndarray  # β of every frame where the face was really seen (history is drawn from these)
    face_model: str  # full name
    seconds: dict[str, float] = field(default_factory=dict)
    from_cache: bool = False
    complete: bool = True  # decoded to the end of the video (not stopped at max_frames)
    _tmp: tempfile.TemporaryDirectory | None = None

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the source frames."""
        return self.frames.shape[1], self.frames.shape[2]

    def crops(self, index: np.ndarray) -> np.ndarray:
        """uint8 crops [n, S, S, 3] of the given frames (cut on demand: ~1 ms each)."""
        return np.stack([apply_crop(self.frames[i], self.boxes[i], self.crop_size) for i in index])

    def history(self, count: int, seed: int = 0) -> np.ndarray:
        """``count`` expressions drawn from the seen frames, as the evaluation draws them."""
        rng = np.random.default_rng(seed)
        return self.seen_exp[rng.choice(len(self.seen_exp), count, replace=len(self.seen_exp) < count)]

    def close(self) -> None:
        """Drop the frame file (also happens when the object is garbage collected)."""
        self.frames = self.frames[:0]
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _decode(path: Path, max_frames: int | None, folder: Path, landmarker: FaceLandmarker | None, progress: bool) -> tuple[np.ndarray, list[list[np.ndarray]], float, float]:
    """One decoding pass: frames into a memory-mapped file, and (when a landmarker is given) the faces of each."""
    file = folder / "frames.u8"
    faces: list[list[np.ndarray]] = []
    shape = None
    t_decode = t_lmk = 0.0
    count = 0
    with open(file, "wb") as out, closing(iter_frames(path)) as frames, tqdm(desc="decode + landmarks" if landmarker else "decode", unit="frame", disable=not progress, total=max_frames, leave=False) as bar:
        t = time.perf_counter()
        for frame in frames:
            if max_frames is not None and count >= max_frames:
                break
            shape = frame.shape
            out.write(np.ascontiguousarray(frame).tobytes())
            t_decode += time.perf_counter() - t
            t = time.perf_counter()
            if landmarker is not None:
                faces.append(landmarker(frame))
                t_lmk += time.perf_counter() - t
                t = time.perf_counter()
            count += 1
            bar.update()
    if count == 0:
        raise ClipError("decode", f"no video frames could be decoded from {path}")
    return np.memmap(file, np.uint8, "r", shape=(count, *shape)), faces, t_decode, t_lmk


def _save_track(file: Path, segments: list[Segment], frames: int, total: bool) -> None:
    arrays = {"frames": np.int64(frames), "total": np.bool_(total), "count": np.int64(len(segments))}
    for i, s in enumerate(segments):
        arrays |= {f"start{i}": np.int64(s.start), f"end{i}": np.int64(s.end), f"lmk{i}": s.landmarks.astype(np.float32), f"valid{i}": s.valid}
    tmp = file.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(file)


def _load_track(file: Path, needed: int | None) -> list[Segment] | None:
    """Cached segments cut to ``needed`` frames, or None when the cache covers fewer frames than needed."""
    if not file.is_file():
        return None
    with np.load(file) as z:
        if not (bool(z["total"]) or (needed is not None and int(z["frames"]) >= needed)):
            return None
        segments = [Segment(int(z[f"start{i}"]), int(z[f"end{i}"]), z[f"lmk{i}"], z[f"valid{i}"]) for i in range(int(z["count"]))]
    if needed is None:
        return segments
    cut = []
    for s in segments:
        if s.start < needed:
            n = min(s.end, needed) - s.start
            cut.append(Segment(s.start, s.start + n, s.landmarks[:n], s.valid[:n]))
    return cut


def prepare_avatar(
    video: str | Path,
    face_model: FaceModel,
    max_frames: int | None = None,
    cache_dir: Path | None = None,
    crop: CropConfig | None = None,
    track: TrackConfig | None = None,
    fit: FitConfig | None = None,
    landmarker_task: str | None = None,
    progress: bool = True,
) -> Avatar:
    """Decode ``video`` at 25 fps (at most ``max_frames``), track and fit its main face; cached per file.

    Raises ClipError (one line for a person) for a file without video, or without a face in any frame.
    """
    path = Path(video)
    crop, track, fit = crop or CropConfig(), track or TrackConfig(), fit or FitConfig()
    info = probe(path)  # ClipError for a missing/unreadable file or one without a video stream
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    sha = file_sha1(path)
    settings = json.dumps({"v": CACHE_VERSION, "face_model": face_model.full_name, "crop": asdict(crop), "track": asdict(track)}, sort_keys=True)
    key = f"{sha[:16]}-{hashlib.sha1(settings.encode()).hexdigest()[:8]}"
    cache = (cache_dir or default_cache_dir()) / key
    seconds["hash"] = time.perf_counter() - t
    segments = _load_track(cache / "track.npz", max_frames)
    tmp = tempfile.TemporaryDirectory(prefix="realtalk-avatar-")
    landmarker = None if segments is not None else FaceLandmarker(landmarker_task, max_faces=2)
    try:
        frames, faces, seconds["decode"], seconds["landmarks"] = _decode(path, max_frames, Path(tmp.name), landmarker, progress)
    finally:
        if landmarker is not None:
            landmarker.close()
    n = len(frames)
    t = time.perf_counter()
    if segments is None:
        try:
            segments = track_face(faces, info.width, info.height, track).segments
        except ClipError as e:
            raise ClipError("face", f"{e.reason} in {path}; dubbing needs a video where one face is visible") from None
        cache.mkdir(parents=True, exist_ok=True)
        _save_track(cache / "track.npz", segments, n, total=max_frames is None or n < max_frames)
        from_cache = False
    else:
        from_cache = True
    segments = [s for s in segments if s.start < n]
    if not segments:
        raise ClipError("face", f"no face in the first {n} frames of {path}; dubbing needs a video where one face is visible")

    size = crop.size
    fitter = FaceFitter(face_model, fit)
    has_face = np.zeros(n, bool)
    boxes = np.zeros((n, 3))
    mats = np.zeros((n, 2, 3), np.float32)
    coeffs = {"shape": np.zeros((n, face_model.shape_dim), np.float32), "exp": np.zeros((n, face_model.exp_dim), np.float32),
              "pose": np.zeros((n, 6), np.float32), "camera": np.zeros((n, 3), np.float32)}
    seen = []
    for seg in segments:
        end = min(seg.end, n)
        lmk_src, valid = seg.landmarks[: end - seg.start], seg.valid[: end - seg.start]
        b = crop_boxes(lmk_src, crop)
        lmk, m = landmarks_to_crop(lmk_src, b, size)
        result = fitter(lmk, valid, size)
        sl = slice(seg.start, end)
        has_face[sl], boxes[sl], mats[sl] = True, b, m
        for k in coeffs:
            coeffs[k][sl] = result[k]
        seen.append(result["exp"][valid])
    main = max(segments, key=lambda s: s.end - s.start)
    reference = main.start + int(np.flatnonzero(main.valid)[0])
    seconds["fit"] = time.perf_counter() - t
    log.info("%s: %d frames, %d with a face (%s)", path.name, n, int(has_face.sum()), "track from cache" if from_cache else "tracked")
    return Avatar(path, sha, frames, has_face, boxes, mats, coeffs, size, reference, coeffs["shape"][reference].copy(),
                  np.concatenate(seen), face_model.full_name, seconds, from_cache, max_frames is None or n < max_frames, tmp)
