"""The sparse-label protocol and the key-position batch sampler (Knowledge-Spreader).

Sparse labels at ratio r: the kept frames are spaced evenly, 1/r frames apart (a real-valued
stride), along the file's sequences taken one after another. The spacing carries on across
sequence boundaries, so every sequence of length L keeps floor(r L) or ceil(r L) labels and any
run of whole sequences keeps its share r to within one frame: at r = 0.02 a 10-frame sequence
keeps one label or none, never the 10% a per-sequence "every k-th frame" rule would give it.
Statistics of a sparse run (class weights, co-occurrence) come from the kept labels alone
(`visible_label_statistics`).
"""
from __future__ import annotations

import os
from fractions import Fraction
from typing import Iterator, Mapping

import numpy as np
from torch.utils.data import Sampler


def check_label_ratio(label_ratio: float) -> float:
    """Return label_ratio as float; ValueError unless it lies in (0, 1]."""
    ratio = float(label_ratio)
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"label_ratio must be in (0, 1], got {label_ratio!r}")
    return ratio


def _sequences(file_or_sequences):
    if isinstance(file_or_sequences, (str, os.PathLike)):
        from .h5file import AUFile
        file_or_sequences = AUFile(file_or_sequences)
    return (file_or_sequences if isinstance(file_or_sequences, Mapping)
            else file_or_sequences.sequences)


def sparse_label_mask(file_or_sequences, label_ratio: float) -> np.ndarray:
    """Bool (N,) mask of the frames whose labels the sparse-label protocol keeps.

    Args:
        file_or_sequences: an `AUFile`, a path to an aubench HDF5 file, or a mapping with
            "start" and "length" arrays (the file's sequences table).
        label_ratio: r in (0, 1]. Counting the frames of the sequences one after another
            (g = 0, 1, ...), frame g is kept when a new multiple of 1/r is reached at g:
            floor(g r) > floor((g - 1) r), the first frame always. Exact rational arithmetic
            (r as a fraction), so r = 0.3 keeps 3 frames in every 10.
    """
    ratio = Fraction(check_label_ratio(label_ratio)).limit_denominator(1_000_000)
    sequences = _sequences(file_or_sequences)
    starts = np.asarray(sequences["start"], dtype=np.int64)
    lengths = np.asarray(sequences["length"], dtype=np.int64)
    total = int((starts + lengths).max()) if starts.size else 0
    mask = np.zeros(total, dtype=bool)
    g = np.arange(int(lengths.sum()), dtype=np.int64)
    p, q = ratio.numerator, ratio.denominator
    kept = (g * p) // q > ((g - 1) * p) // q          # g = 0: 0 > -1, always kept
    offset = 0
    for start, length in zip(starts, lengths):
        mask[start:start + length] = kept[offset:offset + length]
        offset += length
    return mask


def sparse_label_report(file, rows: np.ndarray, mask: np.ndarray, label_ratio: float) -> dict:
    """What the protocol kept among `rows` (e.g. a fold's training rows): the realised ratio
    (kept labeled frames / labeled frames, frames whose labels are all unknown not counted) and
    how many of the rows' sequences keep no label at all (those shorter than 1/r may not)."""
    rows = np.asarray(rows, dtype=np.int64)
    known = (file.labels[rows] >= 0).any(axis=1)
    kept = mask[rows] & known
    sequence = file.frame_sequence[rows]
    with_label = np.unique(sequence[kept])
    all_sequences = np.unique(sequence)
    return {"label_ratio": float(label_ratio),
            "realised_label_ratio": float(kept.sum() / max(int(known.sum()), 1)),
            "kept_labels": int(kept.sum()), "labeled_frames": int(known.sum()),
            "sequences": int(all_sequences.size),
            "sequences_without_label": int(all_sequences.size - with_label.size)}


def visible_label_statistics(file, rows: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """AU rates, class weights and co-occurrence of the labels a sparse run may see: those of
    `rows` (a fold's training rows) that `mask` keeps, with the definitions of the file's stored
    per-fold statistics (datasets_tools.folds.fold_statistics); at ratio 1 they equal those."""
    from datasets_tools.folds import fold_statistics

    rows = np.sort(np.asarray(rows, dtype=np.int64)[mask[rows]])
    return fold_statistics(file.labels[rows])


class KeyPositionBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (index, key position) pairs for `ClipDataset`.

    Every clip of a batch has its labeled key frame at the same position m, and m moves on by
    one each batch: m = batch_number mod clip_len (Knowledge-Spreader's active student).

    Args:
        sampler: yields dataset indices (e.g. RandomSampler or DistributedSampler).
        batch_size: clips per batch.
        clip_len: frames per clip (n).
        drop_last: drop the last batch when it is smaller than batch_size.
    """

    def __init__(self, sampler, batch_size: int, clip_len: int, drop_last: bool = False):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        if int(clip_len) < 1:
            raise ValueError(f"clip_len must be >= 1, got {clip_len!r}")
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.clip_len = int(clip_len)
        self.drop_last = bool(drop_last)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batch: list[int] = []
        number = 0
        for index in self.sampler:
            batch.append(int(index))
            if len(batch) == self.batch_size:
                m = number % self.clip_len
                yield [(i, m) for i in batch]
                batch = []
                number += 1
        if batch and not self.drop_last:
            m = number % self.clip_len
            yield [(i, m) for i in batch]

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
