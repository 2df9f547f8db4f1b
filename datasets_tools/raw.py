"""Shared pieces of the raw-layout readers: the conversion plan, case-insensitive path lookup,
CSV parsing with file/line errors (every row exactly as many cells as the header), image-folder
indexing and landmark files."""

from __future__ import annotations

import csv
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

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
        names = sorted(e.name for e in entries if e.is_file())
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


def read_landmarks(path: Path, frame_no: np.ndarray) -> np.ndarray:
    """Landmarks file ``frame,x0,y0,x1,y1,...`` -> float32 (n, P, 2) aligned with ``frame_no``
    (NaN for frames the file does not list)."""
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


def attach_landmarks(plan: DatasetPlan, landmarks_dir: Path | None, root: Path) -> None:
    """Attach ``<dir>/<sequence>.csv`` landmarks (sequence "F001_T1" or "SN001") when the folder
    exists; ``landmarks_dir`` (from --landmarks) must exist, ``<root>/Landmarks`` may not."""
    if landmarks_dir is None:
        landmarks_dir = child(root, "Landmarks")
        if landmarks_dir is None or not landmarks_dir.is_dir():
            return
    else:
        require_dir(landmarks_dir, "landmarks folder (--landmarks-dir)")
    files = {p.stem.lower(): p for p in landmarks_dir.iterdir() if p.suffix.lower() == ".csv"}
    if not files:
        raise DatasetError("landmarks folder holds no .csv files", str(landmarks_dir))
    points = None
    for seq in plan.sequences:
        path = files.get(seq.name.replace("/", "_").lower())
        if path is None:
            continue
        seq.landmarks = read_landmarks(path, seq.frame_no)
        if points is not None and seq.landmarks.shape[1] != points:
            raise DatasetError(f"{seq.landmarks.shape[1]} landmarks per frame, other files have {points}",
                               str(path))
        points = seq.landmarks.shape[1]
    if points is None:
        raise DatasetError("no landmarks file matches a sequence (expected e.g. F001_T1.csv or SN001.csv)",
                           str(landmarks_dir))
    for seq in plan.sequences:
        if seq.landmarks is None:
            seq.landmarks = np.full((len(seq), points, 2), np.nan, dtype=np.float32)
