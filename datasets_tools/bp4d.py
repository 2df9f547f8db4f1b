"""BP4D reader (also the occurrence-code reader BP4D+ and MME share).

Layout, as the dataset ships (names matched ignoring case):
- occurrence codes ``AUCoding/AU_OCC/F001_T1.csv`` (or ``AUCoding/*.csv``,
  ``AUCoding/AUCoding/*.csv``): a header row of AU numbers (``0`` = the frame-number column),
  values 1 / 0 and 9 = unknown (stored as -1). Columns are found by header name, never position.
- images ``<subject>/<task>/<frame>.jpg`` somewhere under the root (``2D+``,
  ``BP4D-training``, ...); zero padding varies, so frames match by integer frame number.
- optional intensities ``AU Intensity Codes3.0/AU06/F001_T1_AU06.csv``: ``frame,intensity``
  rows, no header, 9 = unknown.
- optional landmarks ``2DFeatures/F001_T1.mat`` (``read_2dfeatures``; BP4D+ and MME ship the
  same folder): the 49 points of the dataset's face tracker per frame.
"""

from __future__ import annotations

import os
import re
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from .errors import DatasetError, Report
from .landmarks import BP4D_49, to_scheme
from .raw import (DatasetPlan, LandmarkTrack, SequencePlan, au_name, fast_table, find_dirs, index_image_dir,
                  load_mat_v5, mat_variables, mat_version, parse_int, read_csv, rows_of_width)

BP4D_AUS = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
MAX_AU = 99  # FACS action unit (and head / eye / gross behaviour) codes are 1..99
OCCURRENCE_RULE = "occurrence codes, 9 = unknown"

SEQUENCE_FILE = re.compile(r"^([A-Za-z]+\d+)_([A-Za-z]*\d+)\.csv$")
SUBJECT_DIR = re.compile(r"^[A-Za-z]+\d+$")
INTENSITY_FILE = re.compile(r"^([A-Za-z]+\d+)_([A-Za-z]*\d+)_AU(\d+)\.csv$", re.IGNORECASE)


def _is_label_dir(path: Path) -> bool:
    return path.name.lower() in ("au_occ", "aucoding") and any(
        SEQUENCE_FILE.match(p.name) for p in path.iterdir() if p.is_file())


def find_label_dir(root: Path) -> Path:
    found = find_dirs(root, _is_label_dir, max_depth=3)
    if not found:
        raise DatasetError("no occurrence-code folder found (expected AUCoding/AU_OCC/F001_T1.csv "
                           "style files under the dataset root); is this the right folder?", str(root))
    return found[0]


def read_occurrence_csv(path: Path, sequence: str, au_numbers, report: Report):
    """-> (frame_no int32 (n,), label int8 (n, U)) from one occurrence-code file."""
    rows = read_csv(path)
    if not rows:
        raise DatasetError("empty occurrence-code file", str(path))
    header_line, header = rows[0]
    if len(set(header)) < len(header) and sum(c in ("0", "1", "9") for c in header) >= len(header) - 1:
        raise DatasetError("no header row: the first line holds occurrence codes, not AU numbers (expected a "
                           "header of AU numbers, 0 for the frame number)", str(path), header_line)
    columns: dict[int, int] = {}
    for position, cell in enumerate(header):
        try:
            number = int(cell)
        except ValueError:
            number = -1
        if not 0 <= number <= MAX_AU:
            raise DatasetError(f"unknown AU column {cell!r} (header cell {position + 1}): header cells "
                               f"must be AU numbers 1..{MAX_AU}, 0 for the frame number", str(path), header_line)
        if number in columns:
            raise DatasetError(f"AU column {number} appears twice in the header", str(path), header_line)
        columns[number] = position
    if 0 not in columns:
        raise DatasetError("no frame-number column (header cell '0')", str(path), header_line)
    missing = [au_name(a) for a in au_numbers if a not in columns]
    if missing:
        raise DatasetError(f"missing AU column(s) {', '.join(missing)}", str(path), header_line)
    wanted = [columns[0]] + [columns[a] for a in au_numbers]
    table = fast_table(path, header=True)
    if table is not None and len(table[0]) == len(header):
        values = table[1][:, wanted]
        if np.isin(values[:, 1:], (0, 1, 9)).all() and len(np.unique(values[:, 0])) == len(values) \
                and np.array_equal(values[:, 0], np.round(values[:, 0])):
            order = np.argsort(values[:, 0], kind="stable")
            label = values[order, 1:].astype(np.int8)
            label[label == 9] = -1
            return values[order, 0].astype(np.int32), label
    frames, labels, seen = [], [], set()
    for line, cells in rows_of_width(path, rows[1:], len(header), report, sequence=sequence, kind="bad label row"):
        try:
            values = [int(cells[c]) for c in wanted]
        except ValueError:
            column = next(c for c in wanted if not cells[c].lstrip("-").isdigit())
            expected = ("an integer frame number" if column == columns[0] else
                        f"an integer occurrence code (0, 1 or 9) for AU{header[column]}")
            report.problem(f"non-numeric value {cells[column]!r}: expected {expected}", sequence=sequence,
                           path=str(path), line=line, kind="bad label row")
            continue
        frame, codes = values[0], values[1:]
        if any(c not in (0, 1, 9) for c in codes):
            bad = next(c for c in codes if c not in (0, 1, 9))
            report.problem(f"occurrence code {bad} is not 0, 1 or 9", sequence=sequence, frame_no=frame,
                           path=str(path), line=line, kind="bad label row")
            continue
        if frame in seen:
            report.problem(f"duplicate frame {frame}", sequence=sequence, frame_no=frame, path=str(path),
                           line=line, kind="duplicate frame")
            continue
        seen.add(frame)
        frames.append(frame)
        labels.append(codes)
    frame_no = np.asarray(frames, dtype=np.int32)
    label = np.asarray(labels, dtype=np.int8).reshape(len(frames), len(au_numbers))
    label[label == 9] = -1
    order = np.argsort(frame_no, kind="stable")
    return frame_no[order], label[order]


def find_intensity_files(root: Path) -> dict[tuple[str, int], Path]:
    """(sequence file stem in lower case, AU number) -> intensity file, over every intensity
    folder (``AU Intensity Codes3.0``, ``AU_INT``, ...) found under the root."""
    def is_intensity_dir(p: Path) -> bool:
        name = p.name.lower().replace(" ", "_")
        return name.startswith("au_int") or "intensity" in name

    files: dict[tuple[str, int], Path] = {}
    for directory in find_dirs(root, is_intensity_dir, max_depth=3):
        for path in sorted(directory.rglob("*")):
            match = INTENSITY_FILE.match(path.name)
            if match and path.is_file():
                key = (f"{match.group(1)}_{match.group(2)}".lower(), int(match.group(3)))
                files.setdefault(key, path)
    return files


def read_intensity_csv(path: Path, frame_no: np.ndarray, sequence: str, report: Report) -> np.ndarray:
    """``frame,intensity`` rows -> int8 (n,) aligned with ``frame_no`` (-1 unknown or absent)."""
    out = np.full(len(frame_no), -1, dtype=np.int8)
    table = fast_table(path, header=False)
    if table is not None and table[1].shape[1] == 2:
        frames, values = table[1][:, 0], table[1][:, 1]
        valid = np.isin(values, (0, 1, 2, 3, 4, 5, 9)).all() and len(np.unique(frames)) == len(frames)
        if valid and np.array_equal(frames, np.round(frames)):
            lookup = dict(zip(frames.astype(np.int64).tolist(), np.where(values == 9, -1, values).astype(int).tolist()))
            return np.array([lookup.get(int(f), -1) for f in frame_no], dtype=np.int8)
    position = {int(f): i for i, f in enumerate(frame_no)}
    seen = set()
    for line, cells in rows_of_width(path, read_csv(path), 2, report, sequence=sequence, kind="bad intensity row"):
        frame = parse_int(cells[0], path, line, "frame number")
        value = parse_int(cells[1], path, line, "intensity")
        if frame in seen:
            report.problem(f"duplicate frame {frame}", sequence=sequence, frame_no=frame, path=str(path),
                           line=line, kind="duplicate frame")
            continue
        seen.add(frame)
        if value == 9:
            value = -1
        elif not 0 <= value <= 5:
            report.problem(f"intensity {value} is not 0..5 or 9", sequence=sequence, frame_no=frame,
                           path=str(path), line=line, kind="bad intensity row")
            continue
        if frame in position:
            out[position[frame]] = value
    return out


def find_image_folders(root: Path, subjects: set[str]) -> dict[tuple[str, str], tuple]:
    """(SUBJECT, TASK) -> ("files", folder) for extracted trees ``<subject>/<task>/*.jpg``, or
    ("zip", zip path) for ``<subject>.zip`` archives (BP4D+'s ``2D+3D``). First found wins."""
    found: dict[tuple[str, str], tuple] = {}

    def visit(directory: Path, depth: int) -> None:
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda e: e.name)
        for entry in entries:
            name = entry.name.upper()
            if entry.is_dir() and name in subjects:
                with os.scandir(entry.path) as tasks:
                    for task in sorted(tasks, key=lambda e: e.name):
                        if task.is_dir():
                            found.setdefault((name, task.name.upper()), ("files", Path(task.path)))
            elif entry.is_file() and name.endswith(".ZIP") and name[:-4] in subjects:
                found.setdefault((name[:-4], "*"), ("zip", Path(entry.path)))
            elif entry.is_dir() and depth < 3:  # subject folders are never searched into
                visit(Path(entry.path), depth + 1)

    visit(root, 0)
    return found


def index_zip(path: Path, subject: str, report: Report) -> dict[str, dict[int, str]]:
    """TASK -> {frame number -> member} for members ``<...>/<task>/<frame>.jpg`` of a zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise DatasetError(f"cannot open zip archive ({e})", str(path)) from None
    tasks: dict[str, dict[int, str]] = {}
    for member in names:
        parts = member.rstrip("/").split("/")
        if len(parts) < 2:
            continue
        stem, dot, suffix = parts[-1].rpartition(".")
        if not dot or f".{suffix.lower()}" not in (".jpg", ".jpeg", ".png") or not stem.isdigit():
            continue
        frames = tasks.setdefault(parts[-2].upper(), {})
        number = int(stem)
        if number in frames:
            report.problem(f"duplicate frame {number}: {frames[number]} and {member}",
                           sequence=f"{subject}/{parts[-2]}", frame_no=number, path=str(path),
                           kind="duplicate image")
            continue
        frames[number] = member
    return tasks


def plan_occurrence_dataset(root: Path, dataset: str, report: Report, au_numbers=BP4D_AUS,
                            subject_filter=None, progress: bool = False, coded_tasks=None) -> DatasetPlan:
    """Parse every occurrence-code file and locate its images (BP4D, BP4D+ and MME).
    ``coded_tasks``: the only tasks the dataset codes; label files of other tasks mean the tree is
    another dataset's (BP4D codes T1..T8, BP4D+ and MME only T1 T6 T7 T8)."""
    label_dir = find_label_dir(root)
    label_files = sorted((p for p in label_dir.iterdir() if p.is_file() and SEQUENCE_FILE.match(p.name)),
                         key=lambda p: p.name.upper())
    keyed = {}
    for path in label_files:
        match = SEQUENCE_FILE.match(path.name)
        subject, task = match.group(1).upper(), match.group(2).upper()
        if subject_filter is not None and not subject_filter(subject):
            continue
        if (subject, task) in keyed:
            raise DatasetError(f"two label files for {subject}/{task}: {keyed[(subject, task)].name} and "
                               f"{path.name}", str(label_dir))
        keyed[(subject, task)] = path
    if not keyed:
        raise DatasetError("no occurrence-code files for this dataset's subjects", str(label_dir))
    if coded_tasks is not None:
        foreign = sorted({task for _, task in keyed} - set(coded_tasks))
        if foreign:
            example = next(path.name for (_, task), path in sorted(keyed.items()) if task == foreign[0])
            bp4d_like = set(foreign) <= {f"T{k}" for k in range(1, 9)}
            raise DatasetError(f"label files for task(s) {', '.join(foreign)} (e.g. {example}), which {dataset} "
                               f"does not code (only {' '.join(coded_tasks)})" +
                               ("; this looks like a BP4D tree: convert it as bp4d" if bp4d_like else ""),
                               str(label_dir))
    subjects = {s for s, _ in keyed}
    images = find_image_folders(root, subjects)
    if not images:
        raise DatasetError(f"no image folders found (expected <subject>/<task>/<frame>.jpg, e.g. "
                           f"{min(subjects)}/T1/..., or <subject>.zip archives)", str(root))
    intensity_files = find_intensity_files(root)
    zip_index: dict[str, dict[str, dict[int, str]]] = {}
    sequences = []
    for (subject, task), path in tqdm(sorted(keyed.items()), desc="read labels", unit="sequence",
                                      disable=not progress, file=sys.stderr):
        name = f"{subject}/{task}"
        frame_no, label = read_occurrence_csv(path, name, au_numbers, report)
        if len(frame_no) == 0:
            report.problem("label file has no frame rows", sequence=name, path=str(path), kind="empty sequence")
            continue
        intensity = None
        stem = f"{subject}_{task}".lower()
        if intensity_files:
            intensity = np.full(label.shape, -1, dtype=np.int8)
            for column, au in enumerate(au_numbers):
                intensity_path = intensity_files.get((stem, au))
                if intensity_path is not None:
                    intensity[:, column] = read_intensity_csv(intensity_path, frame_no, name, report)
        source = images.get((subject, task))
        if source is None and (subject, "*") in images:
            zip_path = images[(subject, "*")][1]
            if subject not in zip_index:
                zip_index[subject] = index_zip(zip_path, subject, report)
            frames = zip_index[subject].get(task)
            kind, container = "zip", str(zip_path)
            if frames is None:
                frames = {}
                report.problem(f"no {task}/ images in {zip_path.name}", sequence=name, path=str(zip_path),
                               kind="missing images")
        elif source is not None:
            kind, container = "files", None
            frames = index_image_dir(source[1], name, report)
        else:
            report.problem(f"no image folder {subject}/{task}/ found under {root}", sequence=name,
                           path=str(path), kind="missing images")
            continue
        members = [frames.get(int(f)) for f in frame_no]
        present = np.array([m is not None for m in members], dtype=bool)
        if not present.all():
            where = container or str(source[1])
            missing = frame_no[~present]
            if not report.skip_bad:
                raise DatasetError(f"{len(missing)} labelled frame(s) of {name} have no image, first: frame "
                                   f"{missing[0]} (use --skip-bad to skip such frames)", where)
            for f in missing:
                report.problem("missing image", sequence=name, frame_no=int(f), path=where, kind="missing image")
        plan = SequencePlan(subject, name, frame_no, label, intensity, kind, container, members, str(path),
                            image_frames=np.array(sorted(frames), dtype=np.int64))
        if not present.all():
            plan.keep(present)
        if len(plan):
            sequences.append(plan)
    if not sequences:
        raise DatasetError("no frame could be planned (every sequence was skipped)", str(root))
    return DatasetPlan(dataset, [au_name(a) for a in au_numbers], OCCURRENCE_RULE, str(root), sequences)


def plan(root: Path, options, report: Report) -> DatasetPlan:
    return plan_occurrence_dataset(root, "BP4D", report, progress=getattr(options, "progress", False))


# ---- landmarks: 2DFeatures/<Subject>_<Task>.mat ------------------------------------------------

FEATURES_FILE = re.compile(r"^([A-Za-z]+\d+)_([A-Za-z]*\d+)\.mat$")
FEATURES_POINTS = len(BP4D_49)


def read_2dfeatures(path: Path) -> LandmarkTrack:
    """One ``2DFeatures/<Subject>_<Task>.mat`` file -> its frames' landmarks in the 68-point scheme.

    The variable ``fit`` is a struct array with one element per frame, in either form the
    datasets ship, told apart by its fields (and read from either container, told apart by the
    file: an HDF5 file is MATLAB v7.3, read with h5py, anything else v5, read with scipy):
    - BP4D: ``fit(k).pred``, the 49 x 2 [x y] points of frame k (1-based, the frame numbers of
      the JPEG names and of the occurrence codes); MATLAB v7.3, where each element is an object
      reference to a (2, 49) dataset.
    - BP4D+: ``fit(k).frame`` (the frame number) and ``fit(k).pts_2d`` (49 x 2); MATLAB v5.
    An empty array is a frame the tracker lost. The 49 points are ``landmarks.BP4D_49``; the
    head pose (``pose`` / ``headPose``) is not read. A file with another variable or field, or
    an entry of another shape, is named (the file, and the frame for an entry).
    """
    version = mat_version(path)
    kind = f"bp4d-2dfeatures-{version}"
    if version == "v7.3":
        frames, entries = _fit_entries_v73(path)
    else:
        frames, entries = _fit_entries_v5(path)
    points = np.full((len(entries), FEATURES_POINTS, 2), np.nan, np.float32)
    empty = np.zeros(len(entries), dtype=bool)
    malformed = {}
    for k, (field_name, value) in enumerate(entries):
        if value is None or value.size == 0:
            empty[k] = True
        elif value.shape == (FEATURES_POINTS, 2):
            points[k] = value
        else:
            shape = " x ".join(str(v) for v in value.shape)
            malformed[int(frames[k])] = f"{field_name} is {shape}, expected {FEATURES_POINTS} x 2 [x y] or empty"
    order = np.argsort(frames, kind="stable")
    frames = np.asarray(frames, dtype=np.int64)[order]
    duplicate = frames[1:][np.diff(frames) == 0]
    if len(duplicate):
        raise DatasetError(f"frame {duplicate[0]} appears twice in fit(k).frame", str(path))
    position = {int(f): int(i) + 1 for i, f in zip(order, frames)}

    def entry(frame: int) -> str:
        at = position.get(int(frame))
        return f"{path}, frame {frame}" + (f" (fit({at}))" if at is not None else " (no fit element)")

    return LandmarkTrack(kind, str(path), frames, to_scheme(points[order], BP4D_49), empty[order], entry,
                         malformed)


def _fit_entries_v73(path: Path):
    """-> (frame numbers, [(field, value in MATLAB's rows x columns, or None when empty)]) of
    fit in a MATLAB v7.3 file."""
    try:
        with h5py.File(path, "r") as f:
            fit = f.get("fit")
            if not isinstance(fit, h5py.Group):
                raise DatasetError(_no_fit(path, fit is not None), str(path))
            field_name = _points_field(path, list(fit))
            refs = _refs(path, fit, field_name)
            values = [_dereference(f, ref) for ref in refs]
            if field_name == "pred":
                return np.arange(1, len(values) + 1), [(field_name, v) for v in values]
            frames = [_dereference(f, ref) for ref in _refs(path, fit, "frame")]
            return _frame_numbers(path, frames), [(field_name, v) for v in values]
    except OSError as e:
        raise DatasetError(f"not a readable MATLAB v7.3 file ({e})", str(path)) from None


def _fit_entries_v5(path: Path):
    """The same from a MATLAB v5 file."""
    fit = load_mat_v5(path, ["fit"]).get("fit")
    if fit is None or fit.dtype.names is None:
        raise DatasetError(_no_fit(path, fit is not None), str(path))
    field_name = _points_field(path, list(fit.dtype.names))
    elements = fit.ravel(order="F")  # MATLAB's element order
    values = [_numeric(element[field_name]) for element in elements]
    if field_name == "pred":
        frames = np.arange(1, len(values) + 1)
    else:
        frames = _frame_numbers(path, [_numeric(element["frame"]) for element in elements])
    return frames, [(field_name, v) for v in values]


def _no_fit(path: Path, present: bool) -> str:
    if present:
        return "the variable 'fit' is not a struct array (expected one element per frame)"
    return f"no variable 'fit' (the file holds: {', '.join(mat_variables(path)) or 'nothing readable'})"


def _points_field(path: Path, fields: list[str]) -> str:
    if "pred" in fields:
        return "pred"
    if "pts_2d" in fields and "frame" in fields:
        return "pts_2d"
    raise DatasetError(f"fit has no field pred (BP4D) or frame and pts_2d (BP4D+); its fields: {', '.join(fields)}",
                       str(path))


def _refs(path: Path, fit: h5py.Group, field_name: str) -> np.ndarray:
    node = fit.get(field_name)
    if not isinstance(node, h5py.Dataset) or h5py.check_ref_dtype(node.dtype) is None:
        raise DatasetError(f"fit.{field_name} is not a struct field of object references", str(path))
    return node[()].ravel(order="F")


def _dereference(f: h5py.File, ref):
    """A v7.3 struct field element -> its numeric value in MATLAB's orientation, None when empty."""
    if not ref:
        return None
    node = f[ref]
    if not isinstance(node, h5py.Dataset) or node.dtype.kind not in "fiu":
        return np.zeros((1, 1, 1))  # not a numeric array: reported as a wrong shape
    # MATLAB stores [] as its dimensions, a 2-vector of uint64, marked MATLAB_empty (attributes are
    # read for such small vectors only: reading them costs as much as the points)
    if node.size == 0 or (node.shape == (2,) and node.dtype.kind == "u" and node.attrs.get("MATLAB_empty", 0)):
        return None
    return np.asarray(node[()], dtype=np.float64).T


def _numeric(value):
    """A v5 struct field element -> a float array, None when empty."""
    value = np.asarray(value)
    if value.size == 0:
        return None
    if value.dtype.kind not in "fiu":
        return np.zeros((1, 1, 1))  # not a numeric array: reported as a wrong shape
    return value.astype(np.float64)


def _frame_numbers(path: Path, values) -> np.ndarray:
    frames = []
    for k, value in enumerate(values):
        if value is None or value.size != 1 or not float(value.ravel()[0]).is_integer():
            raise DatasetError(f"fit({k + 1}).frame is not one whole number", str(path))
        frames.append(int(value.ravel()[0]))
    return np.asarray(frames, dtype=np.int64)
