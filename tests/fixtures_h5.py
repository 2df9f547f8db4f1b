"""Small aubench HDF5 files (schema version 1 by default, 2 on request) written directly with
h5py, for data tests.

`write_au_h5` follows docs/hdf5_schema.md field by field, so the readers can be tested without the
converter. Frame images are smooth colour gradients whose colours depend on the row, with a
bright square in the top-left corner (so flips and rotations are visible); with
`constant_per_sequence=True` every frame of a sequence shows the same image.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import cv2
import h5py
import numpy as np

AU_NAMES = ("AU1", "AU2", "AU4", "AU6", "AU12")


def frame_image(key: int, height: int, width: int) -> np.ndarray:
    """Deterministic RGB uint8 (H, W, 3) test image for `key`."""
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    r = (key * 37) % 200 + 40 * x
    g = (key * 91) % 200 + 40 * y
    b = (key * 13) % 150 + 60 * x * y
    image = np.stack(np.broadcast_arrays(r, g, b), axis=-1)
    image[: height // 4, : width // 4] = 250.0
    return np.clip(image, 0, 255).astype(np.uint8)


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> np.ndarray:
    """RGB uint8 image -> the bytes of a JPEG file (uint8 array)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.reshape(-1)


def fold_statistics(labels: np.ndarray) -> dict[str, np.ndarray]:
    """au_rate, class_weight and cooccurrence over the given (training) labels."""
    known = labels >= 0
    positive = labels == 1
    rate = positive.sum(0) / np.maximum(known.sum(0), 1)
    inverse = np.where(rate > 0, 1.0 / np.where(rate > 0, rate, 1.0), 0.0)
    if (rate == 0).any():
        inverse[rate == 0] = inverse.max() if inverse.max() > 0 else 1.0
    weight = (inverse / inverse.mean()).astype(np.float32)
    u = labels.shape[1]
    co = np.zeros((u, u))
    for i in range(u):
        for j in range(u):
            both = known[:, i] & known[:, j] & positive[:, i]
            if both.any():
                co[i, j] = positive[both, j].mean()
        if positive[:, i].any():
            co[i, i] = 1.0
    return {"au_rate": rate.astype(np.float64), "class_weight": weight, "cooccurrence": co}


def write_au_h5(path, *, image_format: str = "raw", num_subjects: int = 6,
                sequence_lengths=(7, 12, 3), image_size=(32, 32), num_folds: int = 3,
                unknown_rate: float = 0.1, constant_per_sequence: bool = False,
                seed: int = 0, label_override: np.ndarray | None = None,
                images: np.ndarray | None = None, jpeg_quality: int = 95,
                schema_version: int = 1, au_names=AU_NAMES, landmarks: np.ndarray | None = None,
                landmark_scheme: str | None = "ibug68") -> Path:
    """Write a small aubench HDF5 file and return its path.

    Every subject gets one sequence per entry of `sequence_lengths`; subjects are dealt into
    `num_folds` test groups round-robin (fold k tests group k, trains on the rest).
    `images` (N, H, W, 3) uint8 replaces the generated test pattern; `au_names` sets the AUs.
    `landmarks` (N, P, 2) float32 are stored as frames/landmarks; a version 2 file also records
    `landmark_scheme` (when not None) and `labeled`.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    h, w = image_size
    subjects = [f"S{p:03d}" for p in range(num_subjects)]
    seq_names, seq_subject, seq_start, seq_length = [], [], [], []
    frame_subject, frame_sequence, frame_no = [], [], []
    row = 0
    for p, subject in enumerate(subjects):
        for t, length in enumerate(sequence_lengths):
            s = len(seq_names)
            seq_names.append(f"{subject}/T{t + 1}")
            seq_subject.append(p)
            seq_start.append(row)
            seq_length.append(length)
            frame_subject += [p] * length
            frame_sequence += [s] * length
            frame_no += list(range(10, 10 + 2 * length, 2))
            row += length
    n = row
    u = len(au_names)
    labels = (rng.random((n, u)) < 0.3).astype(np.int8)
    labels[rng.random((n, u)) < unknown_rate] = -1
    if label_override is not None:
        labels = np.asarray(label_override, dtype=np.int8)
    intensity = np.where(labels == 1, rng.integers(1, 6, (n, u)), 0).astype(np.int8)
    intensity[labels < 0] = -1
    frame_subject = np.asarray(frame_subject, dtype=np.int32)

    str_dt = h5py.string_dtype()
    with h5py.File(path, "w") as f:
        f.attrs["schema_version"] = schema_version
        f.attrs["dataset"] = "BP4D"
        f.attrs["au_names"] = np.array(au_names, dtype=object)
        f.attrs["label_rule"] = "occurrence codes, 9 = unknown"
        f.attrs["image_size"] = np.array([h, w], dtype=np.int64)
        f.attrs["image_format"] = image_format
        f.attrs["crop"] = "none"
        f.attrs["source_root"] = "/data/test"
        f.attrs["converter_version"] = "test"
        f.attrs["created"] = datetime.now(timezone.utc).isoformat()
        frames = f.create_group("frames")
        sequence_of_row = np.asarray(frame_sequence)
        keys = sequence_of_row if constant_per_sequence else np.arange(n)

        def rgb_of(r: int) -> np.ndarray:
            return images[r] if images is not None else frame_image(int(keys[r]), h, w)

        if image_format == "raw":
            image = frames.create_dataset("image", (n, h, w, 3), dtype=np.uint8,
                                          chunks=(1, h, w, 3))
            for r in range(n):
                image[r] = rgb_of(r)
        else:
            # the converter's layout: resizable, chunks of 256 rows
            image = frames.create_dataset("image", (n,), maxshape=(None,), chunks=(256,),
                                          dtype=h5py.vlen_dtype(np.uint8))
            for r in range(n):
                image[r] = encode_jpeg(rgb_of(r), jpeg_quality)
        frames.create_dataset("label", data=labels)
        frames.create_dataset("intensity", data=intensity)
        frames.create_dataset("subject", data=frame_subject)
        frames.create_dataset("sequence", data=np.asarray(frame_sequence, dtype=np.int32))
        frames.create_dataset("frame_no", data=np.asarray(frame_no, dtype=np.int32))
        if landmarks is not None:
            frames.create_dataset("landmarks", data=np.asarray(landmarks, dtype=np.float32))
        if schema_version >= 2:
            f.attrs["labeled"] = bool(len(au_names))
            if landmarks is not None and landmark_scheme is not None:
                f.attrs["landmark_scheme"] = landmark_scheme
        seq = f.create_group("sequences")
        seq.create_dataset("name", data=np.array(seq_names, dtype=object), dtype=str_dt)
        seq.create_dataset("subject", data=np.asarray(seq_subject, dtype=np.int32))
        seq.create_dataset("start", data=np.asarray(seq_start, dtype=np.int64))
        seq.create_dataset("length", data=np.asarray(seq_length, dtype=np.int64))
        f.create_group("subjects").create_dataset(
            "name", data=np.array(subjects, dtype=object), dtype=str_dt)
        folds = f.create_group("folds")
        folds.attrs["num_folds"] = num_folds
        folds.attrs["split_source"] = "test fixture: subjects dealt round-robin"
        for k in range(num_folds):
            test = [s for p, s in enumerate(subjects) if p % num_folds == k]
            train = [s for p, s in enumerate(subjects) if p % num_folds != k]
            g = folds.create_group(f"fold{k + 1}")
            g.create_dataset("train_subjects", data=np.array(train, dtype=object), dtype=str_dt)
            g.create_dataset("test_subjects", data=np.array(test, dtype=object), dtype=str_dt)
            train_rows = np.isin(frame_subject, [subjects.index(s) for s in train])
            for key, value in fold_statistics(labels[train_rows]).items():
                g.create_dataset(key, data=value)
            g.attrs["num_train_frames"] = int(train_rows.sum())
    return path
