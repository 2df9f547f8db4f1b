"""DISFA reader.

Layout, as the dataset ships (names matched ignoring case):
- ``ActionUnit_Labels/SN001/SN001_au1.txt``: one file per coded AU (1 2 4 5 6 9 12 15 17 20 25
  26), lines ``frame,intensity`` with 1-based frame numbers and intensities 0..5.
- ``Videos_LeftCamera/LeftVideoSN001_comp.avi`` (and ``Videos_RightCamera/RightVideo...``),
  1024x768, 4845 frames (SN010: 4844); ``--camera`` picks one. Label frame f is video frame f-1.
- or frames already extracted: ``<root>/<Images...>/SN001/<n>.png|jpg``. Numbering base, per
  subject: if the smallest file number is 0 the folder is 0-based (file n = label frame n+1),
  otherwise 1-based (file n = label frame n). With several image folders the one whose name
  holds the camera ("left"/"right") is used. Extracted images win over videos.

- optional landmarks ``Landmark_Points/SN001/tmp_frame_lm/SN001_0000_lm.mat``, one file per
  left-camera video frame (``read_landmark_points``).

Stored: labels for the benchmark's 8 AUs (1 2 4 6 9 12 25 26), occurrence = intensity >=
``--threshold`` (default 2), and ``intensity`` for the same 8 AUs (the schema pairs intensity
columns with ``au_names``; the other four coded AUs are not used by the benchmark).
"""

from __future__ import annotations

import os
import re
import struct
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .errors import DatasetError, Report
from .landmarks import DISFA_66, to_scheme
from .raw import (DatasetPlan, LandmarkTrack, SequencePlan, au_name, child, fast_table, find_dirs, index_image_dir,
                  read_csv, read_mat_matrix, rows_of_width)

DISFA_AUS = (1, 2, 4, 6, 9, 12, 25, 26)
SUBJECT = re.compile(r"^SN\d+$", re.IGNORECASE)
LABEL_FILE = re.compile(r"^(SN\d+)_au(\d+)\.txt$", re.IGNORECASE)
VIDEO_FILE = re.compile(r"^(left|right)video(SN\d+).*\.(avi|mp4|mkv|mov)$", re.IGNORECASE)


def _subject_dirs(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir() and SUBJECT.match(p.name)]
    except OSError:
        return []


def find_label_dir(root: Path) -> Path:
    found = find_dirs(root, lambda p: p.name.lower() == "actionunit_labels" or any(
        any(LABEL_FILE.match(f.name) for f in s.iterdir()) for s in _subject_dirs(p)), max_depth=3)
    if not found:
        raise DatasetError("no DISFA label folder found (expected ActionUnit_Labels/SN001/SN001_au1.txt)",
                           str(root))
    return found[0]


def read_au_file(path: Path, subject: str, report: Report) -> dict[int, int]:
    """``frame,intensity`` lines -> {frame: intensity}; bad rows are problems (file and line)."""
    table = fast_table(path, header=False)
    if table is not None and table[1].shape[1] == 2:
        frames, intensity = table[1][:, 0], table[1][:, 1]
        if np.isin(intensity, np.arange(6)).all() and len(np.unique(frames)) == len(frames) and \
                np.array_equal(frames, np.round(frames)):
            return dict(zip(frames.astype(np.int64).tolist(), intensity.astype(np.int64).tolist()))
    values: dict[int, int] = {}
    for line, cells in rows_of_width(path, read_csv(path), 2, report, sequence=subject, kind="bad label row"):
        if cells[1] == "":
            report.problem("truncated row (expected frame,intensity)", sequence=subject, path=str(path),
                           line=line, kind="bad label row")
            continue
        try:
            frame, value = int(cells[0]), int(cells[1])
        except ValueError:
            report.problem(f"non-numeric value in {','.join(cells)!r}", sequence=subject, path=str(path),
                           line=line, kind="bad label row")
            continue
        if frame in values:
            report.problem(f"duplicate frame {frame}", sequence=subject, frame_no=frame, path=str(path),
                           line=line, kind="duplicate frame")
            continue
        if not 0 <= value <= 5:
            report.problem(f"intensity {value} is not 0..5", sequence=subject, frame_no=frame,
                           path=str(path), line=line, kind="bad label row")
            continue
        values[frame] = value
    if not values:
        raise DatasetError("label file has no frame rows", str(path))
    return values


def find_image_root(root: Path, camera: str) -> Path | None:
    def is_image_root(p: Path) -> bool:
        name = p.name.lower()
        return (name.startswith(("img", "image")) or "frames" in name) and bool(_subject_dirs(p))

    found = find_dirs(root, is_image_root, max_depth=3)
    if len(found) > 1:
        by_camera = [p for p in found if camera in p.name.lower()]
        if len(by_camera) != 1:
            raise DatasetError(f"several image folders ({', '.join(p.name for p in found)}) and none names "
                               f"the {camera} camera uniquely", str(root))
        return by_camera[0]
    return found[0] if found else None


def find_videos(root: Path, camera: str) -> dict[str, Path]:
    videos: dict[str, Path] = {}
    for directory in find_dirs(root, lambda p: True, max_depth=2):
        for path in sorted(directory.iterdir()):
            match = VIDEO_FILE.match(path.name)
            if match and path.is_file() and match.group(1).lower() == camera:
                videos.setdefault(match.group(2).upper(), path)
    return videos


def video_frame_count(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise DatasetError("cannot open video (corrupt or unsupported codec)", str(path))
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()


def avi_whole_frames(path: Path) -> int | None:
    """How many video frames of a truncated AVI file are whole; None when the file is complete
    or not an AVI. OpenCV decodes a frame cut short by a truncated file (an incomplete download)
    as if it were whole, the missing part made up, so truncation is found in the container: its
    RIFF chunks say how long the file should be and where each frame's bytes end. Other
    containers are checked only by decoding."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        def chunks(start: int, end: int):
            """(position, id, data length, list type) of the chunks in [start, end) that begin in the file."""
            pos = start
            while pos + 8 <= min(end, size):
                f.seek(pos)
                head = f.read(12)
                length = struct.unpack("<I", head[4:8])[0]
                yield pos, head[:4], length, head[8:12]
                pos += 8 + length + (length & 1)

        top = list(chunks(0, size))
        if not top or top[0][1] != b"RIFF" or top[0][3] != b"AVI ":
            return None
        if all(pos + 8 + length <= size for pos, _, length, _ in top):
            return None
        whole, stream = 0, None

        def count(start: int, end: int) -> None:
            nonlocal whole, stream
            for pos, name, length, kind in chunks(start, end):
                if name == b"RIFF" or (name == b"LIST" and kind in (b"movi", b"rec ")):
                    count(pos + 12, pos + 8 + length)
                elif name[2:4] in (b"dc", b"db") and stream in (None, name[:2]) and pos + 8 + length <= size:
                    stream = name[:2]  # frames of the first video stream, in file order
                    whole += 1

        count(0, size)
        return whole


def plan(root: Path, options, report: Report) -> DatasetPlan:
    camera = getattr(options, "camera", "left")
    threshold = int(getattr(options, "threshold", 2))
    if not 0 < threshold <= 5:
        raise DatasetError(f"--threshold {threshold} must be 1..5")
    label_dir = find_label_dir(root)
    subject_dirs = sorted(_subject_dirs(label_dir), key=lambda p: p.name.upper())
    if not subject_dirs:
        raise DatasetError("label folder holds no SNxxx subject folders", str(label_dir))
    image_root = find_image_root(root, camera)
    videos = {} if image_root is not None else find_videos(root, camera)
    if image_root is None and not videos:
        raise DatasetError(f"no {camera}-camera videos (Videos_{camera.title()}Camera/"
                           f"{camera.title()}VideoSN001_comp.avi) and no extracted image folders found", str(root))
    sequences = []
    for subject_dir in tqdm(subject_dirs, desc="read labels", unit="subject",
                            disable=not getattr(options, "progress", False), file=sys.stderr):
        subject = subject_dir.name.upper()
        files = {}
        for path in subject_dir.iterdir():
            match = LABEL_FILE.match(path.name)
            if match and match.group(1).upper() == subject:
                files[int(match.group(2))] = path
        missing = [au_name(a) for a in DISFA_AUS if a not in files]
        if missing:
            raise DatasetError(f"missing label file(s) for {', '.join(missing)} (expected {subject}_au1.txt "
                               "style names)", str(subject_dir))
        per_au = [read_au_file(files[a], subject, report) for a in DISFA_AUS]
        frame_sets = [set(v) for v in per_au]
        common = set.intersection(*frame_sets)
        for au, values in zip(DISFA_AUS, per_au):
            extra = sorted(set(values) - common)
            if extra:
                first_file = files[DISFA_AUS[0]]
                if not report.skip_bad:
                    raise DatasetError(f"frame count disagrees with {first_file.name} ({len(values)} vs "
                                       f"{len(per_au[0])} frames; first unmatched frame {extra[0]})",
                                       str(files[au]))
                for f in extra:
                    report.problem(f"frame not in every AU file of {subject}", sequence=subject, frame_no=f,
                                   path=str(files[au]), kind="label files disagree")
        frame_no = np.array(sorted(common), dtype=np.int32)
        intensity = np.array([[v[f] for v in per_au] for f in frame_no], dtype=np.int8).reshape(-1, len(DISFA_AUS))
        label = (intensity >= threshold).astype(np.int8)
        truncated = range(0)
        if image_root is not None:
            folder = next((p for p in _subject_dirs(image_root) if p.name.upper() == subject), None)
            if folder is None:
                report.problem(f"no image folder {subject}/ in {image_root}", sequence=subject,
                               path=str(image_root), kind="missing images")
                continue
            images = index_image_dir(folder, subject, report)
            base = 0 if images and min(images) == 0 else 1
            members = [images.get(int(f) - 1 + base) for f in frame_no]
            kind, container, where = "files", None, str(folder)
            image_frames = np.array(sorted(images), dtype=np.int64) + 1 - base
        else:
            video = videos.get(subject)
            if video is None:
                report.problem(f"no {camera}-camera video for {subject}", sequence=subject, path=str(root),
                               kind="missing images")
                continue
            count = video_frame_count(video)
            if count != int(frame_no.max()) or count != len(frame_no):
                message = (f"label files of {subject} cover {len(frame_no)} frames (last {frame_no.max()}) "
                           f"but the video has {count} frames")
                if not report.skip_bad:
                    raise DatasetError(message + " (use --skip-bad to skip unmatched frames)", str(files[1]))
                report.note(f"{subject}: {message}")
            whole = avi_whole_frames(video)
            if whole is not None and whole < count:
                message = (f"the video file is truncated: only its first {whole} of {count} frames are whole "
                           "(incomplete copy or download?)")
                if not report.skip_bad:
                    raise DatasetError(message + " (use --skip-bad to skip the others)", str(video))
                report.note(f"{subject}: {message}")
                truncated = range(whole + 1, count + 1)  # label frames; a partly decoded frame is never stored
                count = whole
            members = [int(f) - 1 if 1 <= f <= count else None for f in frame_no]
            kind, container, where = "video", str(video), str(video)
            image_frames = np.arange(1, count + 1, dtype=np.int64)
        present = np.array([m is not None for m in members], dtype=bool)
        if not present.all() and not report.skip_bad:
            raise DatasetError(f"{(~present).sum()} labelled frame(s) of {subject} have no image, first: frame "
                               f"{frame_no[~present][0]} (use --skip-bad to skip such frames)", where)
        for f in frame_no[~present]:
            if f in truncated:
                report.problem("frame lies in the truncated end of the video", sequence=subject, frame_no=int(f),
                               path=where, kind="truncated video")
            else:
                report.problem("missing image", sequence=subject, frame_no=int(f), path=where, kind="missing image")
        seq = SequencePlan(subject, subject, frame_no, label, intensity, kind, container, members,
                           str(files[DISFA_AUS[0]]), image_frames=image_frames)
        seq.keep(present)
        if len(seq):
            sequences.append(seq)
    if not sequences:
        raise DatasetError("no frame could be planned (every subject was skipped)", str(root))
    extras = {"camera": camera, "threshold": threshold,
              "intensity_aus": "intensity columns pair with au_names (0..5)"}
    return DatasetPlan("DISFA", [au_name(a) for a in DISFA_AUS], f"intensity>={threshold}", str(root),
                       sequences, extras)



# ---- landmarks: Landmark_Points/SN001/tmp_frame_lm/SN001_0000_lm.mat ---------------------------

# SN001_0000_lm.mat, or l0NNNN_lm.mat (the naming of some subjects, SN031 at least)
LANDMARK_FILE = re.compile(r"^(?:(SN\d+)_|l)(\d+)_lm\.mat$", re.IGNORECASE)
LANDMARK_DIR = "tmp_frame_lm"
LANDMARK_POINTS = len(DISFA_66)


def read_landmark_points(folder: Path) -> LandmarkTrack:
    """One subject's ``Landmark_Points/SN001`` folder (its files in ``tmp_frame_lm/``, or in the
    folder itself) -> the landmarks of its left-camera frames in the 68-point scheme.

    Each file ``SN001_NNNN_lm.mat`` holds the variable ``pts``, 66 x 2 [x y] pixels of one
    1024 x 768 frame (the points ``landmarks.DISFA_66``); NNNN counts video frames from 0, so
    the file is label frame NNNN + 1. Files named ``l0NNNN_lm.mat`` (some subjects) are read by
    the same rule and the report says so: public readers disagree on their base, which
    ``--landmarks-offset`` shifts. An empty ``pts`` is a frame without a face; a file that is not
    a MATLAB file, has no ``pts`` or another shape is named with its frame.
    """
    subject = folder.name.upper()
    files_dir = child(folder, LANDMARK_DIR)
    files_dir = files_dir if files_dir is not None and files_dir.is_dir() else folder
    found: dict[int, Path] = {}
    other_names = 0
    for path in sorted(files_dir.iterdir()):
        match = LANDMARK_FILE.match(path.name)
        if match is None or not path.is_file():
            continue
        if match.group(1) is not None and match.group(1).upper() != subject:
            raise DatasetError(f"landmark file of subject {match.group(1).upper()} in {subject}'s folder", str(path))
        other_names += match.group(1) is None
        frame = int(match.group(2)) + 1
        if frame in found:
            raise DatasetError(f"two landmark files for frame {frame}: {found[frame].name} and {path.name}",
                               str(files_dir))
        found[frame] = path
    if not found:
        raise DatasetError(f"no landmark files (expected {LANDMARK_DIR}/{subject}_0000_lm.mat style names)",
                           str(folder))
    frames = np.array(sorted(found), dtype=np.int64)
    points = np.full((len(frames), LANDMARK_POINTS, 2), np.nan, np.float32)
    empty = np.zeros(len(frames), dtype=bool)
    malformed = {}
    for k, frame in enumerate(frames):
        path = found[int(frame)]
        try:
            value = read_mat_matrix(path, "pts")
        except DatasetError as e:
            malformed[int(frame)] = e.message
            continue
        if value.size == 0:
            empty[k] = True
        elif value.shape == (LANDMARK_POINTS, 2):
            points[k] = value
        else:
            shape = " x ".join(str(v) for v in value.shape)
            malformed[int(frame)] = f"pts is {shape}, expected {LANDMARK_POINTS} x 2 [x y] or empty"
    notes = []
    if other_names:
        notes.append((f"{subject}: landmark files named l0NNNN_lm.mat, read as frame NNNN + 1 like the "
                      f"{subject}_NNNN_lm.mat names; public readers disagree on their base (--landmarks-offset "
                      f"{subject}=N shifts them)", other_names))
    naming = next(iter(found.values())).name

    def entry(frame: int) -> str:
        path = found.get(int(frame))
        if path is not None:
            return f"{path} (frame {frame})"
        index = int(frame) - 1
        expected = f"l0{index:04d}_lm.mat" if naming.lower().startswith("l") else f"{subject}_{index:04d}_lm.mat"
        return f"{files_dir / expected} (frame {frame}, no such file)"

    return LandmarkTrack("disfa-landmark-points", str(files_dir), frames, to_scheme(points, DISFA_66), empty, entry,
                         malformed, notes)
