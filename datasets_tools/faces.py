"""Face cropping: choose a square box (centre, Haar cascade or landmarks), cut it out with black
padding where it leaves the frame, resize, and map landmarks into the stored image's pixels; or
align the face (a similarity transform that puts its eye centres and mouth where
datasets_tools.landmarks says) and cut the square from the aligned frame."""

from __future__ import annotations

import os

import cv2
import numpy as np

from .landmarks import NUM_POINTS, alignment_matrix, scale_points, transform_points

CROPS = ("none", "center", "haar", "landmarks", "align")
DEFAULT_MARGIN = 0.25          # box grows by this fraction of its side on every side
HAAR_CASCADE = "haarcascade_frontalface_default.xml"
HAAR_WORK_SIZE = 320           # detect on a copy whose longer side is at most this (speed)

_detector = None


def haar_unavailable_reason() -> str | None:
    """Why ``--crop haar`` cannot run here, or None. OpenCV 5 dropped CascadeClassifier and the
    bundled cascades (cv2.data.haarcascades); they ship with OpenCV 4.x."""
    if not hasattr(cv2, "CascadeClassifier"):
        return (f"--crop haar needs OpenCV's Haar cascade detector, which OpenCV {cv2.__version__} does not "
                "have (removed in OpenCV 5); install opencv-python-headless<5 or use --crop center/landmarks")
    path = os.path.join(getattr(getattr(cv2, "data", None), "haarcascades", ""), HAAR_CASCADE)
    if not os.path.isfile(path):
        return f"--crop haar: OpenCV's bundled cascade {path} is missing (reinstall opencv-python-headless<5)"
    return None


def haar_detector():
    """OpenCV's bundled frontal-face cascade (cv2.data.haarcascades; nothing is downloaded)."""
    global _detector
    if _detector is None:
        reason = haar_unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        path = os.path.join(cv2.data.haarcascades, HAAR_CASCADE)
        _detector = cv2.CascadeClassifier(path)
        if _detector.empty():
            raise RuntimeError(f"cannot load the Haar cascade {path}")
    return _detector


def center_box(height: int, width: int) -> tuple[float, float, float]:
    side = min(height, width)
    return (width - side) / 2.0, (height - side) / 2.0, float(side)


def square_around(x0: float, y0: float, x1: float, y1: float, margin: float) -> tuple[float, float, float]:
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    return cx - side / 2.0, cy - side / 2.0, side


def haar_box(bgr: np.ndarray, margin: float):
    """Largest detected face as a square box with margin, or None when no face is found."""
    height, width = bgr.shape[:2]
    scale = min(1.0, HAAR_WORK_SIZE / max(height, width))
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    if scale < 1.0:
        gray = cv2.resize(gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    faces = haar_detector().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    if len(faces) == 0:
        return None
    x, y, w, h = max(faces, key=lambda f: f[2] * f[3]) / scale
    return square_around(x, y, x + w, y + h, margin)


def landmark_box(points: np.ndarray | None, margin: float):
    if points is None:
        return None
    valid = points[np.isfinite(points).all(axis=1)]
    if len(valid) < 2:
        return None
    (x0, y0), (x1, y1) = valid.min(0), valid.max(0)
    if x1 - x0 <= 0 and y1 - y0 <= 0:
        return None
    return square_around(x0, y0, x1, y1, margin)


def cut_square(bgr: np.ndarray, box: tuple[float, float, float]) -> np.ndarray:
    """Pixels of the square box (x0, y0, side), black where it extends past the frame."""
    x0, y0, side = (int(round(v)) for v in box)
    side = max(side, 1)
    height, width = bgr.shape[:2]
    top, left = max(0, -y0), max(0, -x0)
    bottom, right = max(0, y0 + side - height), max(0, x0 + side - width)
    inside = bgr[max(0, y0):min(height, y0 + side), max(0, x0):min(width, x0 + side)]
    if top or left or bottom or right:
        inside = cv2.copyMakeBorder(inside, top, bottom, left, right, cv2.BORDER_CONSTANT, value=0)
    return inside


def resize(bgr: np.ndarray, size: int) -> np.ndarray:
    height, width = bgr.shape[:2]
    if (height, width) == (size, size):
        return bgr
    shrinking = height > size or width > size
    return cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def crop_face(bgr: np.ndarray, method: str, size: int, points: np.ndarray | None = None,
              margin: float = DEFAULT_MARGIN):
    """-> (size x size BGR image, landmarks in its pixels or None, note or None).

    "none" resizes the whole frame (aspect not kept); "center" takes the largest centred square;
    "haar" and "landmarks" take a square around the face with ``margin`` and fall back to the
    centre square (returning a note, which the converter counts) when there is no face box;
    "align" warps the frame by the similarity of `landmarks.alignment_matrix` (68 points needed;
    the same centre-square fallback without them), and maps every landmark through it.
    """
    height, width = bgr.shape[:2]
    note = None
    if method == "none":
        out = resize(bgr, size)
        mapped = None if points is None else scale_points(points, np.array([size / width, size / height]))
        return out, mapped, note
    if method == "center":
        box = center_box(height, width)
    elif method == "haar":
        box = haar_box(bgr, margin)
        if box is None:
            box, note = center_box(height, width), "haar: no face found, centre crop used"
    elif method == "landmarks":
        box = landmark_box(points, margin)
        if box is None:
            box, note = center_box(height, width), "landmarks: no landmarks for the frame, centre crop used"
    elif method == "align":
        matrix = None if points is None or points.shape[0] != NUM_POINTS else alignment_matrix(points, size)
        if matrix is not None:
            return warp_similarity(bgr, matrix, size), transform_points(points, matrix), None
        box, note = center_box(height, width), "align: no landmarks for the frame, centre crop used"
    else:
        raise ValueError(f"unknown crop {method!r}; choose one of {', '.join(CROPS)}")
    x0, y0, side = (int(round(v)) for v in box)
    side = max(side, 1)
    out = resize(cut_square(bgr, box), size)
    mapped = None if points is None else scale_points(points - np.array([x0, y0], np.float32), size / side)
    return out, mapped, note



def warp_similarity(bgr: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The size x size output of the 2 x 3 similarity `matrix` (frame pixels -> output pixels),
    black outside the frame. A strong shrink first area-averages the frame down to twice the
    output's scale, as a resize would, so the bilinear warp does not alias."""
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    if scale < 0.5:
        factor = 2 * scale
        height, width = bgr.shape[:2]
        small = (max(1, round(width * factor)), max(1, round(height * factor)))
        bgr = cv2.resize(bgr, small, interpolation=cv2.INTER_AREA)
        # a point x of the frame is at (x + 0.5) * f - 0.5 in the shrunk copy (pixel centres)
        fx, fy = small[0] / width, small[1] / height
        to_small = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1]])
        matrix = np.asarray(matrix, np.float64) @ np.linalg.inv(to_small)
    return cv2.warpAffine(bgr, np.asarray(matrix, np.float64), (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
