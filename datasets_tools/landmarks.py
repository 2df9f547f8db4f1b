"""The one facial landmark scheme of aubench: 68 points in the iBUG 300-W / Multi-PIE layout, and
the geometry built on it (mirror permutation, eye and mouth centres, face alignment).

Indices are 0-based; "left" and "right" are the image's (the subject's right side is on the
image's left):

  jaw      0-16   from the image-left ear level over the chin (8) to the image-right ear level
  brows   17-21   image-left brow, outer end (17) to inner end (21)
          22-26   image-right brow, inner end (22) to outer end (26)
  nose    27-30   bridge, from the root between the eyes (27) to the tip (30)
          31-35   lower nose, image-left ala (31), subnasale (33), image-right ala (35)
  eyes    36-41   image-left eye: outer corner 36, upper lid 37-38, inner corner 39, lower lid 40-41
          42-47   image-right eye: inner corner 42, upper lid 43-44, outer corner 45, lower lid 46-47
  mouth   48-59   outer lip: left corner 48, upper lip 49-53 (51 at the middle), right corner 54,
                  lower lip 55-59 from right to left (57 at the middle)
          60-67   inner lip: left corner 60, upper 61-63, right corner 64, lower 65-67 from right
                  to left

It is the layout of dlib's 68-point shape predictor and of OpenFace; EAC-Net defines its AU
centres on it, and JAA-Net on its 49 inner points (without the jaw and the inner mouth corners). Coordinates are (x, y) pixels with pixel centres at
whole numbers (OpenCV's and dlib's convention): the left-most pixel column is x = 0, so a
horizontal flip maps x to width - 1 - x. A missing point is NaN.
"""
from __future__ import annotations

import numpy as np

SCHEME = "ibug68"          # the name files and results use for this layout
NUM_POINTS = 68

GROUPS: dict[str, range] = {
    "jaw": range(0, 17),
    "left_brow": range(17, 22), "right_brow": range(22, 27),
    "nose_bridge": range(27, 31), "lower_nose": range(31, 36),
    "left_eye": range(36, 42), "right_eye": range(42, 48),
    "outer_lip": range(48, 60), "inner_lip": range(60, 68),
}


def _mirror() -> tuple[int, ...]:
    """MIRROR[i]: the point that takes index i after a horizontal flip (a left eye corner stays a
    left eye corner)."""
    pairs = [(i, 16 - i) for i in range(8)]                                  # jaw
    pairs += [(17 + k, 26 - k) for k in range(5)]                            # brows
    pairs += [(31, 35), (32, 34)]                                            # lower nose
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]    # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]              # outer lip
    pairs += [(60, 64), (61, 63), (65, 67)]                                  # inner lip
    table = list(range(NUM_POINTS))
    for a, b in pairs:
        table[a], table[b] = b, a
    return tuple(table)


MIRROR = _mirror()

INNER_LIP_CORNERS = (60, 64)
MOUTH_WITHOUT_INNER_CORNERS = tuple(i for i in range(48, 68) if i not in INNER_LIP_CORNERS)

# Where the points of the datasets' own landmark files sit in this scheme (row i of a file's
# points is point INDEX[i] here): BP4D's and BP4D+'s 49-point tracker (2DFeatures) has the inner
# face without the jaw and the inner-lip corners; DISFA's 66 points (Landmark_Points) are the 68
# without the inner-lip corners.
BP4D_49 = tuple(range(17, 60)) + (61, 62, 63, 65, 66, 67)
DISFA_66 = tuple(i for i in range(NUM_POINTS) if i not in INNER_LIP_CORNERS)


def to_scheme(points: np.ndarray, index) -> np.ndarray:
    """float32 (..., 68, 2) from a file's (..., P, 2) points whose row i is point index[i] of
    the scheme; NaN for the points the file does not have."""
    points = np.asarray(points, dtype=np.float32)
    if points.shape[-2:] != (len(index), 2):
        raise ValueError(f"expected (..., {len(index)}, 2) points, got shape {points.shape}")
    out = np.full((*points.shape[:-2], NUM_POINTS, 2), np.nan, np.float32)
    out[..., list(index), :] = points
    return out

# Where --crop align puts the eye centres and the mouth centre, in fractions of the output side
# (x, y): eyes 0.36 of the side apart, the mouth 0.38 below them, which leaves the brows and the
# chin inside the square with a margin (our choice; the AU papers align to fixed points of this
# kind before their 256 -> 224 crops but do not agree on the values).
CANONICAL_LEFT_EYE = (0.32, 0.36)
CANONICAL_RIGHT_EYE = (0.68, 0.36)
CANONICAL_MOUTH = (0.50, 0.74)


def check_points(points: np.ndarray, where: str = "landmarks") -> np.ndarray:
    """`points` as float32 (..., 68, 2); ValueError naming `where` for another shape."""
    points = np.asarray(points, dtype=np.float32)
    if points.ndim < 2 or points.shape[-2:] != (NUM_POINTS, 2):
        raise ValueError(f"{where}: expected (..., {NUM_POINTS}, 2) points of the {SCHEME} scheme, "
                         f"got shape {points.shape}")
    return points


def flip_points(points: np.ndarray, width: int) -> np.ndarray:
    """The landmarks of the horizontally flipped image: x -> width - 1 - x, then MIRROR."""
    points = check_points(points)
    flipped = points.copy()
    flipped[..., 0] = width - 1 - flipped[..., 0]
    return flipped[..., MIRROR, :]


def eye_centres(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image-left eye centre, image-right eye centre), each (..., 2): means of the six points."""
    points = check_points(points)
    return (points[..., GROUPS["left_eye"], :].mean(-2), points[..., GROUPS["right_eye"], :].mean(-2))


def mouth_centre(points: np.ndarray) -> np.ndarray:
    """(..., 2): the mean of the 20 lip points, or of the other 18 where both inner-lip corners
    (60, 64) are missing, as in BP4D's 49 and DISFA's 66 points; NaN when any other lip point is
    missing."""
    points = check_points(points)
    lips = points[..., 48:68, :]
    without_inner_corners = points[..., MOUTH_WITHOUT_INNER_CORNERS, :].mean(-2)
    corners_missing = np.isnan(points[..., INNER_LIP_CORNERS, :]).any(-1).all(-1)[..., None]
    return np.where(corners_missing, without_inner_corners, lips.mean(-2))


def similarity_fit(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2 x 3 matrix of the similarity transform (rotation, uniform scale, translation) that
    maps the (k, 2) `source` points onto `target` with least squared error (Umeyama, without
    reflection)."""
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    mu_s, mu_t = source.mean(0), target.mean(0)
    s, t = source - mu_s, target - mu_t
    variance = (s ** 2).sum() / len(s)
    if variance <= 0:
        raise ValueError("similarity_fit: the source points coincide")
    covariance = t.T @ s / len(s)
    u, d, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rotation = u @ np.diag(sign) @ vt
    scale = (d * sign).sum() / variance
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mu_t - scale * rotation @ mu_s
    return matrix


def alignable(points: np.ndarray) -> np.ndarray:
    """bool (...): whether --crop align can align each face: its eye centres and mouth centre
    are there, and the eyes lie at least a pixel apart (not placeholders such as all zeros, which
    some tools write for a failed frame)."""
    left, right = eye_centres(points)
    mouth = mouth_centre(points)
    finite = np.isfinite(np.concatenate([left, right, mouth], -1)).all(-1)
    with np.errstate(invalid="ignore"):
        return finite & (np.linalg.norm(right - left, axis=-1) >= 1.0)


def alignment_matrix(points: np.ndarray, size: int) -> np.ndarray | None:
    """The 2 x 3 similarity that puts a face's eye centres and mouth centre where --crop align
    wants them in a `size` x `size` output (CANONICAL_*), or None when the face is not
    `alignable`. Pixel centres sit at whole numbers on both sides, so the canonical fraction f of
    the side is the coordinate f * size - 0.5."""
    if not alignable(points):
        return None
    source = np.stack([*eye_centres(points), mouth_centre(points)])
    target = np.array([CANONICAL_LEFT_EYE, CANONICAL_RIGHT_EYE, CANONICAL_MOUTH]) * size - 0.5
    return similarity_fit(source, target)


def scale_points(points: np.ndarray, scale) -> np.ndarray:
    """(..., 2) points of an image resized by `scale` ((sx, sy) or one factor), moved as OpenCV
    moves its pixels: pixel centres sit at whole numbers, so x -> (x + 0.5) * sx - 0.5."""
    scale = np.asarray(scale, dtype=np.float64)
    return ((np.asarray(points, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(..., 2) points through a 2 x 3 affine matrix (NaN stays NaN)."""
    points = np.asarray(points, dtype=np.float64)
    matrix = np.asarray(matrix, dtype=np.float64)
    return (points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
