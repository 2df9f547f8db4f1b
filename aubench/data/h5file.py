"""Read-only access to one aubench HDF5 file (schema version 2 or 1, see docs/hdf5_schema.md).

`AUFile` validates the file once, keeps the small per-frame metadata (labels, subject and
sequence indices, the sequence table, the folds) in memory, and reads images through an h5py
handle that is opened lazily and once per process. That makes an `AUFile` safe to hand to
DataLoader workers: forked workers never use the parent's handle, and pickling (spawn) drops it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np
import simplejpeg

SCHEMA_VERSION = 2
READ_VERSIONS = (1, 2)   # version 1 files read as before: labeled, landmarks of no known scheme
LANDMARK_SCHEME = "ibug68"  # the one scheme aubench uses (datasets_tools.landmarks)
SPLITS = ("train", "test", "all")

REQUIRED_ROOT_ATTRS = (
    "schema_version", "dataset", "au_names", "label_rule", "image_size", "image_format",
    "crop", "source_root", "converter_version", "created",
)
REQUIRED_DATASETS = (
    "frames/image", "frames/label", "frames/subject", "frames/sequence", "frames/frame_no",
    "sequences/name", "sequences/subject", "sequences/start", "sequences/length",
    "subjects/name",
)
REQUIRED_FOLD_KEYS = ("train_subjects", "test_subjects", "au_rate", "class_weight", "cooccurrence")
# Root attributes left out of the fingerprint: they change when the same data is converted
# again (time of conversion, where the raw tree happened to live), not when the data changes.
FINGERPRINT_SKIPPED_ATTRS = ("created", "source_root")


def _as_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _str_array(values) -> list[str]:
    return [_as_str(v) for v in np.asarray(values).reshape(-1)]


def decode_jpeg(data: np.ndarray, where: str = "") -> np.ndarray:
    """Decode one JPEG file's bytes (uint8 array) to an RGB uint8 (H, W, 3) array.

    libjpeg-turbo through simplejpeg, in strict mode: the fastest decoder of the dependencies
    (benchmarks/bench_loader.py; the same pixels as OpenCV's build of the library), and like the
    converter's check, a JPEG whose decoder reports corrupt data is a ValueError naming `where`,
    not an image with its damaged part made up."""
    try:
        return simplejpeg.decode_jpeg(np.asarray(data, dtype=np.uint8).reshape(-1), colorspace="RGB", strict=True)
    except ValueError as err:
        raise ValueError(f"could not decode the JPEG image {where}".rstrip() + f" (libjpeg: {err})") from None


class AUFile:
    """One aubench HDF5 file: validated metadata in memory, images read on demand.

    Args:
        path: the .h5 file written by `datasets_tools convert`.

    Raises:
        FileNotFoundError: the file does not exist.
        IsADirectoryError: the path is a folder.
        ValueError: the file is not an aubench HDF5 file (names the file and the missing key),
            or its schema version is not the one this code reads.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(f"{self.path}: is a folder; expected an aubench HDF5 file (a raw dataset folder "
                                    f"is converted into one with: datasets_tools convert LAYOUT FOLDER OUT.h5)")
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        self._handle: h5py.File | None = None
        self._handle_pid: int | None = None
        self._image_ds = None
        self._direct_chunks = False
        try:
            f = h5py.File(self.path, "r")
        except OSError as exc:
            raise ValueError(f"{self.path}: not an HDF5 file ({exc})") from None
        with f:
            self._load(f)

    # ------------------------------------------------------------------ loading and checks
    def _fail(self, message: str):
        raise ValueError(f"{self.path}: {message}")

    def _load(self, f: h5py.File) -> None:
        for key in REQUIRED_ROOT_ATTRS:
            if key not in f.attrs:
                self._fail(f"not an aubench HDF5 file: root attribute '{key}' is missing")
        version = int(np.asarray(f.attrs["schema_version"]).reshape(-1)[0])
        if version not in READ_VERSIONS:
            self._fail(f"schema_version is {version}, this aubench reads versions "
                       f"{', '.join(map(str, READ_VERSIONS))}; convert the dataset again with datasets_tools")
        self.schema_version = version
        for key in REQUIRED_DATASETS:
            if key not in f:
                self._fail(f"not an aubench HDF5 file: dataset '{key}' is missing")
        if "folds" not in f or "num_folds" not in f["folds"].attrs:
            self._fail("not an aubench HDF5 file: group 'folds' with attribute 'num_folds' "
                       "is missing")

        self.attrs = {k: f.attrs[k] for k in f.attrs}
        self.dataset = _as_str(f.attrs["dataset"])
        self.au_names = _str_array(f.attrs["au_names"])
        self.image_format = _as_str(f.attrs["image_format"])
        if self.image_format not in ("jpeg", "raw"):
            self._fail(f"image_format is '{self.image_format}', expected 'jpeg' or 'raw'")
        size = np.asarray(f.attrs["image_size"]).reshape(-1)
        if size.shape != (2,):
            self._fail(f"image_size attribute must be [H, W], got {size.tolist()}")
        self.image_size = (int(size[0]), int(size[1]))

        # Version 2 says whether the file holds labels (an `images` conversion does not) and which
        # scheme its landmarks follow; version 1 files are labeled and name no scheme.
        self.labeled = bool(f.attrs.get("labeled", True))
        self.num_landmarks = int(f["frames/landmarks"].shape[1]) if "frames/landmarks" in f else 0
        self.landmark_scheme = (_as_str(f.attrs["landmark_scheme"])
                                if self.num_landmarks and "landmark_scheme" in f.attrs else None)
        self.labels = np.asarray(f["frames/label"][()], dtype=np.int8)
        self.frame_subject = np.asarray(f["frames/subject"][()], dtype=np.int64)
        self.frame_sequence = np.asarray(f["frames/sequence"][()], dtype=np.int64)
        self.frame_no = np.asarray(f["frames/frame_no"][()], dtype=np.int64)
        self.intensity = (np.asarray(f["frames/intensity"][()], dtype=np.int8)
                          if "frames/intensity" in f else None)
        self.subjects = _str_array(f["subjects/name"][()])
        self.sequences = {
            "name": _str_array(f["sequences/name"][()]),
            "subject": np.asarray(f["sequences/subject"][()], dtype=np.int64),
            "start": np.asarray(f["sequences/start"][()], dtype=np.int64),
            "length": np.asarray(f["sequences/length"][()], dtype=np.int64),
        }
        self._check_shapes(f)

        folds = f["folds"]
        self.num_folds = int(folds.attrs["num_folds"])
        self.split_source = _as_str(folds.attrs.get("split_source", ""))
        self._folds = []
        for k in range(1, self.num_folds + 1):
            name = f"fold{k}"
            if name not in folds:
                self._fail(f"not an aubench HDF5 file: group 'folds/{name}' is missing "
                           f"(num_folds = {self.num_folds})")
            group = folds[name]
            for key in REQUIRED_FOLD_KEYS:
                if key not in group:
                    self._fail(f"not an aubench HDF5 file: dataset 'folds/{name}/{key}' "
                               "is missing")
            fold = {
                "train_subjects": _str_array(group["train_subjects"][()]),
                "test_subjects": _str_array(group["test_subjects"][()]),
                "au_rate": np.asarray(group["au_rate"][()], dtype=np.float64),
                "class_weight": np.asarray(group["class_weight"][()], dtype=np.float32),
                "cooccurrence": np.asarray(group["cooccurrence"][()], dtype=np.float64),
                "attrs": {a: group.attrs[a] for a in group.attrs},
            }
            known = set(self.subjects)
            for key in ("train_subjects", "test_subjects"):
                unknown = [s for s in fold[key] if s not in known]
                if unknown:
                    self._fail(f"folds/{name}/{key} names subjects not in subjects/name: "
                               f"{unknown[:5]}")
            self._folds.append(fold)

    def _check_shapes(self, f: h5py.File) -> None:
        n, u = self.num_frames, self.num_aus
        if self.labels.ndim != 2 or self.labels.shape[1] != u:
            self._fail(f"frames/label has shape {self.labels.shape}, expected (N, {u}) "
                       f"for {u} AUs")
        for key in ("subject", "sequence", "frame_no"):
            if f[f"frames/{key}"].shape != (n,):
                self._fail(f"frames/{key} has shape {f[f'frames/{key}'].shape}, expected ({n},)")
        image = f["frames/image"]
        h, w = self.image_size
        expected = (n,) if self.image_format == "jpeg" else (n, h, w, 3)
        if image.shape != expected:
            self._fail(f"frames/image has shape {image.shape}, expected {expected} "
                       f"({self.image_format} mode)")
        seq = self.sequences
        s = len(seq["name"])
        for key in ("subject", "start", "length"):
            if seq[key].shape != (s,):
                self._fail(f"sequences/{key} has shape {seq[key].shape}, expected ({s},)")
        ends = seq["start"] + seq["length"]
        if s and (seq["start"].min() < 0 or ends.max() > n or seq["length"].min() < 1):
            self._fail("sequences/start and sequences/length point outside frames/")
        if int(seq["length"].sum()) != n:
            self._fail(f"sequence lengths sum to {int(seq['length'].sum())}, "
                       f"but there are {n} frames")

    # ------------------------------------------------------------------ metadata
    @property
    def num_aus(self) -> int:
        """Number of AUs (label columns)."""
        return len(self.au_names)

    @property
    def num_frames(self) -> int:
        """Number of frames (rows) in the file."""
        return int(self.labels.shape[0])

    def _check_fold(self, fold: int) -> dict:
        if not isinstance(fold, (int, np.integer)) or not 1 <= fold <= self.num_folds:
            raise ValueError(f"{self.path}: fold {fold!r} is out of range; valid folds are "
                             f"1..{self.num_folds}")
        return self._folds[int(fold) - 1]

    def fold_subjects(self, fold: int) -> tuple[list[str], list[str]]:
        """(train subject names, test subject names) of fold `fold` (1-based)."""
        info = self._check_fold(fold)
        return list(info["train_subjects"]), list(info["test_subjects"])

    def fold_stats(self, fold: int) -> dict[str, np.ndarray]:
        """Training-subject statistics of a fold: "au_rate", "class_weight", "cooccurrence"."""
        info = self._check_fold(fold)
        return {key: info[key].copy() for key in ("au_rate", "class_weight", "cooccurrence")}

    def rows(self, fold: int | None, split: str) -> np.ndarray:
        """Frame rows (sorted int64) of `split` ("train" | "test" | "all") in fold `fold`.

        "all" returns every row; its fold may be None (a given fold is still checked).
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        if split == "all":
            if fold is not None:
                self._check_fold(fold)
            return np.arange(self.num_frames, dtype=np.int64)
        train, test = self.fold_subjects(fold)
        names = train if split == "train" else test
        wanted = np.array([self.subjects.index(s) for s in names], dtype=np.int64)
        return np.flatnonzero(np.isin(self.frame_subject, wanted)).astype(np.int64)

    def fingerprint(self) -> str:
        """sha256 hex digest over root attrs, labels, subjects, sequences and folds.

        Images are not hashed (too slow for large files); their size, format and crop are part
        of the root attributes. "created" and "source_root" are left out so that converting
        the same data again gives the same fingerprint.
        """
        digest = hashlib.sha256()

        def add(tag: str, value) -> None:
            digest.update(tag.encode())
            if isinstance(value, np.ndarray) and value.dtype.kind in "iufb":
                digest.update(str(value.dtype).encode() + str(value.shape).encode())
                digest.update(np.ascontiguousarray(value).tobytes())
            else:
                digest.update(json.dumps(_jsonable(value), sort_keys=True).encode())

        for key in sorted(self.attrs):
            if key not in FINGERPRINT_SKIPPED_ATTRS:
                add(f"attr:{key}", self.attrs[key])
        add("labels", self.labels)
        if self.intensity is not None:
            add("intensity", self.intensity)
        add("frame_subject", self.frame_subject)
        add("frame_sequence", self.frame_sequence)
        add("frame_no", self.frame_no)
        add("subjects", self.subjects)
        for key in ("name", "subject", "start", "length"):
            add(f"sequences:{key}", self.sequences[key])
        add("num_folds", self.num_folds)
        for k, fold in enumerate(self._folds, start=1):
            for key in REQUIRED_FOLD_KEYS:
                add(f"fold{k}:{key}", fold[key])
            for key in sorted(fold["attrs"]):
                add(f"fold{k}:attr:{key}", fold["attrs"][key])
        return digest.hexdigest()

    @property
    def has_scheme_landmarks(self) -> bool:
        """True when the file stores landmarks of aubench's 68-point scheme."""
        return self.landmark_scheme == LANDMARK_SCHEME

    def require_landmarks(self, purpose: str) -> None:
        """ValueError naming the file and `purpose` unless it has 68-point (ibug68) landmarks."""
        if self.has_scheme_landmarks:
            return
        if not self.num_landmarks:
            why = "stores no landmarks"
        elif self.landmark_scheme is None:
            why = (f"stores {self.num_landmarks} landmarks per frame but names no scheme (a schema "
                   f"version {self.schema_version} file, written before aubench recorded one)")
        else:
            why = f"stores landmarks of the scheme {self.landmark_scheme!r}, not {LANDMARK_SCHEME!r}"
        self._fail(f"{purpose} needs the 68-point {LANDMARK_SCHEME} landmarks, and this file {why}; "
                   f"convert the dataset again with `datasets_tools convert ... --landmarks detect` (or "
                   f"--landmarks file with 68-point landmark files)")

    def require_labels(self, purpose: str) -> None:
        """ValueError naming the file and `purpose` when the file holds no AU labels."""
        if not self.labeled or not self.num_aus:
            self._fail(f"{purpose} needs AU labels, and this file holds none (dataset "
                       f"{self.dataset!r}, label rule: {_as_str(self.attrs.get('label_rule', ''))})")

    def read_landmarks(self, rows) -> np.ndarray:
        """float32 (len(rows), 68, 2) landmarks of frame `rows` in stored-image pixels (NaN where
        a frame has none); only for files with 68-point landmarks (require_landmarks)."""
        self.require_landmarks("reading landmarks")
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size == 0:
            return np.zeros((0, self.num_landmarks, 2), dtype=np.float32)
        if rows.min() < 0 or rows.max() >= self.num_frames:
            raise IndexError(f"{self.path}: frame rows must be in 0..{self.num_frames - 1}, "
                             f"got {rows.min()}..{rows.max()}")
        self._images()  # opens this process's handle
        unique, picked = np.unique(rows, return_inverse=True)
        return np.asarray(self._handle["frames/landmarks"][unique], dtype=np.float32)[picked]

    # ------------------------------------------------------------------ images
    def _images(self):
        """The frames/image dataset through a handle owned by the current process."""
        pid = os.getpid()
        if self._handle is None or self._handle_pid != pid:
            # A handle inherited through fork belongs to the parent: leave it alone (closing it
            # here could disturb the parent's HDF5 state) and open our own.
            self._handle = h5py.File(self.path, "r")
            self._handle_pid = pid
            self._image_ds = self._handle["frames/image"]
            self._direct_chunks = self._one_frame_per_plain_chunk(self._image_ds)
        return self._image_ds

    def _one_frame_per_plain_chunk(self, dataset: h5py.Dataset) -> bool:
        """Raw mode with the writer's layout: one chunk per frame, no filters. Such a chunk's
        bytes are the frame, so read_direct_chunk can copy it straight into the output; that
        skips HDF5's chunk cache and selection machinery (about 5x faster per frame)."""
        if self.image_format != "raw" or dataset.chunks != (1, *self.image_size, 3):
            return False
        plist = dataset.id.get_create_plist()
        return plist.get_layout() == h5py.h5d.CHUNKED and plist.get_nfilters() == 0

    def _read_raw_chunks(self, rows: np.ndarray) -> np.ndarray:
        """Raw frames of `rows` read chunk by chunk into one (len(rows), H, W, 3) array."""
        dataset = self._images()
        out = np.empty((rows.size, *self.image_size, 3), dtype=np.uint8)
        for k, row in enumerate(rows.tolist()):
            try:
                dataset.id.read_direct_chunk((row, 0, 0, 0), out=out[k].reshape(-1))
            except RuntimeError:  # a chunk never written reads as the fill value
                out[k] = dataset[row]
        return out

    def read_image(self, row: int) -> np.ndarray:
        """RGB uint8 (H, W, 3) image of frame `row` at the stored size."""
        return self.read_image_list([row])[0]

    def read_images(self, rows) -> np.ndarray:
        """RGB uint8 (len(rows), H, W, 3) images of frame `rows` (any order, repeats allowed).

        Raw frames stored one per unfiltered chunk (the writer's layout) are copied chunk by
        chunk; otherwise rows that lie close together (a clip) are read as one contiguous
        slice, and scattered JPEG rows in one h5py call.
        """
        frames = self.read_image_list(rows)
        if isinstance(frames, np.ndarray):
            return frames
        if not frames:
            return np.zeros((0, *self.image_size, 3), dtype=np.uint8)
        return np.stack(frames)

    def read_image_list(self, rows) -> np.ndarray | list[np.ndarray]:
        """The frames of `read_images` as a sequence of RGB uint8 (H, W, 3) arrays.

        Cheaper when the frames are used one by one: decoded JPEG frames are not copied into
        one batch array (that copy into fresh memory costs about a tenth of the decoding).
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size == 0:
            return []
        if rows.min() < 0 or rows.max() >= self.num_frames:
            raise IndexError(f"{self.path}: frame rows must be in 0..{self.num_frames - 1}, "
                             f"got {rows.min()}..{rows.max()}")
        dataset = self._images()
        if self._direct_chunks:
            return self._read_raw_chunks(rows)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        if hi - lo <= 2 * rows.size:
            block, picked = dataset[lo:hi], rows - lo
        elif self.image_format == "jpeg":
            # One h5py call for scattered rows: each variable-length read has a large fixed
            # cost, a point selection shares it. (Raw rows are read one by one instead, since
            # point selections over chunked fixed-size data are very slow in HDF5.)
            unique, picked = np.unique(rows, return_inverse=True)
            block = dataset[unique]
        else:
            return [dataset[int(r)] for r in rows]
        if self.image_format == "raw":
            return block[picked]
        return [decode_jpeg(block[i], where=f"at row {r} of {self.path}")
                for i, r in zip(picked.tolist(), rows.tolist())]

    def close(self) -> None:
        """Close this process's image handle (reopened on the next read)."""
        if self._handle is not None and self._handle_pid == os.getpid():
            self._handle.close()
        self._handle = self._handle_pid = self._image_ds = None
        self._direct_chunks = False

    def __enter__(self) -> "AUFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = state["_handle_pid"] = state["_image_ds"] = None
        return state

    def __repr__(self) -> str:
        return (f"AUFile({str(self.path)!r}, dataset={self.dataset!r}, frames={self.num_frames}, "
                f"aus={self.num_aus}, image={self.image_format} {self.image_size}, "
                f"folds={self.num_folds})")


def _jsonable(value):
    """Attribute value -> JSON-able Python value (numpy scalars/arrays, bytes -> str)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()] if value.ndim else _jsonable(value.item())
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
