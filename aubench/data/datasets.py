"""Frame and clip datasets over one aubench HDF5 file.

Items follow docs/hdf5_schema.md:
- `FrameDataset`: {"image": float32 (3,H,W), "label": float32 (U,), "index": int64}
- `ClipDataset`:  {"image": float32 (n,3,H,W), "label": float32 (n,U), "labeled": bool (n,),
                   "key_position": int64, "index": int64 (n,)}
plus "occlusion" when an occlusion spec is given: bool (H,W) for a frame, (n,H,W) for a clip,
and "landmarks" when the file stores 68-point landmarks (datasets_tools.landmarks; `landmarks`
argument): float32 (68,2) for a frame, (n,68,2) for a clip, in the item's image pixels after
resizing and augmentation (flip, rotation: the points move with the pixels; NaN where a frame has
none); "key_landmarks" beside "key_image".
With `crop_fraction` frames are resized past the image size and cropped to it (the papers' random
224 crop of a 256 face in training, the centre crop at test); landmarks move with the crop.
Labels are 1 / 0 with -1 for unknown, and also -1 where the sparse-label protocol hides a label.

uint8 fast path: with `normalize=False` the "image" is uint8 (3,H,W) / (n,3,H,W) instead,
resized, augmented and occluded in uint8 (occluded pixels take the ImageNet mean colour
`IMAGENET_MEAN_UINT8`, which normalises to about 0, where the float path writes exactly 0).
Normalise the collated batch with `normalize_images(batch["image"].to(device))`: for
unaugmented, unoccluded items that gives the float path's values exactly. This is the usual
design of fast loaders (normalise on the device): the workers skip the float conversion, and
collate and the host-to-device copy move 4x fewer bytes.

Randomness (augmentation, training occlusion) comes from torch's default generator, which
DataLoader seeds differently in every worker (and the engine per epoch); with `seed` set, each
item uses its own generator seeded from (seed, index) instead, so the same index always gives
the same item, whatever worker loads it.

Occlusion at test time: on the "test" and "all" splits every frame gets its fixed mask
(`aubench.data.occlusion.frame_occlusion_mask`), a function of its row in the file and the
condition only - not of `seed`, the batch order, the worker or the clip it sits in - so every
method is scored on the same occluded images, and a frame of a test clip is occluded as that
frame in a FrameDataset. On the "train" split masks are random: one draw per item (per clip,
the same mask on all its frames, like an occluder that stays), new every epoch.
"""
from __future__ import annotations


import numpy as np
import torch
from torch.utils.data import Dataset

from .h5file import AUFile
from .occlusion import frame_occlusion_mask, occlusion_mask, parse_occlusion
from .samplers import (check_label_ratio, sparse_label_mask, sparse_label_report,
                       visible_label_statistics)
from .transforms import (IMAGENET_MEAN_UINT8, ClipAugment, crop_images, crop_offset, crop_points,
                         crop_source_size, normalize, parse_image_size, resize_images, resize_points,
                         to_float_tensor, to_normalized_tensor, to_uint8_tensor)

_MEAN_UINT8 = torch.tensor(IMAGENET_MEAN_UINT8, dtype=torch.uint8).view(3, 1, 1)


def clip_offsets(length: int, clip_len: int) -> list[int]:
    """Where the clips that tile a sequence of `length` frames start (test and "all" splits, and
    aubench predict on a face's frames): every `clip_len` frames, plus one clip ending at the
    sequence's end when the last would not reach it; one clip for a sequence shorter than a clip."""
    offsets = list(range(0, max(length - clip_len, 0) + 1, clip_len))
    if offsets[-1] + clip_len < length:
        offsets.append(length - clip_len)
    return offsets


def clip_positions(first: int, clip_len: int, length: int) -> np.ndarray:
    """The positions in its sequence of the frames of a clip starting at `first`: a sequence
    shorter than the clip repeats its last frame."""
    return np.minimum(first + np.arange(clip_len), length - 1)


class _AUDatasetBase(Dataset):
    """What frame and clip datasets share: the file, fold rows, labels, image pipeline."""

    def __init__(self, path, fold, split, image_size, augment, occlusion, label_ratio, seed,
                 normalize, landmarks=None, crop_fraction=None, subjects=None):
        self.file = path if isinstance(path, AUFile) else AUFile(path)
        if landmarks is None:  # carry them when the file has them
            landmarks = self.file.has_scheme_landmarks
        elif landmarks:
            self.file.require_landmarks("a dataset with landmarks=True")
        self.landmarks = bool(landmarks)
        self.fold = fold
        self.split = split
        self.rows = self.file.rows(fold, split)
        if subjects is not None:
            self.rows = self._subject_rows(subjects)
        self.label_ratio = check_label_ratio(label_ratio)
        self.image_size = parse_image_size(image_size) or self.file.image_size
        # the size frames are resized to: image_size, or larger for a crop (crop_fraction)
        self.resize_size = crop_source_size(self.image_size, crop_fraction)
        # a pair (view 1's, view 2's) for two-view items; else one augmentation for every view
        self.view_augments = tuple(augment) if isinstance(augment, (tuple, list)) else None
        self.augment = ClipAugment() if augment is True else (
            self.view_augments[0] if self.view_augments else (augment or None))
        for aug in self.view_augments or (self.augment,):
            if aug is not None and not callable(getattr(aug, "draw", None)):
                raise ValueError(f"augment must be a bool, a ClipAugment or a pair of augmentations, got {augment!r}")
        self.occlusion = parse_occlusion(occlusion)
        # evaluation splits get each frame's fixed mask, the train split random ones
        self.fixed_occlusion = split != "train"
        self.seed = None if seed is None else int(seed)
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be True or False, got {normalize!r}")
        self.normalize = normalize
        # labels the protocol keeps (all of them at label_ratio = 1)
        self.labeled_mask = sparse_label_mask(self.file, self.label_ratio)

    def _subject_rows(self, subjects) -> np.ndarray:
        """The split's rows of `subjects` (names); ValueError naming a subject the split lacks."""
        in_split = {self.file.subjects[i] for i in np.unique(self.file.frame_subject[self.rows])}
        missing = [name for name in subjects if name not in in_split]
        if missing:
            raise ValueError(f"{self.file.path}: subject {missing[0]!r} has no frames in the {self.split!r} split"
                             + (f" of fold {self.fold}" if self.fold is not None else ""))
        wanted = [self.file.subjects.index(name) for name in subjects]
        return self.rows[np.isin(self.file.frame_subject[self.rows], wanted)]

    @property
    def au_names(self) -> list[str]:
        return self.file.au_names

    @property
    def num_aus(self) -> int:
        return self.file.num_aus

    def label_statistics(self) -> dict[str, np.ndarray]:
        """AU rates, class weights, co-occurrence of the labels this dataset's protocol keeps
        (use these, not the file's dense per-fold statistics, under a label ratio < 1)."""
        return visible_label_statistics(self.file, self.rows, self.labeled_mask)

    def label_report(self) -> dict:
        """The realised label ratio and label coverage of these rows (`sparse_label_report`)."""
        return sparse_label_report(self.file, self.rows, self.labeled_mask, self.label_ratio)

    def item_points(self, points: np.ndarray) -> np.ndarray:
        """(..., 68, 2) landmarks in stored-frame pixels -> in the pixels of an unaugmented item:
        resized, and centre-cropped under the crop protocol, as evaluation items are."""
        points = resize_points(points, self.file.image_size, self.resize_size)
        if self.resize_size != self.image_size:
            points = crop_points(points, crop_offset(self.resize_size, self.image_size, random=False))
        return points

    def _generator(self, index: int, view: int = 0) -> torch.Generator | None:
        if self.seed is None:
            return None
        entropy = [self.seed, int(index)] + ([int(view)] if view else [])
        state = np.random.SeedSequence(entropy).generate_state(2)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def _labels(self, rows: np.ndarray) -> torch.Tensor:
        labels = self.file.labels[rows].astype(np.float32)
        labels[~self.labeled_mask[rows]] = -1.0
        return torch.from_numpy(labels)

    def _images(self, rows: np.ndarray, index: int, frames: np.ndarray | None = None,
                view: int = 0, points: np.ndarray | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(len(rows), 3, H, W) images, normalised float32 (or uint8 with normalize=False),
        augmented and occluded as configured, with one random draw for all of them; the
        occlusion masks, bool (len(rows), H, W) (or None): each row's fixed mask on evaluation
        splits, one random draw for all rows on the train split; and the landmarks, float32
        (len(rows), 68, 2), moved with the pixels (or None without landmarks). `frames`,
        `points`: the rows' uint8 images and stored landmarks when already read. `view` > 0
        draws an independent second view of the same rows (seeded from (seed, index, view))."""
        if frames is None:
            frames = self.file.read_images(rows)
        stored_size = frames.shape[-3:-1]
        frames = resize_images(frames, self.resize_size)
        generator = self._generator(index, view)
        augment = self.view_augments[view] if self.view_augments else self.augment
        offset = None
        if self.resize_size != self.image_size:  # the crop protocol: at random when augmenting, else the centre
            offset = crop_offset(self.resize_size, self.image_size, generator, random=augment is not None)
            frames = crop_images(frames, offset, self.image_size)
        if self.landmarks:
            if points is None:
                points = self.file.read_landmarks(rows)
            points = resize_points(points, stored_size, self.resize_size)
            points = torch.from_numpy(points if offset is None else crop_points(points, offset))
        params = None if augment is None else augment.draw(generator)
        if not self.normalize:
            images = to_uint8_tensor(frames)
            if params is not None:
                images = augment.apply(images, params)
        elif params is not None:
            images = normalize(augment.apply(to_float_tensor(frames), params))
        else:
            images = to_normalized_tensor(frames)
        if points is not None and params is not None:
            points = augment.apply_points(points, params, self.image_size)
        if self.occlusion is None:
            return images, None, points
        if self.fixed_occlusion:
            mask = torch.stack([frame_occlusion_mask(*self.occlusion, row, *self.image_size)
                                for row in np.asarray(rows).tolist()])
        else:
            mask = occlusion_mask(*self.occlusion, *self.image_size, generator=generator)
            mask = mask.expand(len(rows), *mask.shape).contiguous()
        if self.normalize:
            images = images.masked_fill(mask[:, None], 0.0)
        else:
            images = torch.where(mask[:, None], _MEAN_UINT8, images)
        return images, mask, points

    def close(self) -> None:
        """Close the h5py handle of this process (it reopens on the next read)."""
        self.file.close()


class FrameDataset(_AUDatasetBase):
    """Single frames of one fold and split.

    Args:
        path: aubench HDF5 file (or an open `AUFile`).
        fold: 1-based fold number.
        split: "train" | "test" | "all".
        image_size: output size, int or (H, W); None keeps the stored size.
        crop_fraction: None: frames are resized to image_size. A fraction f in (0, 1]: frames are
            resized to image_size / f and cropped to image_size (the papers' 224 of 256 at
            0.875), one crop per item (a clip's frames alike): at a random position when the
            item is augmented, in the centre otherwise (test splits, augment False).
            Landmarks move with the crop; occlusion masks are drawn on the cropped image.
        augment: True (default `ClipAugment`), False, or a `ClipAugment`.
        occlusion: None, ("patches", ratio) or ("block", ratio) (aubench.data.occlusion);
            fixed per frame on the "test" and "all" splits, random on "train".
        label_ratio: sparse-label protocol ratio in (0, 1]; hidden labels read -1.
        labeled_only: keep only the frames whose labels the protocol keeps.
        seed: makes augmentation and training occlusion a function of (seed, index).
        normalize: True: "image" is ImageNet-normalised float32. False: the uint8 fast path,
            "image" is uint8 (3,H,W); normalise batches with `normalize_images` (on the GPU).
        landmarks: None (default): items carry "landmarks" when the file stores 68-point ones;
            True: they must (ValueError naming the file otherwise); False: never.
        views: 2 = items also carry "image2" (and "landmarks2", "occlusion2"), a second view of
            the frame with its own draw; `augment` may then be a pair (view 1's, view 2's).
        subjects: None (every subject of the split), or names of subjects of the split: only
            their frames (the engine's validation split, and the training subjects beside it).
    """

    def __init__(self, path, fold: int | None = 1, split: str = "train", image_size=None,
                 augment=False, occlusion=None, label_ratio: float = 1.0,
                 labeled_only: bool = False, seed: int | None = None, normalize: bool = True,
                 landmarks: bool | None = None, views: int = 1, crop_fraction: float | None = None,
                 subjects=None):
        super().__init__(path, fold, split, image_size, augment, occlusion, label_ratio, seed,
                         normalize, landmarks, crop_fraction, subjects)
        if views not in (1, 2):
            raise ValueError(f"views must be 1 or 2, got {views!r}")
        if self.view_augments is not None and len(self.view_augments) != views:
            raise ValueError(f"{len(self.view_augments)} augmentations for {views} view(s)")
        self.views = views
        self.labeled_only = bool(labeled_only)
        if self.labeled_only:
            self.rows = self.rows[self.labeled_mask[self.rows]]

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices) -> list[dict]:
        """Items of a whole batch (DataLoader calls this): their frames are read in one go."""
        indices = [int(i) for i in indices]
        for index in indices:
            if not -len(self) <= index < len(self):
                raise IndexError(f"index {index} out of range for {len(self)} frames")
        rows = self.rows[indices]
        frames = self.file.read_image_list(rows)
        points = self.file.read_landmarks(rows) if self.landmarks else None
        labels = self._labels(rows)
        items = []
        for k, (index, row) in enumerate(zip(indices, rows.tolist())):
            images, mask, moved = self._images(rows[k:k + 1], index % len(self), frames[k][None],
                                               points=None if points is None else points[k:k + 1])
            item = {"image": images[0], "label": labels[k],
                    "index": torch.tensor(row, dtype=torch.int64)}
            if mask is not None:
                item["occlusion"] = mask[0]
            if moved is not None:
                item["landmarks"] = moved[0]
            if self.views == 2:
                images, mask, moved = self._images(rows[k:k + 1], index % len(self), frames[k][None], view=1,
                                                   points=None if points is None else points[k:k + 1])
                item["image2"] = images[0]
                if mask is not None:
                    item["occlusion2"] = mask[0]
                if moved is not None:
                    item["landmarks2"] = moved[0]
            items.append(item)
        return items


class ClipDataset(_AUDatasetBase):
    """Clips of `clip_len` consecutive frames of one sequence.

    Train split: one sample per labeled key frame (sparse-label protocol); the clip has the key
    frame at position m, shifted to stay inside the sequence (a sequence shorter than n repeats
    its last frame). `ds[i]` uses m = n // 2, `ds[(i, m)]` sets m (see KeyPositionBatchSampler);
    "key_position" is where the key frame ended up. Each training clip holds one label, its key
    frame's: other kept labels that fall inside the clip read -1 there ("labeled" False), so a
    clip never sees more labels than the protocol's one per key frame. With `key_view=True`
    items also carry "key_image" (3,H,W): the key frame again, augmented with its own draw
    (Knowledge-Spreader sends the key frame along a second branch with other augmentations).
    Test / "all" split: clips tile every sequence with stride n, the last one ending at the
    sequence end, so every frame is predicted (some twice); "key_position" is n // 2.
    Train split with `windows=True` (frame-wise sequence models): the clips tile every training
    sequence as on the test split, and each frame keeps the label the protocol lets it have
    ("labeled" per frame); a window without any such label is left out, and a frame repeated to
    fill a sequence shorter than n reads -1 after its first place, so no label counts twice in
    one window. The last window of a sequence ends at the sequence's end and overlaps the one
    before it: the frames they share are in both, and their labels count twice per epoch.
    Counting them once (-1 in the later window) leaves many last windows without a label, and
    so out: on the demo's 10-frame sequences with 8-frame windows, 224 of fold 1's 448, which
    took `vivit` and `regnet-tf` below the all-positive baseline; so the overlap is kept, and
    documented.

    Args: as `FrameDataset` (subjects too), plus clip_len (n >= 1), key_view (train split only) and windows. With
    normalize=False "image" is uint8 (n,3,H,W) (see `normalize_images`). "occlusion" is bool
    (n,H,W): on the test / "all" split each frame's fixed mask (as in FrameDataset), on the
    train split one random mask repeated over the clip.
    """

    def __init__(self, path, fold: int | None = 1, split: str = "train", clip_len: int = 5,
                 label_ratio: float = 1.0, image_size=None, augment=False, occlusion=None,
                 seed: int | None = None, normalize: bool = True, key_view: bool = False,
                 landmarks: bool | None = None, windows: bool = False, crop_fraction: float | None = None,
                 subjects=None):
        if isinstance(clip_len, bool) or int(clip_len) != clip_len or clip_len < 1:
            raise ValueError(f"clip_len must be an int >= 1, got {clip_len!r}")
        super().__init__(path, fold, split, image_size, augment, occlusion, label_ratio, seed,
                         normalize, landmarks, crop_fraction, subjects)
        self.clip_len = int(clip_len)
        if key_view and (split != "train" or windows):
            raise ValueError(f"key_view is for training clips with a key frame, not {split!r} windows")
        self.key_view = bool(key_view)
        self.windows = bool(windows) and split == "train"
        seq = self.file.sequences
        frame_seq = self.file.frame_sequence
        if split == "train" and not windows:
            self.key_rows = self.rows[self.labeled_mask[self.rows]]
            s = frame_seq[self.key_rows]
            self._clip_seq_start = seq["start"][s]
            self._clip_seq_length = seq["length"][s]
            self._clip_first = None
        else:
            # tile the sequences that have frames in this split
            wanted = np.unique(frame_seq[self.rows])
            starts, lengths, firsts = [], [], []
            for s in wanted:
                start, length = int(seq["start"][s]), int(seq["length"][s])
                offsets = clip_offsets(length, self.clip_len)
                starts += [start] * len(offsets)
                lengths += [length] * len(offsets)
                firsts += offsets
            self.key_rows = None
            self._clip_seq_start = np.asarray(starts, dtype=np.int64)
            self._clip_seq_length = np.asarray(lengths, dtype=np.int64)
            self._clip_first = np.asarray(firsts, dtype=np.int64)
            if self.windows:  # training windows: those with at least one label the protocol keeps
                keep = [bool(self.labeled_mask[self.clip_rows(i)[0]].any()) for i in range(len(starts))]
                self._clip_seq_start = self._clip_seq_start[keep]
                self._clip_seq_length = self._clip_seq_length[keep]
                self._clip_first = self._clip_first[keep]

    def __len__(self) -> int:
        return int(self._clip_seq_start.size)

    def clip_rows(self, index: int, key_position: int | None = None) -> tuple[np.ndarray, int]:
        """(frame rows (n,), key position) of clip `index`, key frame asked at `key_position`."""
        n = self.clip_len
        start = int(self._clip_seq_start[index])
        length = int(self._clip_seq_length[index])
        if self._clip_first is None:
            m = n // 2 if key_position is None else int(key_position)
            if not 0 <= m < n:
                raise ValueError(f"key position {m} out of range 0..{n - 1}")
            pos = int(self.key_rows[index]) - start
            first = min(max(pos - m, 0), max(length - n, 0))
            key = pos - first
        else:
            if key_position is not None:
                raise ValueError(f"split {self.split!r} tiles sequences into fixed clips; "
                                 "a key position can only be chosen for the train split")
            first = int(self._clip_first[index])
            key = n // 2
        return start + clip_positions(first, n, length), key

    def __getitem__(self, index) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices) -> list[dict]:
        """Items of a whole batch (DataLoader calls this; entries are i or (i, m)): the frames
        of all its clips are read in one go, one slice when the clips are consecutive."""
        clips = []
        for entry in indices:
            index, key_position = entry if isinstance(entry, tuple) else (entry, None)
            index = int(index)
            if not -len(self) <= index < len(self):
                raise IndexError(f"index {index} out of range for {len(self)} clips")
            index %= len(self)
            clips.append((index, *self.clip_rows(index, key_position)))
        n = self.clip_len
        all_rows = np.concatenate([rows for _, rows, _ in clips])
        frames = self.file.read_images(all_rows)
        points = self.file.read_landmarks(all_rows) if self.landmarks else None
        items = []
        for k, (index, rows, key) in enumerate(clips):
            clip_frames = frames[k * n:(k + 1) * n]
            clip_points = None if points is None else points[k * n:(k + 1) * n]
            images, mask, moved = self._images(rows, index, clip_frames, points=clip_points)
            labels = self._labels(rows)
            labeled = self.labeled_mask[rows].copy()
            if self.key_rows is not None:  # one label per training clip: its key frame's
                others = np.arange(n) != key
                labels[torch.from_numpy(others)] = -1.0
                labeled[others] = False
            if self.windows:  # a frame repeated to fill a short sequence counts once
                repeated = np.r_[False, rows[1:] == rows[:-1]]
                labels[torch.from_numpy(repeated)] = -1.0
                labeled[repeated] = False
            item = {
                "image": images,
                "label": labels,
                "labeled": torch.from_numpy(labeled),
                "key_position": torch.tensor(key, dtype=torch.int64),
                "index": torch.from_numpy(rows.astype(np.int64)),
            }
            if self.key_view:
                key_image, _, key_points = self._images(
                    rows[key:key + 1], index, clip_frames[key:key + 1], view=1,
                    points=None if clip_points is None else clip_points[key:key + 1])
                item["key_image"] = key_image[0]
                if key_points is not None:
                    item["key_landmarks"] = key_points[0]
            if mask is not None:
                item["occlusion"] = mask
            if moved is not None:
                item["landmarks"] = moved
            items.append(item)
        return items
