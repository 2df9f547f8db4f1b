"""``datasets_tools verify``: check a converted file against its schema (version 2, or 1) and itself.

Checks: schema (attributes, datasets, dtypes, shapes), counts add up, indices in range,
sequences contiguous and sorted by frame number, folds disjoint and covering, every image
decodes to the stored size (with progress, optionally in a process pool), statistics recomputed
from the labels match the stored ones. Damaged bytes (a dataset, or rows of frames/image, that
cannot be read) are reported as problems naming what could not be read, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import simplejpeg
from tqdm import tqdm

from .affwild2 import SPLITS as SPLIT_SCHEMES
from .folds import fold_statistics
from .hdf5_writer import SCHEMA_VERSION
from .landmarks import NUM_POINTS
from .landmarks import SCHEME as LANDMARK_SCHEME
from .pool import process_pool
from .stats import _strings, open_h5

ROOT_ATTRS = ("schema_version", "dataset", "au_names", "label_rule", "image_size", "image_format", "crop",
              "source_root", "converter_version", "created")
DATASETS = ("BP4D", "DISFA", "BP4D+", "MME", "Aff-Wild2", "images")
# split_scheme (root attribute, Aff-Wild2): "official" is one fixed train/test fold whose test
# subjects do not cover the file; "kfold" is cross-validation like the other files' folds
# (SPLIT_SCHEMES, imported from affwild2).
READ_VERSIONS = (1, SCHEMA_VERSION)  # version 1 files (no landmark scheme, always labeled) still verify
DECODE_CHUNK = 512
RAW_CHUNK = 64  # raw frames are read (not decoded) in smaller blocks: 64 x 256 x 256 x 3 bytes
# What h5py raises when the bytes of a file are damaged (garbage in a heap, a B-tree, a header).
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError)


def _check_images(path: str, start: int, stop: int, height: int, width: int) -> list[str]:
    problems = []
    try:
        with h5py.File(path, "r") as f:
            try:
                images = f["frames/image"][start:stop]
            except H5_ERRORS:
                return _unreadable_rows(f["frames/image"], start, stop)
    except H5_ERRORS as e:
        return [f"frames/image[{start}:{stop}] cannot be read ({e})"]
    if images.dtype == np.uint8:  # raw frames: reading them was the check
        return problems
    for row, data in enumerate(images, start=start):
        # the decoder training uses (aubench.data.decode_jpeg), as strict: a frame verify passes decodes there
        try:
            image = simplejpeg.decode_jpeg(np.asarray(data, dtype=np.uint8), strict=True) if len(data) else None
        except ValueError as err:
            problems.append(f"frames/image[{row}] does not decode (libjpeg: {err})")
            continue
        if image is None:
            problems.append(f"frames/image[{row}] does not decode (no bytes)")
        elif image.shape != (height, width, 3):
            problems.append(f"frames/image[{row}] decodes to {image.shape}, expected {(height, width, 3)}")
    return problems


def _unreadable_rows(images: h5py.Dataset, start: int, stop: int) -> list[str]:
    """Which rows of a block that failed to read cannot be read, as ranges."""
    bad: list[tuple[int, str]] = []
    for row in range(start, stop):
        try:
            images[row]
        except H5_ERRORS as e:
            bad.append((row, str(e)))
    problems, i = [], 0
    while i < len(bad):
        j = i
        while j + 1 < len(bad) and bad[j + 1][0] == bad[j][0] + 1:
            j += 1
        rows = f"[{bad[i][0]}]" if i == j else f"[{bad[i][0]}:{bad[j][0] + 1}]"
        problems.append(f"frames/image{rows} cannot be read ({bad[i][1]})")
        i = j + 1
    return problems


def _unreadable_datasets(f: h5py.File) -> list[str]:
    """Read every dataset but frames/image (checked in blocks later): one problem per failure."""
    names: list[str] = []
    try:
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    except H5_ERRORS as e:
        return [f"cannot read the file's structure ({e})"]
    problems = []
    for name in names:
        if name != "frames/image":
            try:
                f[name][()]
            except H5_ERRORS as e:
                problems.append(f"{name} cannot be read ({e})")
    return problems


def verify(path: Path, workers: int = 1, progress: bool = True, check_images: bool = True) -> list[str]:
    """-> list of problems (empty when the file is valid)."""
    with open_h5(path) as f:
        try:
            return _verify(f, path, workers, progress, check_images)
        except H5_ERRORS as e:  # damage the checks above did not pin to one dataset
            return [f"cannot read the file ({type(e).__name__}: {e}); it is damaged"]


def _verify(f: h5py.File, path: Path, workers: int, progress: bool, check_images: bool) -> list[str]:
    problems: list[str] = []
    missing = [a for a in ROOT_ATTRS if a not in f.attrs]
    if missing:
        return [f"missing root attribute(s): {', '.join(missing)}"]
    unreadable = _unreadable_datasets(f)
    if unreadable:
        return unreadable
    version = int(f.attrs["schema_version"])
    if version not in READ_VERSIONS:
        return [f"schema_version {f.attrs['schema_version']} is not one of {', '.join(map(str, READ_VERSIONS))}"]
    if str(f.attrs["dataset"]) not in DATASETS:
        problems.append(f"dataset {f.attrs['dataset']!r} is not one of {', '.join(DATASETS)}")
    au_names = _strings(f.attrs["au_names"])
    num_aus = len(au_names)
    height, width = (int(v) for v in f.attrs["image_size"])
    image_format = str(f.attrs["image_format"])
    required = {"frames/image": None, "frames/label": np.int8, "frames/subject": np.int32,
                "frames/sequence": np.int32, "frames/frame_no": np.int32, "sequences/name": None,
                "sequences/subject": np.int32, "sequences/start": np.int64, "sequences/length": np.int64,
                "subjects/name": None, "folds": None}
    absent = [name for name in required if name not in f]
    if absent:
        return problems + [f"missing: {', '.join(absent)}"]
    for name, dtype in required.items():
        if dtype is not None and f[name].dtype != dtype:
            problems.append(f"{name} has dtype {f[name].dtype}, expected {np.dtype(dtype)}")
    n = f["frames/label"].shape[0]
    if f["frames/label"].shape != (n, num_aus):
        problems.append(f"frames/label shape {f['frames/label'].shape}, expected {(n, num_aus)}")
    for name in ("frames/subject", "frames/sequence", "frames/frame_no"):
        if f[name].shape != (n,):
            problems.append(f"{name} shape {f[name].shape}, expected {(n,)}")
    image = f["frames/image"]
    if image_format == "jpeg":
        if image.shape != (n,) or h5py.check_vlen_dtype(image.dtype) != np.uint8:
            problems.append(f"frames/image must be vlen uint8 (N,) in jpeg mode, got {image.dtype} {image.shape}")
    elif image_format == "raw":
        if image.shape != (n, height, width, 3) or image.dtype != np.uint8:
            problems.append(f"frames/image shape {image.shape} {image.dtype}, "
                            f"expected {(n, height, width, 3)} uint8")
    else:
        problems.append(f"image_format {image_format!r} is not jpeg or raw")
    label = f["frames/label"][:]
    if not np.isin(label, (-1, 0, 1)).all():
        problems.append("frames/label holds values other than -1, 0, 1")
    if "frames/intensity" in f:
        intensity = f["frames/intensity"]
        if intensity.shape != (n, num_aus) or intensity.dtype != np.int8:
            problems.append(f"frames/intensity shape {intensity.shape} {intensity.dtype}, "
                            f"expected {(n, num_aus)} int8")
        elif not ((intensity[:] >= -1) & (intensity[:] <= 5)).all():
            problems.append("frames/intensity holds values outside -1..5")
    if "frames/landmarks" in f:
        lm = f["frames/landmarks"]
        if lm.ndim != 3 or lm.shape[0] != n or lm.shape[2] != 2 or lm.dtype != np.float32:
            problems.append(f"frames/landmarks shape {lm.shape} {lm.dtype}, expected (N, P, 2) float32")
        elif version >= 2:
            scheme = str(f.attrs.get("landmark_scheme", ""))
            if not scheme:
                problems.append("frames/landmarks present but the landmark_scheme attribute is missing")
            elif scheme == LANDMARK_SCHEME and lm.shape[1] != NUM_POINTS:
                problems.append(f"landmark_scheme {scheme} but frames/landmarks holds {lm.shape[1]} points "
                                f"per frame, not {NUM_POINTS}")
    elif version >= 2 and "landmark_scheme" in f.attrs:
        problems.append("landmark_scheme attribute without frames/landmarks")
    if "frames/source" in f and f["frames/source"].shape != (n,):
        problems.append(f"frames/source shape {f['frames/source'].shape}, expected {(n,)}")
    if version >= 2:
        if "labeled" not in f.attrs:
            problems.append("missing root attribute labeled")
        elif not bool(f.attrs["labeled"]) and num_aus:
            problems.append(f"labeled is false but au_names lists {num_aus} AUs")
        elif bool(f.attrs["labeled"]) and not num_aus:
            problems.append("labeled is true but au_names is empty")

    subjects = _strings(f["subjects/name"][:])
    names = _strings(f["sequences/name"][:])
    seq_subject = f["sequences/subject"][:]
    start = f["sequences/start"][:]
    length = f["sequences/length"][:]
    frame_subject = f["frames/subject"][:]
    frame_sequence = f["frames/sequence"][:]
    frame_no = f["frames/frame_no"][:]
    s = len(names)
    if len(set(subjects)) != len(subjects):
        problems.append("subjects/name has duplicates")
    if len(set(names)) != s:
        problems.append("sequences/name has duplicates")
    if not (len(seq_subject) == len(start) == len(length) == s):
        problems.append("sequences/* arrays differ in length")
        return problems
    if int(length.sum()) != n:
        problems.append(f"sequence lengths add up to {int(length.sum())}, frames/label has {n} rows")
    if (length <= 0).any():
        problems.append("a sequence has no frames")
    expected_start = np.concatenate([[0], np.cumsum(length)[:-1]])
    if not np.array_equal(start, expected_start):
        problems.append("sequences/start is not the running sum of lengths (sequences not contiguous)")
    out_of_range = []
    if ((seq_subject < 0) | (seq_subject >= len(subjects))).any():
        out_of_range.append("sequences/subject out of range")
    if ((frame_subject < 0) | (frame_subject >= len(subjects))).any():
        out_of_range.append("frames/subject out of range")
    if ((frame_sequence < 0) | (frame_sequence >= s)).any():
        out_of_range.append("frames/sequence out of range")
    if out_of_range or int(length.sum()) != n:
        return problems + out_of_range
    if not np.array_equal(frame_sequence, np.repeat(np.arange(s), length)):
        problems.append("frames/sequence does not match the sequence row ranges")
    elif not np.array_equal(frame_subject, seq_subject[frame_sequence]):
        problems.append("frames/subject disagrees with sequences/subject")
    steps = np.diff(frame_no)
    boundaries = np.zeros(max(n - 1, 0), dtype=bool)
    boundaries[(start[1:] - 1)[start[1:] > 0]] = True
    bad = np.flatnonzero((steps <= 0) & ~boundaries)
    if len(bad):
        row = int(bad[0]) + 1
        problems.append(f"frame numbers not strictly increasing within sequence {names[frame_sequence[row]]} "
                        f"(row {row})")

    folds = f["folds"]
    num_folds = int(folds.attrs.get("num_folds", 0))
    if "split_source" not in folds.attrs:
        problems.append("folds has no split_source attribute")
    scheme = str(f.attrs["split_scheme"]) if "split_scheme" in f.attrs else None
    fixed_split = scheme == "official"  # one train/test fold: its test subjects need not cover the file
    if scheme is not None and scheme not in SPLIT_SCHEMES:
        problems.append(f"split_scheme {scheme!r} is not one of {', '.join(SPLIT_SCHEMES)}")
    unlabeled = "labeled" in f.attrs and not bool(f.attrs["labeled"])
    if unlabeled and num_folds == 0:  # an unlabeled file (images, videos) needs no folds
        if list(folds):
            problems.append(f"num_folds is 0 but folds holds {sorted(folds)}")
    elif fixed_split and num_folds != 1:
        problems.append(f"split_scheme official (one train/test fold) but num_folds is {num_folds}")
    elif not fixed_split and num_folds < 2:
        problems.append(f"num_folds is {num_folds}; a cross-validation split needs at least 2 folds"
                        + (f" (split_scheme {scheme})" if scheme else ""))
        return problems
    if num_folds and sorted(folds) != sorted(f"fold{k}" for k in range(1, num_folds + 1)):
        problems.append(f"folds holds {sorted(folds)}, expected fold1..fold{num_folds}")
        return problems
    all_subjects = set(subjects)
    tests = []
    for k in range(1, num_folds + 1):
        group = folds[f"fold{k}"]
        train, test = set(_strings(group["train_subjects"][:])), set(_strings(group["test_subjects"][:]))
        tests.append(test)
        if train & test:
            problems.append(f"fold{k}: train and test share {sorted(train & test)}")
        if train | test != all_subjects:
            problems.append(f"fold{k}: train + test subjects are not exactly subjects/name")
        ids = np.array([i for i, name in enumerate(subjects) if name in train], dtype=np.int64)
        rows = np.isin(frame_subject, ids)
        if int(group.attrs.get("num_train_frames", -1)) != int(rows.sum()):
            problems.append(f"fold{k}: num_train_frames {group.attrs.get('num_train_frames')} != {int(rows.sum())}")
        expected = fold_statistics(label[rows])
        for key, value in expected.items():
            stored = group[key][:] if key in group else None
            if stored is None or stored.shape != value.shape or not np.allclose(stored, value, atol=1e-6):
                problems.append(f"fold{k}/{key} does not match the statistics recomputed from the labels")
    union = set().union(*tests)
    if num_folds and not fixed_split and (union != all_subjects or sum(len(t) for t in tests) != len(all_subjects)):
        problems.append("test subjects of the folds are not disjoint and covering")
    if any(not t for t in tests):
        problems.append("a fold has no test subjects")

    if check_images and n:
        problems += _check_all_images(str(path), n, height, width, workers, progress,
                                      DECODE_CHUNK if image_format == "jpeg" else RAW_CHUNK)
    return problems


def _check_all_images(path: str, n: int, height: int, width: int, workers: int, progress: bool,
                      chunk: int) -> list[str]:
    ranges = [(a, min(a + chunk, n)) for a in range(0, n, chunk)]
    problems: list[str] = []
    bar = tqdm(total=n, desc="verify images", unit="frame", disable=not progress, file=sys.stderr)
    if workers <= 1:
        for a, b in ranges:
            problems += _check_images(path, a, b, height, width)
            bar.update(b - a)
    else:
        with process_pool(workers) as pool:
            futures = [pool.submit(_check_images, path, a, b, height, width) for a, b in ranges]
            for (a, b), future in zip(ranges, futures):
                problems += future.result()
                bar.update(b - a)
    bar.close()
    return problems
