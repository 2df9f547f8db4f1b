"""The sparse-label protocol and the key-position batch sampler (Knowledge-Spreader).

Sparse labels: with label ratio r, k = round(1 / r); within each sequence the frames at
positions 0, k, 2k, ... keep their labels and the others are treated as unlabeled.
"""
from __future__ import annotations

import os
from typing import Iterator, Mapping

import numpy as np
from torch.utils.data import Sampler


def check_label_ratio(label_ratio: float) -> float:
    """Return label_ratio as float; ValueError unless it lies in (0, 1]."""
    ratio = float(label_ratio)
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"label_ratio must be in (0, 1], got {label_ratio!r}")
    return ratio


def label_stride(label_ratio: float) -> int:
    """k = round(1 / label_ratio): every k-th frame of a sequence keeps its label."""
    return max(1, int(round(1.0 / check_label_ratio(label_ratio))))


def sparse_label_mask(file_or_sequences, label_ratio: float) -> np.ndarray:
    """Bool (N,) mask of the frames whose labels the sparse-label protocol keeps.

    Args:
        file_or_sequences: an `AUFile`, a path to an aubench HDF5 file, or a mapping with
            "start" and "length" arrays (the file's sequences table).
        label_ratio: r in (0, 1]; frames at positions 0, k, 2k, ... of each sequence are kept,
            k = round(1 / r).
    """
    k = label_stride(label_ratio)
    if isinstance(file_or_sequences, (str, os.PathLike)):
        from .h5file import AUFile
        file_or_sequences = AUFile(file_or_sequences)
    sequences = (file_or_sequences if isinstance(file_or_sequences, Mapping)
                 else file_or_sequences.sequences)
    starts = np.asarray(sequences["start"], dtype=np.int64)
    lengths = np.asarray(sequences["length"], dtype=np.int64)
    total = int((starts + lengths).max()) if starts.size else 0
    mask = np.zeros(total, dtype=bool)
    for start, length in zip(starts, lengths):
        mask[start:start + length:k] = True
    return mask


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
