"""The HDF5 writer (schema version 2, docs/hdf5_schema.md).

Frames are appended sequence by sequence into ``<out>.partial`` in the output folder. After each
finished sequence a progress marker (fingerprint of the inputs and options, rows written,
sequences done) is flushed into the file, so a rerun with unchanged inputs continues after the
last finished sequence; anything else restarts cleanly. Only the final step renames the file
to its real name, so a killed conversion never leaves a file that looks finished, and it renames
only the file this writer wrote (the caller holds the output's lock, ``output.OutputLock``).

A write the file system refuses (a full disk, a file-size limit) is one DatasetError naming the
file. It may leave the ``.partial`` damaged (HDF5 had written part of its bookkeeping): before
resuming, the rerun reads the file's marker and the last stored row of every dataset, and a
file that does not read back whole is not resumed but replaced, saying so (``restarted``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
from pathlib import Path

import h5py
import numpy as np

from .errors import DatasetError
from .folds import fold_statistics
from .output import partial_path, skipped_path

SCHEMA_VERSION = 2
CONVERTER_VERSION = "1.0"
STRING = h5py.string_dtype()
PROGRESS = "_progress"
# What h5py raises when the file system refuses a write (HDF5's errors come as either), and also
# when a damaged file's bookkeeping reads back as nonsense.
H5_WRITE_ERRORS = (OSError, RuntimeError)
H5_READ_ERRORS = H5_WRITE_ERRORS + (KeyError, ValueError)


def string_array(values) -> np.ndarray:
    return np.array(list(values), dtype=object)


class FrameWriter:
    def __init__(self, out: Path, fingerprint: str, num_aus: int, image_size: int, image_format: str,
                 has_intensity: bool, num_points: int | None, has_source: bool = False):
        self.out = Path(out)
        self.path = partial_path(self.out)
        self.fingerprint = fingerprint
        self.num_points = num_points
        self.image_format = image_format
        self.file = None
        # why a .partial found here was not resumed (damaged: it does not read back whole), for the report
        self.restarted: str | None = None
        if self.path.exists() or self.path.is_symlink():
            self._resume()
        self.resumed = self.file is not None
        if self.file is None:
            with self.writing():
                self._create(num_aus, image_size, image_format, has_intensity, num_points, has_source)
        self.identity = self._identity()
        progress = self.file[PROGRESS].attrs
        self.rows = int(progress["rows"])
        self.done = json.loads(progress["done"])          # [[plan index, length], ...]
        self.saved_skips = json.loads(progress["skips"])  # decode-time skips of finished sequences
        self.saved_notes = json.loads(progress["notes"])

    def _resume(self) -> None:
        """Open the .partial to continue it when it is this conversion's (same fingerprint) and
        reads back whole, truncated to its last finished sequence; otherwise remove it."""
        try:
            with h5py.File(self.path, "r") as f:  # read-only first: closing a damaged file writes nothing
                progress = f[PROGRESS].attrs if PROGRESS in f else None
                ours = progress is not None and progress.get("fingerprint") == self.fingerprint
                if ours:  # else another conversion's file: start over, as any changed input does
                    rows = int(progress["rows"])
                    json.loads(progress["done"]), json.loads(progress["skips"]), json.loads(progress["notes"])
                    for ds in f["frames"].values():
                        if ds.shape[0] < rows:
                            raise ValueError(f"{ds.name} holds {ds.shape[0]} rows, its marker says {rows}")
                        if rows:
                            ds[rows - 1]  # the newest data and bookkeeping: what a failed write loses
            if ours:
                self.file = h5py.File(self.path, "r+", rdcc_nbytes=0)
                self._truncate(rows)
                self.file.flush()
        except H5_READ_ERRORS as e:
            self.close()
            self.restarted = (f"cannot resume from it: it is damaged ({failure_reason(e)}), as a failed write or "
                              "a crash can leave it; starting over")
        if self.file is None:
            self.path.unlink()

    def _create(self, num_aus, image_size, image_format, has_intensity, num_points, has_source):
        f = self.file = h5py.File(self.path, "w", rdcc_nbytes=0)
        frames = f.create_group("frames")
        if image_format == "jpeg":
            frames.create_dataset("image", (0,), maxshape=(None,), dtype=h5py.vlen_dtype(np.uint8),
                                  chunks=(256,))
        else:
            frames.create_dataset("image", (0, image_size, image_size, 3), maxshape=(None, image_size, image_size, 3),
                                  dtype=np.uint8, chunks=(1, image_size, image_size, 3))
        chunk = 4096
        # an unlabeled file (num_aus 0) still has its (N, 0) label array; HDF5 wants chunks of >= 1
        frames.create_dataset("label", (0, num_aus), maxshape=(None, num_aus or None), dtype=np.int8,
                              chunks=(chunk, max(num_aus, 1)))
        if has_intensity:
            frames.create_dataset("intensity", (0, num_aus), maxshape=(None, num_aus), dtype=np.int8,
                                  chunks=(chunk, num_aus))
        for name in ("sequence", "frame_no"):
            frames.create_dataset(name, (0,), maxshape=(None,), dtype=np.int32, chunks=(chunk,))
        if num_points:
            frames.create_dataset("landmarks", (0, num_points, 2), maxshape=(None, num_points, 2),
                                  dtype=np.float32, chunks=(256, num_points, 2))
        if has_source:
            frames.create_dataset("source", (0,), maxshape=(None,), dtype=STRING, chunks=(chunk,))
        progress = f.create_group(PROGRESS)
        progress.attrs.update({"fingerprint": self.fingerprint, "rows": 0, "done": "[]", "skips": "[]",
                               "notes": "{}"})
        f.flush()

    def _identity(self) -> tuple[int, int]:
        """(device, inode) of the file this writer has open."""
        st = os.fstat(self.file.id.get_vfd_handle())
        return st.st_dev, st.st_ino

    def _truncate(self, rows: int):
        for ds in self.file["frames"].values():
            if ds.shape[0] != rows:
                ds.resize(rows, axis=0)

    @contextlib.contextmanager
    def writing(self):
        """A write the file system refuses (a full disk, a file-size limit) -> one DatasetError
        naming the file, with what to do."""
        try:
            yield
        except H5_WRITE_ERRORS as e:
            self.close()  # nothing more can be written; HDF5 is left nothing to flush at exit
            raise DatasetError(f"cannot write ({failure_reason(e)}: is the disk full, or a file-size limit such as "
                               "ulimit -f reached?); rerun the same command when there is room: it resumes after "
                               "the last finished sequence, or starts over if this file was damaged",
                               str(self.path)) from None

    def append(self, sequence_row: int, frame_no, label, intensity, images: list, landmarks, sources=None) -> None:
        """Append one block of frames (all of one sequence, in frame order)."""
        n = len(frame_no)
        if n == 0:
            return
        with self.writing():
            self._append(sequence_row, frame_no, label, intensity, images, landmarks, sources)

    def _append(self, sequence_row: int, frame_no, label, intensity, images: list, landmarks, sources) -> None:
        n = len(frame_no)
        start, stop = self.rows, self.rows + n
        frames = self.file["frames"]
        for ds in frames.values():
            ds.resize(stop, axis=0)
        if self.image_format == "jpeg":
            # write_direct: Dataset.__setitem__ turns equal-length byte arrays into a 2-D block.
            block = np.empty(n, dtype=frames["image"].dtype)
            for i, image in enumerate(images):
                block[i] = image
            frames["image"].write_direct(block, dest_sel=np.s_[start:stop])
        else:
            frames["image"][start:stop] = np.stack(images)
        frames["label"][start:stop] = label
        if "intensity" in frames:
            frames["intensity"][start:stop] = intensity
        frames["sequence"][start:stop] = sequence_row
        frames["frame_no"][start:stop] = frame_no
        if "landmarks" in frames:
            frames["landmarks"][start:stop] = landmarks
        if "source" in frames:
            frames["source"][start:stop] = string_array(sources)
        self.rows = stop

    def finish_sequence(self, plan_index: int, length: int, skips: list, notes: dict) -> None:
        """Record a finished sequence (the resume point) and flush to disk."""
        self.done.append([plan_index, length])
        self.saved_skips.extend(skips)
        for key, count in notes.items():
            self.saved_notes[key] = self.saved_notes.get(key, 0) + count
        with self.writing():
            progress = self.file[PROGRESS].attrs
            progress["rows"] = self.rows
            progress["done"] = json.dumps(self.done)
            progress["skips"] = json.dumps(self.saved_skips)
            progress["notes"] = json.dumps(self.saved_notes)
            self.file.flush()

    def renumber_sequences(self, rows: np.ndarray) -> None:
        """frames/sequence[i] = rows[frames/sequence[i]] (sequences that lost every frame are not stored)."""
        with self.writing():
            ds = self.file["frames/sequence"]
            ds[...] = rows[ds[:]]

    def finalize(self, attrs: dict, sequence_names, sequence_subjects, subject_names, lengths,
                 folds: list[list[str]], split_source: str, skipped: list[str]) -> None:
        """Write sequences, subjects, folds with statistics and root attributes; rename; write the
        listing of ``skipped`` frames (``OUT.skipped.txt``, none when nothing was skipped)."""
        with self.writing():
            self._finalize(attrs, sequence_names, sequence_subjects, subject_names, lengths, folds, split_source,
                           skipped)

    def _finalize(self, attrs: dict, sequence_names, sequence_subjects, subject_names, lengths,
                  folds: list[list[str]], split_source: str, skipped: list[str]) -> None:
        f = self.file
        lengths = np.asarray(lengths, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        seq_subject = np.asarray(sequence_subjects, dtype=np.int32)
        frame_sequence = f["frames/sequence"][:]
        f["frames"].create_dataset("subject", data=seq_subject[frame_sequence], dtype=np.int32)
        sequences = f.create_group("sequences")
        sequences.create_dataset("name", data=string_array(sequence_names), dtype=STRING)
        sequences.create_dataset("subject", data=seq_subject)
        sequences.create_dataset("start", data=starts)
        sequences.create_dataset("length", data=lengths)
        f.create_group("subjects").create_dataset("name", data=string_array(subject_names), dtype=STRING)
        write_folds(f, folds, split_source)
        for key, value in attrs.items():
            if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
                f.attrs.create(key, data=string_array(value), dtype=STRING)
            else:
                f.attrs[key] = value
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["converter_version"] = CONVERTER_VERSION
        f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        del f[PROGRESS]
        try:
            st = os.stat(self.path)
            ours = (st.st_dev, st.st_ino) == self.identity
        except FileNotFoundError:
            ours = False
        f.close()
        if not ours:
            raise DatasetError("was replaced or removed by another process while this run wrote it; "
                               "not renaming it (run the conversion again)", str(self.path))
        listing = skipped_path(self.out)
        # The old output's listing goes first: a stale listing must never sit beside a new file.
        listing.unlink(missing_ok=True)
        os.replace(self.path, self.out)
        if skipped:
            temporary = listing.with_name(listing.name + ".partial")
            temporary.write_text("".join(f"{line}\n" for line in skipped))
            os.replace(temporary, listing)

    def close(self) -> None:
        """Close the file; after a failed write, as well as HDF5 still can (the failure was reported)."""
        if self.file is not None and self.file.id.valid:
            try:
                self.file.close()
            except H5_WRITE_ERRORS:
                pass
        self.file = None


def failure_reason(error: Exception) -> str:
    """What the operating system said, out of an HDF5 error message (which holds the file name,
    buffer addresses and a time), else the message's first line."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    said = re.search(r"error message = '([^']*)'", text) or re.search(r"errno = (\d+)", text)
    if said is None:
        return text.splitlines()[0] if text else type(error).__name__
    return said.group(1) if not said.group(1).isdigit() else os.strerror(int(said.group(1)))


def write_folds(f: h5py.File, test_folds: list[list[str]], split_source: str) -> None:
    """folds/foldK with train/test subjects and training-frame statistics (docs/hdf5_schema.md)."""
    subjects = [s.decode() if isinstance(s, bytes) else s for s in f["subjects/name"][:]]
    frame_subject = f["frames/subject"][:]
    label = f["frames/label"][:]
    folds = f.create_group("folds")
    folds.attrs["num_folds"] = len(test_folds)
    folds.attrs["split_source"] = split_source
    for k, test in enumerate(test_folds, start=1):
        test_set = set(test)
        train = [s for s in subjects if s not in test_set]
        train_ids = np.array([i for i, s in enumerate(subjects) if s not in test_set], dtype=np.int32)
        train_rows = np.isin(frame_subject, train_ids)
        group = folds.create_group(f"fold{k}")
        group.create_dataset("train_subjects", data=string_array(train), dtype=STRING)
        group.create_dataset("test_subjects", data=string_array(sorted(test)), dtype=STRING)
        stats = fold_statistics(label[train_rows])
        group.create_dataset("au_rate", data=stats["au_rate"].astype(np.float64))
        group.create_dataset("class_weight", data=stats["class_weight"].astype(np.float32))
        group.create_dataset("cooccurrence", data=stats["cooccurrence"].astype(np.float64))
        group.attrs["num_train_frames"] = int(train_rows.sum())
