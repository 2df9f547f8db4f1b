"""The ``videos`` layout: a folder tree of unlabeled videos (a lab's recordings, for self-supervised
pre-training such as RRL's ``--pretrain-data``), converted with the face pipeline of every layout
and no labels: ``datasets_tools convert videos DIR OUT.h5`` (``--landmarks detect --crop align``
are this layout's defaults).

Every video file (.mp4, .avi, .mov, .mkv, .m4v, .webm, .mpg, .mpeg, .wmv, any case; hidden files
and folders ignored) is one sequence, named by its path relative to DIR; its frames are the
frames OpenCV decodes, in order, numbered 1, 2, ...; a video with rotation metadata is read
upright. The subject of a video is its top-level folder, or the video itself when it lies
directly in DIR. Folds as for ``images`` (--images-split: none by default, folders or random; a
random split never cuts a video). A video that cannot be opened is a problem naming it
(--skip-bad: a counted skip); one that stops decoding before the frame count its header gives
(truncated, damaged) keeps the frames before, with a note naming it.

`VideoFrames` reads a video in order with each frame's timestamp from the container (so a
variable frame rate is kept), for this layout and for ``aubench predict``.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from .errors import DatasetError, Report
from .images import DEFAULT_SPLIT, unlabeled_plan
from .raw import SequencePlan

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv")
LABEL_RULE = "unlabeled (a videos conversion: no AU labels)"
# the layout's face pipeline when --crop / --landmarks are not given
DEFAULTS = {"crop": "align", "landmarks": "detect"}


class VideoFrames:
    """A video's frames in decoding order: iterating yields (index from 0, timestamp in seconds,
    BGR uint8 frame). Timestamps are the container's (each frame's presentation time, less the
    first frame's), not index / fps. After iterating, ``decoded`` is the number of frames read and
    ``expected`` the count the container's header gives (0 when it gives none); ``stopped_early``
    says decoding ended before it. DatasetError naming the file when it cannot be opened."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.capture = cv2.VideoCapture(str(self.path))
        if not self.capture.isOpened():
            raise DatasetError("cannot be opened as a video (not a video file, an unknown codec, or damaged)",
                               str(self.path))
        self.expected = max(0, int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT)))
        self.fps = float(self.capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.decoded = 0

    def __iter__(self):
        first = None
        try:
            while True:
                ok, frame = self.capture.read()
                if not ok or frame is None:
                    return
                milliseconds = float(self.capture.get(cv2.CAP_PROP_POS_MSEC))
                first = milliseconds if first is None else first
                yield self.decoded, (milliseconds - first) / 1000.0, frame
                self.decoded += 1
        finally:
            self.capture.release()

    @property
    def stopped_early(self) -> bool:
        return 0 < self.decoded < self.expected


def count_frames(path: str | Path) -> tuple[int, int]:
    """(frames that decode, the count the header gives) of a video; DatasetError when it cannot
    be opened."""
    video = VideoFrames(path)
    count = 0
    try:
        while video.capture.grab():
            count += 1
    finally:
        video.capture.release()
    return count, video.expected


def find_videos(root: Path) -> list[str]:
    """Paths (relative to root, sorted, folders first by name) of the video files under root."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.relpath(os.path.join(folder, f), root) for f in sorted(files)
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in VIDEO_SUFFIXES]
    return found


def plan(root: Path, options, report: Report):
    videos = find_videos(root)
    if not videos:
        raise DatasetError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in the folder tree", str(root))
    sequences = []
    for relative in videos:
        path = os.path.join(root, relative)
        try:
            frames, expected = count_frames(path)
        except DatasetError as e:
            report.problem(e.message, sequence=relative, path=path, kind="bad video")
            continue
        if frames == 0:
            report.problem("no frame decodes", sequence=relative, path=path, kind="bad video")
            continue
        if frames < expected:
            report.note(f"{relative}: decoding stops after frame {frames} of the {expected} its header gives "
                        f"(truncated or damaged); the frames before are converted")
        subject = relative.split(os.sep)[0] if os.sep in relative else relative
        sequences.append(SequencePlan(subject=subject, name=relative,
                                      frame_no=np.arange(1, frames + 1, dtype=np.int32),
                                      label=np.zeros((frames, 0), np.int8), intensity=None, source_kind="video",
                                      container=path, members=list(range(frames)), label_file=""))
    if not sequences:
        raise DatasetError("no video could be read", str(root))
    return unlabeled_plan("videos", root, sequences, getattr(options, "images_split", DEFAULT_SPLIT),
                          getattr(options, "folds_seed", 0), LABEL_RULE)
