"""Aff-Wild2 reader: the AU detection track of the ABAW challenge, in its distribution layout.

Layout (names matched ignoring case):
- ``Annotations/AU_Detection_Challenge/Train_Set/<video>.txt`` and ``.../Validation_Set/<video>.txt``:
  the first line is the AU header ``AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26``
  (columns are found by name), then one line per video frame, line i + 1 for frame i counting
  from 1, values 0 / 1, or -1 where the frame is not annotated (stored as -1, unknown).
- ``cropped_aligned/<video>/<frame:05d>.jpg``: the challenge's cropped and aligned faces (112 x 112),
  only for frames where its face detector found the face; no landmarks ship with them.
- a video showing two people has two annotation files and two face folders, ``<video>_left`` and
  ``<video>_right``: each is its own sequence.
- ``cropped_aligned`` also holds the faces of videos of the other ABAW tracks; folders without an
  AU annotation file are counted in a note and not converted.

Stored: every annotation line that has a face image, as frame i with its labels; a line of -1 on
every AU is stored with unknown labels (clips keep their frames; counted in a note). Reported,
never stored: annotated frames without a face image (skip kind ``no face image``) and face images
without an annotation line (``face image without annotation``), listed in ``OUT.skipped.txt``
whether or not ``--skip-bad`` is given, because the dataset has them by design (they are gaps, not
errors). A malformed annotation file (header, a line's number of values, a value outside
{-1, 0, 1}) is an error naming file and line; with ``--skip-bad`` a bad line is a counted skip.

Subjects: Aff-Wild2 names no persons, so the video is the subject-exclusive unit: a sequence's
subject is its video, the sequence name without ``_left`` / ``_right``, which keeps both people of
a video on the same side of every fold. (When the official sets put the two people of one video in
different sets, each keeps its own sequence name as subject, with a note: the official split wins.)

Splits (``--affwild2-split``, recorded in the root attribute ``split_scheme``):
- ``official`` (default): one fold, training on the Train_Set videos and testing on the
  Validation_Set videos (the challenge's test labels are not public);
- ``kfold``: ``--affwild2-folds`` K (default 5, as the ViViT-ensemble paper) folds over the
  Train_Set videos, balanced by frame count (``folds.balanced_split``, ``--folds-seed``); the
  Validation_Set is not converted into such a file (a note says how many of its videos were left).
  Departure from the ViViT-ensemble paper: its Table 1 trains on k-fold parts of the Train_Set and
  scores every fold's model on the Validation_Set; here each fold tests on its held-out Train_Set
  videos, so that a file's folds are a cross-validation that covers it, as for every other dataset
  (train and test subjects of a fold partition the file; `verify` checks it). The paper's setting
  per fold is the official split's test set with a fifth of the training videos left out, which
  no file of ours holds.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from .errors import DatasetError, Report
from .folds import balanced_split
from .raw import (IMAGE_SUFFIXES, DatasetPlan, SequencePlan, au_name, child, fast_table, find_dirs, index_image_dir,
                  require_dir, rows_of_width)

DATASET = "Aff-Wild2"
AFFWILD2_AUS = (1, 2, 4, 6, 7, 10, 12, 15, 23, 24, 25, 26)
LABEL_RULE = "per-frame occurrence 0/1, -1 = frame not annotated"
ANNOTATION_DIR = ("Annotations", "AU_Detection_Challenge")
TRAIN_SET, VALIDATION_SET = "Train_Set", "Validation_Set"
FACES_DIR = "cropped_aligned"
FACE_SIZE = 112                 # the side of the challenge's cropped and aligned faces
PERSON_SUFFIXES = ("_left", "_right")
SPLITS = ("official", "kfold")
DEFAULT_KFOLDS = 5

NO_FACE_IMAGE = "no face image"
IMAGE_WITHOUT_ANNOTATION = "face image without annotation"


def header() -> str:
    """The first line of every annotation file."""
    return ",".join(au_name(a) for a in AFFWILD2_AUS)


def annotation_text(labels: np.ndarray) -> str:
    """An annotation file's text for int8 labels (n, 12) in AFFWILD2_AUS order (-1 unknown)."""
    return header() + "\n" + "".join(",".join(map(str, row)) + "\n" for row in np.asarray(labels).tolist())


def face_file(frame: int) -> str:
    return f"{frame:05d}.jpg"


def video_of(sequence: str) -> str:
    """The video a sequence comes from: its name without the _left / _right of a two-person video."""
    for suffix in PERSON_SUFFIXES:
        if sequence.lower().endswith(suffix) and len(sequence) > len(suffix):
            return sequence[:-len(suffix)]
    return sequence


# ---- annotation files ----------------------------------------------------------------------

def _header_columns(cells: list[str], path: Path) -> list[int]:
    """Position of each AU of AFFWILD2_AUS in the header line (line 1)."""
    expected = [au_name(a) for a in AFFWILD2_AUS]
    if all(c.lstrip("-").isdigit() for c in cells):
        raise DatasetError(f"no header line: the first line holds values, not the AU names (expected "
                           f"{header()})", str(path), 1)
    positions: dict[str, int] = {}
    for position, cell in enumerate(cells):
        name = cell.upper()
        if name not in expected:
            raise DatasetError(f"unknown column {cell!r} (header cell {position + 1}): the header must name the "
                               f"{len(expected)} AUs {header()}", str(path), 1)
        if name in positions:
            raise DatasetError(f"column {name} appears twice in the header", str(path), 1)
        positions[name] = position
    missing = [n for n in expected if n not in positions]
    if missing:
        raise DatasetError(f"missing AU column(s) {', '.join(missing)} (expected {header()})", str(path), 1)
    return [positions[n] for n in expected]


def read_annotation(path: Path, sequence: str, report: Report) -> tuple[np.ndarray, np.ndarray]:
    """One annotation file -> (labels int8 (n, 12) in AFFWILD2_AUS order, row i = frame i + 1;
    bad bool (n,): lines skipped as bad with --skip-bad, never stored). A bad line is an error
    naming file and line unless ``report.skip_bad``. Line numbers, not a frame column, give the
    frame, so a blank line inside the file is a bad line, never silently dropped."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"not a text file ({e.reason})", str(path)) from None
    except OSError as e:
        raise DatasetError(f"cannot read ({e.strerror})", str(path)) from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():  # a final newline or trailing blank lines
        lines.pop()
    if not lines:
        raise DatasetError(f"empty annotation file (expected the header {header()})", str(path))
    columns = _header_columns([c.strip() for c in lines[0].split(",")], path)
    body = lines[1:]
    width = len(AFFWILD2_AUS)
    if all(line.strip() for line in body):
        table = fast_table(path, header=True)  # the common, well-formed case, in one pass
        if table is not None and table[1].shape == (len(body), width):
            values = table[1]
            if np.isin(values, (-1, 0, 1)).all():
                return values[:, columns].astype(np.int8), np.zeros(len(body), dtype=bool)
    # Line by line, to name the first bad line (or to skip each bad one with --skip-bad).
    labels = np.full((len(body), width), -1, dtype=np.int8)
    bad = np.ones(len(body), dtype=bool)
    rows = [(index + 2, [c.strip() for c in line.split(",")]) for index, line in enumerate(body)]
    for line, cells in rows_of_width(path, rows, width, report, sequence=sequence, kind="bad label row"):
        frame = line - 1
        wrong = next(((au, cells[c]) for au, c in zip(AFFWILD2_AUS, columns) if _label_value(cells[c]) is None), None)
        if wrong is not None:
            report.problem(f"value {wrong[1]!r} ({au_name(wrong[0])}) is not -1, 0 or 1", sequence=sequence,
                           frame_no=frame, path=str(path), line=line, kind="bad label row")
            continue
        labels[frame - 1] = [_label_value(cells[c]) for c in columns]
        bad[frame - 1] = False
    return labels, bad


def _label_value(cell: str) -> int | None:
    """-1, 0 or 1 from one cell ("1.0" style exports too), None for anything else."""
    try:
        value = float(cell)
    except ValueError:
        return None
    return int(value) if value in (-1.0, 0.0, 1.0) else None


# ---- the tree ------------------------------------------------------------------------------

def find_annotation_dir(root: Path) -> Path:
    """``Annotations/AU_Detection_Challenge`` (or a folder of that name up to 2 levels down)."""
    top = child(root, ANNOTATION_DIR[0])
    direct = child(top, ANNOTATION_DIR[1]) if top is not None and top.is_dir() else None
    if direct is not None and direct.is_dir():
        return direct
    # two levels at most: a third would list every face folder's thousands of images
    found = find_dirs(root, lambda p: p.name.lower() == ANNOTATION_DIR[1].lower(), max_depth=2)
    if not found:
        raise DatasetError(f"no Aff-Wild2 AU annotation folder found (expected {'/'.join(ANNOTATION_DIR)}/"
                           f"{TRAIN_SET}/<video>.txt); is this the right folder?", str(root))
    return found[0]


def find_faces_dir(root: Path, names: set[str]) -> Path:
    """The ``cropped_aligned`` folder holding face folders of annotated videos (``names``, lower
    case); archives often unpack into ``cropped_aligned/cropped_aligned``, so nested ones count."""
    candidates = find_dirs(root, lambda p: p.name.lower() == FACES_DIR, max_depth=2)
    for folder in candidates:
        with os.scandir(folder) as entries:
            if any(e.is_dir() and e.name.lower() in names for e in entries):
                return folder
    where = ""
    if candidates:
        where = f" ({', '.join(str(c) for c in candidates)} hold no face folder of an annotated video)"
    raise DatasetError(f"no {FACES_DIR}/<video>/ face folders found{where}", str(root))


def _annotation_files(annotations: Path, split: str) -> list[tuple[str, str, Path]]:
    """(set, sequence name, file) of every annotation file of the sets the split uses, by name."""
    wanted = (TRAIN_SET, VALIDATION_SET)
    files: list[tuple[str, str, Path]] = []
    seen: dict[str, Path] = {}
    for set_name in wanted:
        folder = child(annotations, set_name)
        if folder is None:
            if set_name == VALIDATION_SET and split == "kfold":
                continue
            raise DatasetError(f"no {set_name}/ folder (the {split} split needs it)", str(annotations))
        require_dir(folder, f"{set_name} annotation folder")
        for path in sorted(folder.iterdir(), key=lambda p: p.name):
            if not path.is_file() or path.suffix.lower() != ".txt" or path.name.startswith("."):
                continue
            key = path.stem.lower()
            if key in seen:
                raise DatasetError(f"video {path.stem} is annotated twice: {seen[key]} and {path}", str(annotations))
            seen[key] = path
            files.append((set_name, path.stem, path))
    for set_name in wanted:
        if split == "official" or set_name == TRAIN_SET:
            if not any(s == set_name for s, _, _ in files):
                raise DatasetError(f"{set_name}/ holds no <video>.txt annotation file", str(annotations))
    return sorted(files, key=lambda f: f[1])


def _count_images(folder: Path) -> int:
    with os.scandir(folder) as entries:
        return sum(e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES for e in entries)


def _count_lines(path: Path) -> int:
    """Frame lines of an annotation file that is not converted (for the note that says so)."""
    try:
        return max(0, sum(1 for line in path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
                          if line.strip()) - 1)
    except OSError:
        return 0


def _plan_sequence(name: str, path: Path, folder: Path, report: Report) -> SequencePlan | None:
    """One sequence: the annotation lines that have a face image. Annotated frames without one,
    and images without an annotation line, are listed as skips; -1 lines counted in notes."""
    labels, bad = read_annotation(path, name, report)
    if len(labels) == 0:
        report.problem("annotation file has no frame lines", sequence=name, path=str(path), kind="empty sequence")
        return None
    images = index_image_dir(folder, name, report)
    frame_no = np.arange(1, len(labels) + 1, dtype=np.int32)
    numbers = np.fromiter(images, dtype=np.int64, count=len(images))
    has_image = np.isin(frame_no, numbers)
    unknown = (labels < 0).all(axis=1) & ~bad
    for frame in frame_no[~has_image & ~unknown & ~bad]:
        report.skip(f"annotated, but there is no {face_file(int(frame))}", sequence=name, frame_no=int(frame),
                    path=str(folder), kind=NO_FACE_IMAGE)
    for frame in np.sort(numbers[(numbers < 1) | (numbers > len(labels))]):
        report.skip(f"{os.path.basename(images[int(frame)])}: no annotation line for frame {frame} ({path.name} "
                    f"annotates frames 1..{len(labels)})", sequence=name, frame_no=int(frame), path=str(folder),
                    kind=IMAGE_WITHOUT_ANNOTATION)
    if (unknown & has_image).any():
        report.note("frames annotated -1 on every AU (not annotated) with a face image: stored with unknown labels",
                    int((unknown & has_image).sum()))
    if (unknown & ~has_image).any():
        report.note("frames annotated -1 on every AU without a face image: nothing to store",
                    int((unknown & ~has_image).sum()))
    members = [images.get(int(f)) for f in frame_no]
    seq = SequencePlan(video_of(name), name, frame_no, labels, None, "files", None, members, str(path))
    seq.keep(has_image & ~bad)
    if not len(seq):
        report.note(f"{name}: no annotated line has a face image, sequence not stored", len(labels))
        return None
    return seq


def plan(root: Path, options, report: Report) -> DatasetPlan:
    split = getattr(options, "affwild2_split", "official")
    kfolds = int(getattr(options, "affwild2_folds", DEFAULT_KFOLDS))
    if split not in SPLITS:
        raise DatasetError(f"--affwild2-split {split!r}: choose one of {', '.join(SPLITS)}")
    if kfolds < 2:
        raise DatasetError(f"--affwild2-folds {kfolds} must be at least 2")
    annotations = find_annotation_dir(root)
    files = _annotation_files(annotations, split)
    faces = find_faces_dir(root, {name.lower() for _, name, _ in files})
    with os.scandir(faces) as entries:
        folders = {e.name.lower(): Path(e.path) for e in entries if e.is_dir() and not e.name.startswith(".")}

    planned: list[tuple[str, SequencePlan]] = []
    left_out = []
    for set_name, name, path in files:
        folder = folders.pop(name.lower(), None)
        if split == "kfold" and set_name == VALIDATION_SET:
            left_out.append(path)
            continue
        if folder is None:
            report.problem(f"no face folder {FACES_DIR}/{name}/ for this annotation file", sequence=name,
                           path=str(path), kind="missing images")
            continue
        seq = _plan_sequence(name, path, folder, report)
        if seq is not None:
            planned.append((set_name, seq))
    if left_out:
        report.note(f"{len(left_out)} {VALIDATION_SET} video(s) not converted (--affwild2-split kfold folds the "
                    f"{TRAIN_SET} only; its annotation lines are counted)", sum(_count_lines(p) for p in left_out))
    if folders:
        report.note(f"{len(folders)} face folder(s) in {FACES_DIR}/ have no AU annotation file (videos of the "
                    f"other ABAW tracks?): not converted; their images are counted",
                    sum(_count_images(f) for f in folders.values()))
    if not planned:
        raise DatasetError("no frame could be planned (every sequence was skipped)", str(root))

    # Subjects: the video, so both people of one video share a side of every fold; unless the
    # official sets part them, in which case the official split wins and each is its own subject.
    sets_of_video: dict[str, set[str]] = defaultdict(set)
    for set_name, seq in planned:
        sets_of_video[seq.subject].add(set_name)
    for set_name, seq in planned:
        if len(sets_of_video[video_of(seq.name)]) > 1:
            report.note(f"{seq.name}: the two people of video {video_of(seq.name)} lie in different sets; "
                        f"each is its own subject", len(seq))
            seq.subject = seq.name
    sequences = [seq for _, seq in planned]
    train = {seq.subject for set_name, seq in planned if set_name == TRAIN_SET}
    test = {seq.subject for set_name, seq in planned if set_name == VALIDATION_SET}
    if split == "official":
        if not train or not test:
            empty = TRAIN_SET if not train else VALIDATION_SET
            raise DatasetError(f"the official split needs videos in {TRAIN_SET} and {VALIDATION_SET}; no "
                               f"{empty} video has a frame to store", str(annotations))
        choose = official_folds(test)
    else:
        if len(train) < kfolds:
            raise DatasetError(f"{len(train)} {TRAIN_SET} video(s) cannot make {kfolds} folds (--affwild2-folds)",
                               str(annotations))
        choose = kfold_folds(kfolds)
    return DatasetPlan(DATASET, [au_name(a) for a in AFFWILD2_AUS], LABEL_RULE, str(root), sequences,
                       extras={"split_scheme": split}, choose_folds=choose)


# ---- splits --------------------------------------------------------------------------------

def official_folds(validation_subjects: set[str]):
    """The challenge's split as one fold: test on the Validation_Set videos, train on the rest."""
    def choose(frame_counts: dict[str, int], seed: int):
        test = sorted(s for s in frame_counts if s in validation_subjects)
        train = len(frame_counts) - len(test)
        if not test or not train:
            raise ValueError(f"the official split needs stored frames of both sets ({train} {TRAIN_SET} and "
                             f"{len(test)} {VALIDATION_SET} videos have some)")
        return [test], (f"official ABAW split: train on {TRAIN_SET} ({train} videos), test on {VALIDATION_SET} "
                        f"({len(test)} videos)")
    return choose


def kfold_folds(num_folds: int):
    """K subject-exclusive folds over the Train_Set videos, balanced by frame count."""
    def choose(frame_counts: dict[str, int], seed: int):
        return balanced_split(frame_counts, seed, num_folds), (
            f"{num_folds}-fold cross-validation over the {TRAIN_SET} videos, balanced by frame count, seed {seed} "
            f"({VALIDATION_SET} not in this file)")
    return choose
