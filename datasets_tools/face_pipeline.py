"""How a converted file's faces were prepared, as one object that prepares more faces the same way.

The converter prepares every frame with `FacePreparation.prepare` (its ``--crop``, ``--image-size``
and margin), and ``aubench predict`` prepares every face it finds in a video or photo with the
same call, rebuilt from the training file's root attributes (`preparation_of_file`): one code
path, so a model sees faces cut as its training faces were.

A crop that depends only on the face's landmarks (``landmarks``, ``align``) is reproducible on any
frame given the face's 68 points. ``landmarks`` takes the square around the points the file's
landmarks had: BP4D's 49-point tracker has no jaw, DISFA's 66 points no inner-lip corners, so
detected points outside those sets are left out (``FacePreparation.points``) and the box is the
one the training faces got. The other crops cannot be reproduced on a frame that is not the
dataset's: ``none`` (faces shipped cropped and aligned, e.g. Aff-Wild2's), ``center`` (a fixed
studio camera) and ``haar`` (a second detector whose face need not be the one followed); nor a
landmark crop made from points of another scheme. For those, `preparation_of_file` aligns with
``--crop align``'s canon at the file's image size and says why in a note.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .faces import DEFAULT_MARGIN, crop_face
from .landmarks import BP4D_49, DISFA_66, SCHEME

# the crops a face's landmarks alone determine
LANDMARK_CROPS = ("landmarks", "align")
# landmark sources (the file's ``landmarks_source``, datasets_tools.landmark_files) that hold
# only some of the 68 points: the indices they hold
SOURCE_POINTS = {"bp4d-2dfeatures-v7.3": BP4D_49, "bp4d-2dfeatures-v5": BP4D_49,
                 "disfa-landmark-points": DISFA_66}


@dataclass(frozen=True)
class FacePreparation:
    """A face crop: ``crop`` (datasets_tools.faces.CROPS) at ``image_size`` with ``margin``;
    ``points``: the indices of the 68 points the crop may use (None: every point)."""

    crop: str
    image_size: int
    margin: float = DEFAULT_MARGIN
    points: tuple[int, ...] | None = None

    def prepare(self, bgr: np.ndarray, points: np.ndarray | None):
        """-> (image_size x image_size BGR face, landmarks in its pixels or None, note or None):
        `datasets_tools.faces.crop_face` of the frame, with the points outside ``points`` set to
        NaN first."""
        if points is not None and self.points is not None:
            kept = np.full_like(points, np.nan)
            kept[list(self.points)] = points[list(self.points)]
            points = kept
        return crop_face(bgr, self.crop, self.image_size, points, self.margin)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def source_points(landmarks_source: str) -> tuple[int, ...] | None:
    """The indices of the 68 points a file's landmarks came with (its ``landmarks_source``; several
    kinds are joined by "+"): the points every kind holds; None when every point is there."""
    kept = set(range(68))
    for kind in landmarks_source.split("+"):
        kept &= set(SOURCE_POINTS.get(kind, range(68)))
    return None if len(kept) == 68 else tuple(sorted(kept))


def preparation_of_file(attrs) -> tuple[FacePreparation, str | None]:
    """(how to prepare a face found in any frame as a converted file's faces were prepared, a note
    saying why the file's own crop is not the one used, or None). ``attrs``: the file's root
    attributes (h5py attrs, or aubench.data.AUFile.attrs)."""
    crop = _text(attrs["crop"])
    size = int(np.asarray(attrs["image_size"]).reshape(-1)[0])
    scheme = _text(attrs["landmark_scheme"]) if "landmark_scheme" in attrs else None
    if crop in LANDMARK_CROPS and scheme == SCHEME:
        source = _text(attrs["landmarks_source"]) if "landmarks_source" in attrs else ""
        return FacePreparation(crop, size, points=source_points(source)), None
    if crop in LANDMARK_CROPS:
        why = f"its --crop {crop} used landmarks of another scheme ({scheme or 'none named'}), not the 68 points"
    else:
        why = {"none": "its faces came cropped and aligned (--crop none)",
               "center": "its --crop center cut the middle of the dataset's camera frames",
               "haar": "its --crop haar boxes came from OpenCV's Haar detector, not the faces followed here"}.get(
            crop, f"its --crop {crop} depends on the dataset's frames")
    note = (f"the training file's crop cannot be reproduced on other frames ({why}); faces are aligned with "
            f"--crop align's canon at {size} px instead")
    return FacePreparation("align", size), note
