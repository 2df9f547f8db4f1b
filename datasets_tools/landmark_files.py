"""Landmark files of the raw layouts, matched to the frames of a conversion plan
(``--landmarks file``, the default).

Read where the tree has them (or from ``--landmarks-dir DIR``, any of these kinds, told apart by
what the folder holds); the file kind is recorded as the HDF5 file's ``landmarks_source``:
- BP4D, BP4D+ and MME: ``2DFeatures/<Subject>_<Task>.mat``, 49 points per frame
  (``bp4d.read_2dfeatures``; "bp4d-2dfeatures-v7.3" or "bp4d-2dfeatures-v5" by the MATLAB file
  version).
- DISFA: ``Landmark_Points/SN001/tmp_frame_lm/SN001_0000_lm.mat``, 66 points per left-camera
  frame (``disfa.read_landmark_points``; "disfa-landmark-points"). They are the left camera's:
  ``--camera right`` stores no landmarks unless ``Landmarks/RightCamera/`` (the old layout) has them.
- any layout: the old ``Landmarks/<sequence>.csv`` (``raw.read_landmarks``; "csv"), which earlier
  versions of the synthetic generator wrote; read as before, with a note.

The datasets' own files are checked, never trusted silently:
- their frame numbering against the images: every image frame (after the offset) must lie within
  the frames the file covers, else the sequence is malformed (a problem: the conversion stops,
  or its frames are skipped with --skip-bad); entries past the last image are noted and unused.
- malformed entries (another shape, not a MATLAB file, no such variable) are problems naming the
  file and the frame.
- frames flagged bad: a face box centre further than the box's size from the median centre of
  the JUMP_WINDOW frames with landmarks around it (between consecutive frames a face moves far
  less than its size: such a frame is a tracking failure), or points more than OUTSIDE_MARGIN of
  the face box outside the frame. They are counted in the notes and treated as frames without
  landmarks.
Frames without usable landmarks (no entry, an empty entry, flagged bad, or missing the points
the crop needs: the eye and mouth centres for --crop align) follow ``--no-face`` when the crop
uses the landmarks (``--crop landmarks|align``): skipped (listed as "no landmarks") or kept
without landmarks (listed, centre crop); with other crops they are kept without landmarks and
listed. ``--landmarks-offset [NAME=]N`` reads frame f's landmarks from the file's frame f + N.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from scipy.ndimage import median_filter

from . import bp4d, disfa
from .errors import DatasetError, Report
from .faces import landmark_box
from .landmarks import NUM_POINTS, alignable
from .raw import DatasetPlan, LandmarkTrack, SequencePlan, child, find_dirs, read_landmarks, require_dir

OLD_DIR = "Landmarks"                      # the old CSV layout, any dataset
DATASET_DIRS = {"bp4d": "2DFeatures", "bp4d-plus": "2DFeatures", "mme": "2DFeatures", "disfa": "Landmark_Points"}
FOLDER_KINDS = {"2DFeatures": "BP4D 2DFeatures files (<Subject>_<Task>.mat)",
                "Landmark_Points": "DISFA Landmark_Points (SNxxx/ folders of *_lm.mat)"}
JUMP_WINDOW = 25        # frames with landmarks around a frame, for its median face box
OUTSIDE_MARGIN = 0.1    # of the face box's side: how far a point may lie outside the frame

NO_LANDMARKS = "no landmarks"                                # the report's kind of frames skipped for it
NO_LANDMARKS_KEPT = "no landmarks, kept without landmarks"   # ... and of those kept (listed)
BAD_LANDMARKS = "bad landmarks"                              # malformed landmark files (--skip-bad)
CROPS_USING_LANDMARKS = ("landmarks", "align")

_OFFSET = re.compile(r"^(?:(.+)=)?([+-]?\d+)$")


def parse_offset(text: str) -> tuple[str, int]:
    """``--landmarks-offset`` value ``N`` or ``NAME=N`` -> (NAME or "", N)."""
    match = _OFFSET.match(text.strip())
    if match is None:
        raise DatasetError(f"--landmarks-offset {text!r}: expected N or NAME=N (a subject or sequence, e.g. "
                           f"SN031=1), N a whole number")
    return (match.group(1) or "").strip(), int(match.group(2))


def attach_landmarks(plan: DatasetPlan, dataset: str, root: Path, landmarks_dir: Path | None, camera: str,
                     offsets: dict[str, int], report: Report) -> str | None:
    """Read the tree's landmark files into ``plan`` (``seq.landmarks``, ``seq.landmark_problems``)
    -> the landmarks_source name of the files read, None when there are none (nothing attached).
    Frames of malformed files are problems (``report``); frames without usable landmarks get their
    reason in ``landmark_problems``, settled later by ``settle_problems``."""
    folder, layout = _find_folder(dataset, root, landmarks_dir, camera, sum(len(s) for s in plan.sequences), report)
    if folder is None:
        return None
    offset_of = _offsets(plan, offsets)
    if layout == OLD_DIR:
        return _attach_csv(plan, folder, offset_of, report)
    if layout == "2DFeatures":
        files = {m.group(0)[:-4].upper(): p for p in folder.iterdir()
                 if (m := bp4d.FEATURES_FILE.match(p.name)) and p.is_file()}
        sources = {seq.name: files.get(seq.name.replace("/", "_").upper()) for seq in plan.sequences}
        reader, expected = bp4d.read_2dfeatures, "{}.mat"
    else:
        subjects = {p.name.upper(): p for p in folder.iterdir() if p.is_dir() and disfa.SUBJECT.match(p.name)}
        sources = {seq.name: subjects.get(seq.subject.upper()) for seq in plan.sequences}
        reader, expected = disfa.read_landmark_points, "{}/"
    if not any(sources.values()):
        raise DatasetError(f"no landmark file matches a sequence (expected e.g. "
                           f"{expected.format(plan.sequences[0].name.replace('/', '_'))})", str(folder))
    kinds = set()
    for seq in plan.sequences:
        path = sources[seq.name]
        if path is None:
            expected_path = folder / expected.format(seq.name.replace("/", "_"))
            _no_file(seq, f"no landmark file for the sequence (expected {expected_path})")
            continue
        try:
            track = reader(path)
        except DatasetError as e:
            _bad_sequence(seq, e.message, e.path, report)
            continue
        kinds.add(track.kind)
        _attach_track(seq, track, offset_of(seq), report)
    _drop_skipped(plan, report)
    return "+".join(sorted(kinds)) or None


def settle_problems(plan: DatasetPlan, crop: str, no_face: str, report: Report) -> tuple[int, str]:
    """Frames without usable landmarks (their reason in ``landmark_problems``, or lacking what
    ``crop`` needs) follow ``no_face`` when the crop uses the landmarks, else are kept: skipped
    frames leave the plan, kept ones lose their landmarks; both are listed in ``report``. -> (how
    many frames had none, the policy applied)."""
    policy = no_face if crop in CROPS_USING_LANDMARKS else "keep"
    count = 0
    for seq in plan.sequences:
        if seq.landmarks is None:
            continue
        problems = seq.landmark_problems or [None] * len(seq)
        for i, lacking in enumerate(_lacking(seq.landmarks, crop)):
            if lacking and problems[i] is None:
                problems[i] = lacking
        keep = np.ones(len(seq), dtype=bool)
        for i, problem in enumerate(problems):
            if problem is None:
                continue
            count += 1
            seq.landmarks[i] = np.nan
            kind = NO_LANDMARKS if policy == "skip" else NO_LANDMARKS_KEPT
            report.skip(problem, sequence=seq.name, frame_no=int(seq.frame_no[i]), kind=kind)
            keep[i] = policy != "skip"
        seq.landmark_problems = None
        seq.keep(keep)
    _drop_skipped(plan, report)
    if not plan.sequences:
        raise DatasetError(f"no frame has usable landmarks for --crop {crop} (every frame skipped; --no-face keep "
                           f"keeps them)", plan.source_root)
    return count, policy


# ---- where the files are ----------------------------------------------------------------------

def _find_folder(dataset: str, root: Path, landmarks_dir: Path | None, camera: str, frames: int, report: Report):
    """-> (folder, layout: "2DFeatures" | "Landmark_Points" | "Landmarks"), or (None, None); a
    note (counting the plan's ``frames``) when a folder is passed over."""
    if landmarks_dir is not None:
        require_dir(landmarks_dir, "landmarks folder (--landmarks-dir)")
        return landmarks_dir, _layout_of(landmarks_dir, dataset)
    old = child(root, OLD_DIR)
    old = old if old is not None and old.is_dir() else None
    own = DATASET_DIRS.get(dataset)
    found = find_dirs(root, lambda p: p.name.lower() == own.lower(), max_depth=3) if own else []
    if dataset == "disfa" and camera == "right":
        right = child(old, "RightCamera") if old is not None else None
        if right is not None and right.is_dir():
            return right, OLD_DIR
        if found or old is not None:
            report.note("DISFA right camera: the landmark files are the left camera's (no Landmarks/RightCamera/ "
                        "folder); landmarks not stored", frames)
        return None, None
    if found:
        if old is not None:
            report.note(f"landmarks read from {found[0].name}/; {OLD_DIR}/ (the old CSV layout) is not read "
                        f"(--landmarks-dir chooses)", frames)
        return found[0], own
    if old is not None:
        return old, OLD_DIR
    return None, None


def _layout_of(folder: Path, dataset: str) -> str:
    """What a --landmarks-dir folder holds, checked against the dataset."""
    entries = list(folder.iterdir())
    if any(p.suffix.lower() == ".csv" and p.is_file() for p in entries):
        return OLD_DIR
    if any(bp4d.FEATURES_FILE.match(p.name) and p.is_file() for p in entries):
        layout = "2DFeatures"
    elif any(p.is_dir() and disfa.SUBJECT.match(p.name) for p in entries):
        layout = "Landmark_Points"
    else:
        raise DatasetError("landmarks folder holds no landmark files (expected <sequence>.csv, BP4D 2DFeatures "
                           "<Subject>_<Task>.mat files or DISFA Landmark_Points SNxxx/ folders)", str(folder))
    if DATASET_DIRS.get(dataset) != layout:
        raise DatasetError(f"the landmarks folder holds {FOLDER_KINDS[layout]}, which {dataset} does not read",
                           str(folder))
    return layout


def _offsets(plan: DatasetPlan, offsets: dict[str, int]):
    """-> sequence -> its frame offset: a NAME=N entry for its sequence ("F001/T1" or "F001_T1")
    or subject wins over a bare N; a NAME matching nothing is an error."""
    named = {name.upper().replace("_", "/"): n for name, n in offsets.items() if name}
    known = {seq.name.upper() for seq in plan.sequences} | {seq.subject.upper() for seq in plan.sequences}
    unknown = sorted(set(named) - known)
    if unknown:
        raise DatasetError(f"--landmarks-offset {unknown[0]}=...: no sequence or subject of that name")

    def offset_of(seq: SequencePlan) -> int:
        return named.get(seq.name.upper(), named.get(seq.subject.upper(), offsets.get("", 0)))

    return offset_of


# ---- reading ----------------------------------------------------------------------------------

def _attach_csv(plan: DatasetPlan, folder: Path, offset_of, report: Report) -> str:
    files = {p.stem.lower(): p for p in folder.iterdir() if p.suffix.lower() == ".csv"}
    if not files:
        raise DatasetError("landmarks folder holds no .csv files", str(folder))
    points = None
    read = 0
    for seq in plan.sequences:
        path = files.get(seq.name.replace("/", "_").lower())
        if path is None:
            continue
        seq.landmarks = read_landmarks(path, seq.frame_no + offset_of(seq))
        if points is not None and seq.landmarks.shape[1] != points:
            raise DatasetError(f"{seq.landmarks.shape[1]} landmarks per frame, other files have {points}", str(path))
        points = seq.landmarks.shape[1]
        missing = np.isnan(seq.landmarks).all(axis=(1, 2))
        seq.landmark_problems = [f"no row for frame {f + offset_of(seq)} in {path}" if m else None
                                 for f, m in zip(seq.frame_no, missing)]
        read += len(seq)
    if points is None:
        raise DatasetError("no landmarks file matches a sequence (expected e.g. F001_T1.csv or SN001.csv)",
                           str(folder))
    for seq in plan.sequences:
        if seq.landmarks is None:
            expected_path = folder / f"{seq.name.replace('/', '_')}.csv"
            _no_file(seq, f"no landmarks file for the sequence (expected {expected_path})", points)
    report.note(f"landmarks read from {OLD_DIR}/<sequence>.csv, the old layout of earlier synthetic trees", read)
    return "csv"


def _no_file(seq: SequencePlan, reason: str, points: int = NUM_POINTS) -> None:
    seq.landmarks = np.full((len(seq), points, 2), np.nan, np.float32)
    seq.landmark_problems = [reason] * len(seq)


def _bad_sequence(seq: SequencePlan, message: str, path: str | None, report: Report) -> None:
    """A malformed landmark file: a problem for each of the sequence's frames (the first raises
    unless --skip-bad); the frames are dropped after the reading (``_drop_skipped``)."""
    for f in seq.frame_no:
        report.problem(message, sequence=seq.name, frame_no=int(f), path=path, kind=BAD_LANDMARKS)
    _no_file(seq, message)


def _drop_skipped(plan: DatasetPlan, report: Report) -> None:
    """Drop the frames ``report`` skipped for bad landmark files, and sequences left empty."""
    bad = {(s.sequence, s.frame_no) for s in report.skips if s.kind == BAD_LANDMARKS}
    for seq in plan.sequences:
        if bad:
            seq.keep(np.array([(seq.name, int(f)) not in bad for f in seq.frame_no], dtype=bool))
        if not len(seq):
            report.note(f"{seq.name}: every frame skipped, sequence not stored")
    plan.sequences = [seq for seq in plan.sequences if len(seq)]


def _attach_track(seq: SequencePlan, track: LandmarkTrack, offset: int, report: Report) -> None:
    """Match one sequence's frames to its track (frame f -> the track's frame f + offset)."""
    for note, count in track.notes:
        report.note(note, count)
    if not len(track.frames):
        _bad_sequence(seq, "the file holds no frame", track.source, report)
        return
    if track.malformed and not report.skip_bad:
        first = min(track.malformed)
        report.problem(track.malformed[first], sequence=seq.name, frame_no=first - offset, path=track.entry(first),
                       kind=BAD_LANDMARKS)
    if not _frames_agree(seq, track, offset, report):
        return
    wanted = seq.frame_no.astype(np.int64) + offset
    unused = len(set(track.malformed) - set(wanted.tolist()))
    if unused:  # --skip-bad: malformed entries of frames without labels skip nothing
        report.note(f"{track.source}: malformed landmark entries of frames without labels, not used", unused)
    valid = ~track.empty & np.isfinite(track.points).any(axis=(1, 2))
    valid &= ~np.isin(track.frames, list(track.malformed))
    jumps = np.zeros(len(track.frames), dtype=bool)
    jumps[valid] = _jumps(track.points[valid])
    if jumps.any():
        report.note(f"{seq.name}: landmark frames flagged bad: the face box jumps by more than its size (treated "
                    f"as frames without landmarks)", int(jumps.sum()))
    outside = np.zeros(len(track.frames), dtype=bool)
    outside[valid] = _outside(track.points[valid], _frame_size(seq))
    if outside.any():
        report.note(f"{seq.name}: landmark frames flagged bad: points outside the frame (treated as frames "
                    f"without landmarks)", int(outside.sum()))
    position = np.minimum(np.searchsorted(track.frames, wanted), len(track.frames) - 1)
    found = track.frames[position] == wanted
    seq.landmarks = np.full((len(seq), NUM_POINTS, 2), np.nan, np.float32)
    seq.landmark_problems = []
    for i, (frame, at, here) in enumerate(zip(wanted.tolist(), position.tolist(), found.tolist())):
        problem = None
        if not here:
            problem = f"no landmark entry: {track.entry(frame)}"
        elif frame in track.malformed:
            report.problem(track.malformed[frame], sequence=seq.name, frame_no=int(seq.frame_no[i]),
                           path=track.entry(frame), kind=BAD_LANDMARKS)  # dropped by _drop_skipped
            problem = track.malformed[frame]
        elif not valid[at]:
            problem = f"empty landmark entry (the tracker lost the face): {track.entry(frame)}"
        elif jumps[at]:
            problem = f"landmarks flagged bad (the face box jumps by more than its size): {track.entry(frame)}"
        elif outside[at]:
            problem = f"landmarks flagged bad (points outside the frame): {track.entry(frame)}"
        else:
            seq.landmarks[i] = track.points[at]
        seq.landmark_problems.append(problem)


def _frames_agree(seq: SequencePlan, track: LandmarkTrack, offset: int, report: Report) -> bool:
    """Check the track's frames against the sequence's images; a disagreement is a problem for
    every frame of the sequence (False). Entries past the last image are noted."""
    if seq.image_frames is None or not len(seq.image_frames):
        return True
    needed = seq.image_frames + offset
    first, last = int(track.frames[0]), int(track.frames[-1])
    outside = needed[(needed < first) | (needed > last)]
    if len(outside):
        image = int(outside[0]) - offset
        shift = f" (offset {offset})" if offset else ""
        _bad_sequence(seq, f"the landmark entries cover frames {first}..{last}{shift}, but image frame {image} "
                           f"lies outside them ({len(seq.image_frames)} images, frames {seq.image_frames[0]}.."
                           f"{seq.image_frames[-1]}): the landmark frames disagree with the images; if the files "
                           f"count frames from another base, --landmarks-offset {seq.name}=N reads frame f's "
                           f"landmarks from the files' frame f + N", track.entry(image + offset), report)
        return False
    extra = last - int(needed.max())
    if extra > 0:
        report.note(f"{track.source}: landmark entries past the last image (frame {seq.image_frames[-1]}), not used",
                    extra)
    return True


def _jumps(points: np.ndarray) -> np.ndarray:
    """bool (m,): frames (consecutive frames with landmarks) whose face box centre lies further
    than the box's longer side (the median over the window) from the median centre of the
    JUMP_WINDOW frames around it."""
    if len(points) < 3:
        return np.zeros(len(points), dtype=bool)
    low, high = np.nanmin(points, axis=1), np.nanmax(points, axis=1)
    centre, side = (low + high) / 2, (high - low).max(axis=1)
    window = min(JUMP_WINDOW, len(points) | 1)
    median_centre = median_filter(centre, size=(window, 1), mode="nearest")
    median_side = median_filter(side, size=window, mode="nearest")
    return np.linalg.norm(centre - median_centre, axis=1) > median_side


def _outside(points: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """bool (m,): frames (each with some points) with a point more than OUTSIDE_MARGIN of the face
    box outside a frame of ``size`` (width, height); all False when the size is not known."""
    if size is None or not len(points):
        return np.zeros(len(points), dtype=bool)
    low, high = np.nanmin(points, axis=1), np.nanmax(points, axis=1)
    margin = OUTSIDE_MARGIN * (high - low).max(axis=1, keepdims=True)
    edge = np.array(size, np.float32) - 0.5
    return ((low < -0.5 - margin) | (high > edge + margin)).any(axis=1)


def _frame_size(seq: SequencePlan) -> tuple[int, int] | None:
    """(width, height) of the sequence's frames, from its first image's header (or the video);
    None when it cannot be read (the frame's decoding reports that)."""
    try:
        if seq.source_kind == "video":
            capture = cv2.VideoCapture(seq.container)
            try:
                size = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
            finally:
                capture.release()
            return size if min(size) > 0 else None
        if seq.source_kind == "zip":
            with zipfile.ZipFile(seq.container) as archive:
                return Image.open(io.BytesIO(archive.read(seq.members[0]))).size
        return Image.open(seq.members[0]).size
    except (OSError, KeyError, zipfile.BadZipFile, Image.UnidentifiedImageError):
        return None


def _lacking(landmarks: np.ndarray, crop: str) -> list:
    """Per frame: what it lacks for ``crop`` (None when nothing)."""
    if crop == "align":
        usable = alignable(landmarks)
        why = "the landmarks lack the eye or mouth points --crop align needs"
    elif crop == "landmarks":
        usable = np.array([landmark_box(p, 0.0) is not None for p in landmarks], dtype=bool)
        why = "fewer than two distinct landmark points for --crop landmarks"
    else:
        usable = np.isfinite(landmarks).any(axis=(1, 2))
        why = "no landmark points"
    return [None if u else why for u in usable]
