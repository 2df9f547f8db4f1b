"""Shared pieces of the raw-layout readers: the conversion plan, case-insensitive path lookup,
CSV parsing with file/line errors (every row exactly as many cells as the header), image-folder
indexing, the old CSV landmark files and what the datasets' own landmark files (MATLAB) read
into."""

from __future__ import annotations

import csv
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import scipy.io

from .errors import DatasetError, Report

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass
class SequencePlan:
    """One sequence to convert: labels already parsed, images still to decode.

    ``source_kind`` says how ``members`` are read: "files" (paths on disk), "zip" (member names
    inside the zip ``container``) or "video" (0-based frame indices in the video ``container``).
    """

    subject: str
    name: str
    frame_no: np.ndarray          # int32 (n,), sorted
    label: np.ndarray             # int8 (n, U), -1 unknown
    intensity: np.ndarray | None  # int8 (n, U), -1 unknown
    source_kind: str
    container: str | None
    members: list
    label_file: str
    landmarks: np.ndarray | None = None  # float32 (n, P, 2), original-frame pixels, NaN missing
    # Why a frame's landmarks cannot be used (no entry, an empty entry, a jump, ...), None where
    # they can; set while landmark files are read, settled by landmark_files.settle_problems.
    landmark_problems: list | None = None
    # Every frame number (label numbering) that has an image, labelled or not, where the layout
    # knows them: landmark files are checked against it. None: not known.
    image_frames: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frame_no)

    def keep(self, mask: np.ndarray) -> None:
        """Drop frames where ``mask`` is False (frames skipped while planning)."""
        self.frame_no = self.frame_no[mask]
        self.label = self.label[mask]
        if self.intensity is not None:
            self.intensity = self.intensity[mask]
        if self.landmarks is not None:
            self.landmarks = self.landmarks[mask]
        if self.landmark_problems is not None:
            self.landmark_problems = [p for p, k in zip(self.landmark_problems, mask) if k]
        self.members = [m for m, k in zip(self.members, mask) if k]


@dataclass
class DatasetPlan:
    dataset: str
    au_names: list[str]
    label_rule: str
    source_root: str
    sequences: list[SequencePlan]
    extras: dict = field(default_factory=dict)
    # How a layout with its own split scheme (Aff-Wild2) chooses its folds: (frame count per
    # subject, --folds-seed) -> (test subjects per fold, split_source). None: folds.choose_folds.
    choose_folds: Callable[[dict[str, int], int], tuple[list[list[str]], str]] | None = None


def au_name(number: int) -> str:
    return f"AU{number}"


def child(directory: Path, name: str) -> Path | None:
    """The entry of ``directory`` named ``name``, ignoring case (None when absent)."""
    exact = directory / name
    if exact.exists():
        return exact
    if not directory.is_dir():
        return None
    lowered = name.lower()
    for entry in directory.iterdir():
        if entry.name.lower() == lowered:
            return entry
    return None


def find_dirs(root: Path, matches, max_depth: int = 3) -> list[Path]:
    """Directories under ``root`` (root included, breadth first, sorted) for which
    ``matches(path)`` is true, searched at most ``max_depth`` levels deep."""
    found = []
    level = [root]
    for depth in range(max_depth + 1):
        following = []
        for directory in level:
            if matches(directory):
                found.append(directory)
            if depth == max_depth:
                continue
            try:
                following.extend(sorted(p for p in directory.iterdir() if p.is_dir()))
            except OSError:
                continue
        level = following
    return found


def require_dir(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{what} not found", str(path))
    if not path.is_dir():
        raise DatasetError(f"{what} is not a folder", str(path))
    return path


def read_csv(path: Path) -> list[tuple[int, list[str]]]:
    """Non-empty rows of a comma-separated file as (1-based line number, stripped cells)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = []
            for line_no, cells in enumerate(csv.reader(f), start=1):
                cells = [c.strip() for c in cells]
                if any(cells):
                    rows.append((line_no, cells))
            return rows
    except UnicodeDecodeError as e:
        raise DatasetError(f"not a text CSV file ({e.reason})", str(path)) from None
    except OSError as e:
        raise DatasetError(f"cannot read ({e.strerror})", str(path)) from None


def rows_of_width(path: Path, rows, width: int, report: Report | None = None, *, sequence: str = "",
                  kind: str = "bad row") -> list[tuple[int, list[str]]]:
    """The rows (from ``read_csv``) that have exactly ``width`` cells, the header's count. Any
    other count - a truncated row, two rows merged onto one line - is a problem naming file and
    line: raised when ``report`` is None or strict, else a skip of ``kind`` counted in the report.
    Every CSV reader checks its rows here, so none keeps a row whose cells may be shifted."""
    kept = []
    for line, cells in rows:
        if len(cells) == width:
            kept.append((line, cells))
            continue
        what = "truncated row" if len(cells) < width else "too many values (rows merged onto one line?)"
        message = f"{what}: expected {width} values, found {len(cells)}"
        if report is None:
            raise DatasetError(message, str(path), line)
        report.problem(message, sequence=sequence, path=str(path), line=line, kind=kind)
    return kept


def fast_table(path: Path, header: bool):
    """Fast path for well-formed numeric CSV files: -> (header cells or None, float64 (rows,
    cols)), or None when the file is not a clean rectangle of numbers (every line as many cells
    as the first); callers then parse it row by row with ``read_csv`` and ``rows_of_width`` to
    report the offending line."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None
    lines = [line for line in text.replace("\r", "").split("\n") if line.strip()]
    if header:
        if not lines:
            return None
        head, lines = [c.strip() for c in lines[0].split(",")], lines[1:]
        columns = len(head)
    else:
        head = None
        columns = lines[0].count(",") + 1 if lines else 0
    if not lines or any(line.count(",") != columns - 1 for line in lines):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        try:
            values = np.fromstring(",".join(lines), dtype=np.float64, sep=",")
        except (ValueError, DeprecationWarning):
            return None
    if values.size != len(lines) * columns or not np.isfinite(values).all():
        return None
    return head, values.reshape(len(lines), columns)


def parse_int(cell: str, path: Path, line: int, what: str) -> int:
    """An integer cell; '12.0' style floats with no fraction are accepted (some exports)."""
    try:
        return int(cell)
    except ValueError:
        try:
            value = float(cell)
        except ValueError:
            raise DatasetError(f"{what} {cell!r} is not a number", str(path), line) from None
        if not value.is_integer():
            raise DatasetError(f"{what} {cell!r} is not an integer", str(path), line) from None
        return int(value)


_NUMBER = re.compile(r"^(\d+)$")


def index_image_dir(directory: Path, sequence: str, report: Report) -> dict[int, str]:
    """Map integer frame number -> image path for the image files of one folder.

    Zero padding varies between sequences, so files are matched by the integer value of their
    stem; two files with the same number (e.g. 0012.jpg and 12.jpg) are a duplicate frame.
    """
    frames: dict[int, str] = {}
    with os.scandir(directory) as entries:
        names = sorted(e.name for e in entries if _may_be_file(e))
    for name in names:
        stem, suffix = os.path.splitext(name)
        if suffix.lower() not in IMAGE_SUFFIXES:
            continue
        match = _NUMBER.match(stem)
        if match is None:
            continue
        number = int(match.group(1))
        path = os.path.join(directory, name)
        if number in frames:
            report.problem(f"duplicate frame {number}: {os.path.basename(frames[number])} and {name}",
                           sequence=sequence, frame_no=number, path=str(directory), kind="duplicate image")
            continue
        frames[number] = path
    return frames


def _may_be_file(entry: os.DirEntry) -> bool:
    """Whether a folder entry is a file, or a name that cannot be resolved (a symlink loop, a
    link into a folder that cannot be read): those stay in the index, so reading the image
    fails with the reason, naming it, instead of the listing failing with a traceback."""
    try:
        return entry.is_file()
    except OSError:
        return True


def read_landmarks(path: Path, frame_no: np.ndarray) -> np.ndarray:
    """The old landmark layout ``Landmarks/<sequence>.csv`` (written by earlier versions of the
    synthetic generator), header ``frame,x0,y0,x1,y1,...`` -> float32 (n, P, 2) aligned with
    ``frame_no`` (NaN for frames the file does not list)."""
    table = fast_table(path, header=True)
    rows = None
    if table is None:
        rows = read_csv(path)
        if not rows:
            raise DatasetError("empty landmarks file", str(path))
        header_line, header = rows[0]
    else:
        header_line, header = 1, table[0]
    if header[0].lower() != "frame" or len(header) < 3 or len(header) % 2 == 0:
        raise DatasetError("landmarks header must be 'frame,x0,y0,x1,y1,...'", str(path), header_line)
    points = (len(header) - 1) // 2
    out = np.full((len(frame_no), points, 2), np.nan, dtype=np.float32)
    if table is None:
        _landmark_row_error(path, header, rows[1:])
    values = table[1]
    if not np.array_equal(values[:, 0], np.round(values[:, 0])):
        _landmark_row_error(path, header, read_csv(path)[1:])
    frames = values[:, 0].astype(np.int64)
    unique, first = np.unique(frames, return_index=True)
    if len(unique) != len(frames):
        duplicate = np.setdiff1d(np.arange(len(frames)), first)[0]
        raise DatasetError(f"duplicate frame {frames[duplicate]}", str(path), int(duplicate) + 2)
    position = np.searchsorted(unique, frame_no)
    found = (position < len(unique)) & (unique[np.minimum(position, len(unique) - 1)] == frame_no)
    out[found] = values[first[position[found]], 1:].reshape(-1, points, 2)
    return out


def _landmark_row_error(path: Path, header: list[str], body) -> None:
    """Raise the error of the first bad landmark row (file and line)."""
    for line, cells in rows_of_width(path, body, len(header)):
        parse_int(cells[0], path, line, "frame number")
        try:
            [float(c) for c in cells[1:]]
        except ValueError:
            raise DatasetError("non-numeric landmark coordinate", str(path), line) from None
    raise DatasetError("unreadable landmarks file", str(path))


@dataclass
class LandmarkTrack:
    """One sequence's landmarks as a dataset's landmark file(s) hold them, in the files' own frame
    numbering, mapped into the 68-point scheme (``landmarks.to_scheme``)."""

    kind: str                     # the file kind, recorded as the HDF5 file's landmarks_source
    source: str                   # the file, or the folder of per-frame files, for messages
    frames: np.ndarray            # int64 (m,) sorted: every frame the files have an entry for
    points: np.ndarray            # float32 (m, 68, 2); NaN for an empty entry and for points the files lack
    empty: np.ndarray             # bool (m,): the entry is empty (the tracker lost the face)
    entry: Callable[[int], str]   # frame -> where its entry is (or would be), for messages
    malformed: dict = field(default_factory=dict)  # frame -> what is wrong with its entry
    notes: list = field(default_factory=list)      # (one-line note, count) pairs for the report


def mat_version(path: Path) -> str:
    """"v7.3" for a MATLAB v7.3 file (an HDF5 file, read with h5py), else "v5" (scipy.io)."""
    return "v7.3" if h5py.is_hdf5(path) else "v5"


def load_mat_v5(path: Path, names: list[str]) -> dict:
    """The variables ``names`` of a MATLAB v5 file (scipy.io.loadmat, structs as record arrays);
    a missing variable is absent from the result. DatasetError naming the file when it is not
    a MATLAB file."""
    try:
        return scipy.io.loadmat(path, variable_names=names, squeeze_me=False, struct_as_record=True)
    # scipy raises NotImplementedError for MAT formats it does not read (a v7.3 file, which
    # mat_version sends to h5py instead, or a v4 file), ValueError / TypeError for damaged ones
    except (ValueError, TypeError, OSError, NotImplementedError) as e:
        raise DatasetError(f"not a readable MATLAB file ({e})", str(path)) from None


def mat_variables(path: Path) -> list[str]:
    """Names of the variables a MATLAB file (v5 or v7.3) holds, for messages."""
    try:
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                return [name for name in f if not name.startswith("#")]
        return [name for name, _, _ in scipy.io.whosmat(path)]
    except (ValueError, TypeError, OSError):
        return []


def read_mat_matrix(path: Path, name: str) -> np.ndarray:
    """The numeric matrix ``name`` of a MATLAB file, v5 or v7.3, in MATLAB's orientation (rows
    x columns); an empty matrix comes back with size 0. DatasetError naming the file and the
    variables it holds when ``name`` is missing or not numeric."""
    if mat_version(path) == "v7.3":
        try:
            with h5py.File(path, "r") as f:
                node = f.get(name)
                if isinstance(node, h5py.Dataset) and node.dtype.kind in "fiu":
                    if node.attrs.get("MATLAB_empty", 0):
                        return np.zeros((0, 0))
                    return np.asarray(node[()], dtype=np.float64).T  # HDF5 keeps MATLAB's column-major order
        except OSError as e:
            raise DatasetError(f"not a readable MATLAB v7.3 file ({e})", str(path)) from None
    else:
        value = load_mat_v5(path, [name]).get(name)
        if isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
            return value.astype(np.float64)
    held = ", ".join(mat_variables(path)) or "nothing readable"
    raise DatasetError(f"no numeric variable {name!r} (the file holds: {held})", str(path))
