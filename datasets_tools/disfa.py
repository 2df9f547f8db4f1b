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


# Chunk ids are four letters, digits, spaces or underscores ("00dc", "LIST", "JUNK", "ix00"); garbage
# written over a chunk header is almost never one, nor gives a length that fits its list.
_CHUNK_ID = re.compile(rb"[0-9A-Za-z_ ]{4}")
_FRAME_ID = re.compile(rb"\d\d(dc|db)")  # a frame of a video stream, compressed or not


def avi_frames_in_place(path: Path) -> tuple[int, str] | None:
    """How many video frames of an AVI file, from the first, lie where the file's structure
    places them, when a problem in the structure ends the count: (n, "truncated") for a file cut
    short (an incomplete copy or download) inside or after frame n; (n, "damaged ...") for a
    chunk header that is not one (garbage written over it) or a frame that the index (idx1)
    places elsewhere. None for an intact file and for a file that is not an AVI.

    OpenCV decodes a frame cut short as if it were whole, the missing part made up; after garbage
    over a chunk header its AVI reader skips to the next chunk it recognises and numbers that
    frame, timestamp included, as the one it lost, so every later frame would sit beside an
    earlier frame's labels, and no read fails to say so. Only the container's structure tells
    where the frames are: its RIFF chunks (each says how long it is) and its index. Other
    containers are checked by decoding only (``convert.decode``)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        def header(pos: int) -> tuple[bytes, int, bytes]:
            f.seek(pos)
            head = f.read(12)
            return head[:4], struct.unpack("<I", head[4:8])[0], head[8:12]

        if size < 12 or header(0)[0::2] != (b"RIFF", b"AVI "):
            return None
        frames: list[tuple[int, int]] = []  # (position, length) of the first video stream's frame chunks
        found = {"index": None, "movi": None, "stream": None}

        def walk(start: int, end: int, top: bool = False, in_movi: bool = False) -> tuple[int, str] | None:
            """Walk the chunks of the list [start, end) (``top``: the file itself) -> (position,
            "truncated" or "damaged") where its structure breaks, None where it holds."""
            pos = start
            while pos + 8 <= end:
                if pos + 8 > size:  # the list claims more than the file holds
                    return pos, "truncated"
                name, length, kind = header(pos)
                stop = pos + 8 + length
                if not _CHUNK_ID.fullmatch(name) or stop > end and not top:
                    return pos, "damaged"
                if name == b"RIFF" or name == b"LIST" and kind in (b"movi", b"rec "):
                    if kind == b"movi":
                        found["movi"] = found["movi"] or pos + 8
                    broken = walk(pos + 12, stop, in_movi=in_movi or kind in (b"movi", b"rec "))
                    if broken is not None:
                        return broken
                elif stop > size:
                    return pos, "truncated"
                elif in_movi and _FRAME_ID.fullmatch(name) and found["stream"] in (None, name[:2]):
                    found["stream"] = name[:2]
                    frames.append((pos, length))
                elif name == b"idx1" and found["index"] is None:
                    found["index"] = (pos + 8, length)
                pos = stop + (length & 1)
            return None

        broken = walk(0, size, top=True)
        placed, problem = len(frames), None
        if broken is not None:
            problem = "truncated" if broken[1] == "truncated" else f"damaged at byte {broken[0]}"
        if found["index"] is not None and frames:
            start, length = found["index"]
            f.seek(start)
            entries = np.frombuffer(f.read(length - length % 16), dtype=[("id", "S4"), ("flags", "<u4"),
                                                                          ("offset", "<u4"), ("size", "<u4")])
            stream = found["stream"]
            entries = entries[(entries["id"] == stream + b"dc") | (entries["id"] == stream + b"db")]
            # offsets count from the "movi" list's type field, or from the start of the file
            base = found["movi"] if len(entries) and entries["offset"][0] + found["movi"] == frames[0][0] else 0
            for k, ((position, chunk_length), entry) in enumerate(zip(frames, entries)):
                if int(entry["offset"]) + base != position or int(entry["size"]) != chunk_length:
                    placed, problem = k, f"damaged at byte {position}: its index (idx1) places frame {k + 1} elsewhere"
                    break
        return None if problem is None else (placed, problem)


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
        unplaced, unplaced_problem = range(0), None  # video frames that cannot be placed, and why
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
            in_place = avi_frames_in_place(video)
            if in_place is not None and in_place[0] < count:
                placed, problem = in_place
                if problem == "truncated":
                    message = (f"the video file is truncated: only its first {placed} of {count} frames are whole "
                               "(incomplete copy or download?)")
                    unplaced_problem = ("frame lies in the truncated end of the video", "truncated video")
                else:
                    message = (f"the video file is {problem}: only its first {placed} of {count} frames can be "
                               "placed; the later ones cannot be matched to their labels")
                    unplaced_problem = ("frame lies after the damaged part of the video", "damaged video")
                if not report.skip_bad:
                    raise DatasetError(message + " (use --skip-bad to skip the others)", str(video))
                report.note(f"{subject}: {message}")
                # label frames; a partly decoded frame, or one a decoder might count wrongly, is never stored
                unplaced = range(placed + 1, count + 1)
                count = placed
            members = [int(f) - 1 if 1 <= f <= count else None for f in frame_no]
            kind, container, where = "video", str(video), str(video)
            image_frames = np.arange(1, count + 1, dtype=np.int64)
        present = np.array([m is not None for m in members], dtype=bool)
        if not present.all() and not report.skip_bad:
            raise DatasetError(f"{(~present).sum()} labelled frame(s) of {subject} have no image, first: frame "
                               f"{frame_no[~present][0]} (use --skip-bad to skip such frames)", where)
        for f in frame_no[~present]:
            if f in unplaced:
                report.problem(unplaced_problem[0], sequence=subject, frame_no=int(f), path=where,
                               kind=unplaced_problem[1])
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
