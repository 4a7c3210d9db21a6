"""Build the linear face model from MediaPipe landmarks of a corpus of videos.

Frames are pose-normalised by generalised Procrustes. Identity variation is the spread
of the per-video mean shapes; expression variation is each frame's deviation from its
own video's mean. Each gets its own PCA, so a clip's identity stays out of the
expression basis (which is what the A2E stage predicts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from preprocess.face_fit import similarity_transform
from preprocess.face_model import EYE_CORNER_MM, INDEX_SETS
from preprocess.landmarks import NUM_MESH_POINTS

if TYPE_CHECKING:
    from preprocess.config import BuildFaceModelJob

# MediaPipe mesh vertices used to orient the canonical frame (facts of its topology)
_EYE_OUTER = (33, 263)  # subject's right / left outer eye corner
_CHIN, _FOREHEAD, _NOSE_TIP = 152, 10, 1


def _loops(edges: list[tuple[int, int]]) -> list[list[int]]:
    """Chain undirected edges into closed vertex loops."""
    nbrs: dict[int, list[int]] = {}
    for a, b in edges:
        nbrs.setdefault(a, []).append(b)
        nbrs.setdefault(b, []).append(a)
    seen: set[int] = set()
    loops = []
    for start in sorted(nbrs):
        if start in seen:
            continue
        loop, prev, cur = [start], None, start
        seen.add(start)
        while True:
            nxt = [v for v in nbrs[cur] if v != prev and (v not in seen or v == start)]
            if not nxt or nxt[0] == start:
                break
            prev, cur = cur, nxt[0]
            loop.append(cur)
            seen.add(cur)
        loops.append(loop)
    return loops


def _polygon_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def index_sets(mean: np.ndarray) -> dict[str, np.ndarray]:
    """Named vertex sets from MediaPipe's connection lists and the mean shape's geometry."""
    from matplotlib.path import Path as PolyPath
    from mediapipe.tasks.python.vision.face_landmarker import (
        FaceLandmarksConnections as C,
    )

    def edges(conns: list) -> list[tuple[int, int]]:
        return [(c.start, c.end) for c in conns]

    lip_loops = sorted(_loops(edges(C.FACE_LANDMARKS_LIPS)), key=lambda lp: _polygon_area(mean[lp, :2]))
    inner, outer = lip_loops[0], lip_loops[-1]
    oval = _loops(edges(C.FACE_LANDMARKS_FACE_OVAL))[0]

    # mouth: every vertex inside the outer lip contour grown by 20% (lip surface, not just rims)
    centre = mean[outer, :2].mean(0)
    grown = PolyPath(centre + 1.2 * (mean[outer, :2] - centre))
    mouth = np.flatnonzero(grown.contains_points(mean[:, :2]))
    mouth = np.union1d(mouth, np.array(outer + inner))

    # lower face: the oval below a line a quarter of the way from the nose tip up to the eyes,
    # as one ordered run from cheek to cheek through the chin (polygon closed by the line)
    eye_y = mean[list(_EYE_OUTER), 1].mean()
    cut_y = mean[_NOSE_TIP, 1] - 0.25 * (mean[_NOSE_TIP, 1] - eye_y)
    below = [v for v in oval if mean[v, 1] > cut_y]
    k = oval.index(_CHIN)
    ordered = oval[k:] + oval[:k]  # start at the chin, walk both ways while below the line
    fwd = []
    for v in ordered:
        if v not in below:
            break
        fwd.append(v)
    bwd = []
    for v in ordered[::-1]:
        if v not in below:
            break
        bwd.append(v)
    lower = bwd[::-1] + fwd  # cheek -> chin -> other cheek
    out = {"mouth": mouth, "inner_mouth": np.array(inner), "lower_face": np.array(lower), "face_oval": np.array(oval)}
    assert set(out) == set(INDEX_SETS)
    return out


def canonicalize(shape: np.ndarray) -> np.ndarray:
    """Centre, orient (eye corners along +x, chin-to-forehead along -y) and scale to mm."""
    x = shape - shape.mean(0)
    ex = x[_EYE_OUTER[1]] - x[_EYE_OUTER[0]]
    ex /= np.linalg.norm(ex)
    up = x[_FOREHEAD] - x[_CHIN]
    ey = -(up - ex * np.dot(up, ex))
    ey /= np.linalg.norm(ey)
    ez = np.cross(ex, ey)
    x = x @ np.stack([ex, ey, ez], 1)
    return x * (EYE_CORNER_MM / np.linalg.norm(x[_EYE_OUTER[1]] - x[_EYE_OUTER[0]]))


def align_to(frames: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Similarity-align every frame [T, V, 3] onto ``ref`` [V, 3]."""
    s, rot, t = similarity_transform(frames, np.broadcast_to(ref, frames.shape))
    return s[:, None, None] * np.einsum("bij,bvj->bvi", rot, frames) + t[:, None]


def _generalized_procrustes(vids: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Align every frame to a common canonical mean (re-estimated a few times)."""
    ref = canonicalize(vids[0].mean(0))
    for _ in range(4):
        aligned = [align_to(v, ref) for v in vids]
        ref = canonicalize(np.concatenate(aligned).mean(0))
    return [align_to(v, ref) for v in vids], ref


def mirror_permutation(mean: np.ndarray) -> np.ndarray:
    """Vertex i of a mirrored face is vertex perm[i] of the original (nearest to its reflection)."""
    from scipy.spatial import cKDTree

    _, perm = cKDTree(mean).query(mean * np.array([-1.0, 1.0, 1.0]))
    return perm


def build_face_model(
    videos: list[np.ndarray],
    n_shape: int = 80,
    n_exp: int = 64,
    name: str = "mp468-linear",
    version: str = "1",
    info: str = "",
    mirror: bool = True,
) -> dict[str, np.ndarray]:
    """Fit mean, identity and expression bases from per-video landmark arrays [T_v, >=468, 3].

    With ``mirror`` every video is also used left-right mirrored, as one more identity:
    a small corpus then spans twice the identities (held-out fit error on GRID: 0.29-0.43 px
    instead of 0.31-0.45 px with five training speakers).

    Returns the arrays of the ``.npz`` model file (see :class:`preprocess.face_model.FaceModel`).
    """
    if len(videos) < 2:
        raise ValueError("a face model needs landmarks from at least 2 videos (identity varies between them)")
    vids = [v[:, :NUM_MESH_POINTS].astype(np.float64) for v in videos]
    if mirror:
        perm = mirror_permutation(_generalized_procrustes(vids)[1])
        vids += [v[:, perm] * np.array([-1.0, 1.0, 1.0]) for v in vids]
    aligned, _ = _generalized_procrustes(vids)
    video_means = np.stack([a.mean(0) for a in aligned])
    mean = video_means.mean(0)

    def pca(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows = rows.reshape(len(rows), -1)
        _, sig, vt = np.linalg.svd(rows - rows.mean(0), full_matrices=False)
        std = sig / np.sqrt(max(len(rows) - 1, 1))
        k = min(k, int((std > 1e-6 * std[0]).sum()))
        return (vt[:k].T * std[:k]), std[:k]

    id_basis, id_std = pca(video_means, min(n_shape, len(vids) - 1))
    exp_rows = np.concatenate([a - m for a, m in zip(aligned, video_means)])
    exp_basis, exp_std = pca(exp_rows, n_exp)
    sets = index_sets(mean)
    return {
        "name": np.array(name),
        "version": np.array(version),
        "info": np.array(info),
        "mean": mean.astype(np.float32),
        "id_basis": id_basis.astype(np.float32),
        "exp_basis": exp_basis.astype(np.float32),
        "id_std": id_std.astype(np.float32),
        "exp_std": exp_std.astype(np.float32),
        **{f"idx_{k}": v.astype(np.int32) for k, v in sets.items()},
    }


def run_build(job: BuildFaceModelJob) -> int:
    """Collect tracked landmarks from a corpus and write the model file."""
    import random
    from pathlib import Path

    from tqdm import tqdm

    from preprocess.datasets import list_clips, read_speaker_map
    from preprocess.errors import ClipError
    from preprocess.face_track import track_face
    from preprocess.landmarks import FaceLandmarker
    from preprocess.media import iter_frames, probe

    clips = [c for c in list_clips(job.dataset, job.root, job.split, job.meta_csv, None, job.mead_view, speakers=read_speaker_map(job.speakers))
             if not any(x in c.key for x in job.exclude) and (job.splits is None or c.split in job.splits)]
    random.Random(job.seed).shuffle(clips)
    clips = clips[: job.limit] if job.limit else clips
    by_speaker: dict[str, list[np.ndarray]] = {}  # one identity per speaker, however many clips it has
    used = []
    with FaceLandmarker(job.landmarker_task, max_faces=1) as lm:
        for clip in tqdm(clips, unit="clip", desc="landmarks"):
            try:
                info = probe(Path(clip.path))
                lm.reset()
                faces = [lm(f) for f in iter_frames(Path(clip.path), clip.start, clip.end)]
                track = track_face(faces, info.width, info.height, job.track)
            except ClipError as e:
                print(f"skipped {clip.key}: {e}")
                continue
            lmk = np.concatenate([s.landmarks[s.valid] for s in track.segments])
            keep = np.linspace(0, len(lmk) - 1, min(len(lmk), job.frames_per_video)).round().astype(int)
            by_speaker.setdefault(clip.speaker, []).append(lmk[keep])
            used.append(clip.key)
    videos = [np.concatenate(v) for v in by_speaker.values()]
    info_text = (f"built from {len(used)} clips of {len(videos)} speakers ({sum(len(v) for v in videos)} frames) of {job.dataset} at {job.root}: "
                 f"{', '.join(used[:20])}")
    model = build_face_model(videos, job.n_shape, job.n_exp, job.name, job.version, info_text, job.mirror)
    job.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(job.out, **model)
    print(f"wrote {job.out}: {model['id_basis'].shape[1]} identity + {model['exp_basis'].shape[1]} expression components; {info_text}")
    return 0
