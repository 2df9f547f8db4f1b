"""The ``images`` layout: a folder tree of unlabeled face images (an EmotioNet-like collection for
self-supervised pre-training), converted with face detection, alignment and landmarks and no
labels (``datasets_tools convert images DIR OUT.h5 --landmarks detect --crop align``).

Every folder that holds images (.jpg, .jpeg, .png, .bmp, any case; hidden files and folders
ignored) is one sequence, its images in name order, numbered 1, 2, ... as frames; the file keeps
each frame's image path relative to DIR in ``frames/source``. The file holds no AU
(``au_names`` empty, ``labeled`` false), and ``aubench train`` / ``evaluate`` refuse it as
``--data``. Pass ``--landmarks detect --crop align`` for detected landmarks and aligned faces
(the defaults, as for every layout, are landmark files and a centre crop).

Folds (--images-split):
- ``folders`` (the default): the subjects are DIR's top-level folders (images lying directly in
  DIR form the subject "."), split into 3 subject-exclusive folds balanced by image count, as
  for MME; needs at least 3 of them;
- ``random``: the images are shuffled with --folds-seed and dealt into 3 subjects "shard1",
  "shard2", "shard3", one sequence each, so each fold tests one shard.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import DatasetError, Report
from .folds import NUM_FOLDS
from .raw import IMAGE_SUFFIXES, DatasetPlan, SequencePlan

SPLITS = ("folders", "random")
LABEL_RULE = "unlabeled (an images conversion: no AU labels)"


def _image_folders(root: Path) -> dict[str, list[str]]:
    """Relative folder ("." for DIR) -> its image file names, sorted; folders without images left out."""
    found: dict[str, list[str]] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        names = sorted(f for f in files if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES)
        if names:
            found[os.path.relpath(folder, root)] = names
    return found


def _sequence(subject: str, name: str, paths: list[str]) -> SequencePlan:
    n = len(paths)
    return SequencePlan(subject=subject, name=name, frame_no=np.arange(1, n + 1, dtype=np.int32),
                        label=np.zeros((n, 0), np.int8), intensity=None, source_kind="files", container=None,
                        members=paths, label_file="")


def plan(root: Path, options, report: Report) -> DatasetPlan:
    split = getattr(options, "images_split", "folders")
    if split not in SPLITS:
        raise DatasetError(f"--images-split {split!r}: choose one of {', '.join(SPLITS)}")
    folders = _image_folders(root)
    if not folders:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the folder tree", str(root))
    sequences: list[SequencePlan] = []
    if split == "folders":
        subjects = {folder.split(os.sep)[0] for folder in folders}
        if len(subjects) < NUM_FOLDS:
            raise DatasetError(f"{len(subjects)} top-level folder(s) with images; a split by folders needs at "
                               f"least {NUM_FOLDS} (use --images-split random)", str(root))
        for folder, names in folders.items():
            sequences.append(_sequence(folder.split(os.sep)[0], folder,
                                       [os.path.join(root, folder, n) for n in names]))
    else:
        paths = [os.path.join(root, folder, n) for folder, names in folders.items() for n in names]
        if len(paths) < NUM_FOLDS:
            raise DatasetError(f"{len(paths)} image(s) cannot make {NUM_FOLDS} folds", str(root))
        order = np.random.default_rng(getattr(options, "folds_seed", 0)).permutation(len(paths))
        for k in range(NUM_FOLDS):
            shard = sorted(paths[i] for i in order[k::NUM_FOLDS])
            sequences.append(_sequence(f"shard{k + 1}", f"shard{k + 1}", shard))
    return DatasetPlan(dataset="images", au_names=[], label_rule=LABEL_RULE, source_root=str(root),
                       sequences=sequences, extras={"labeled": False, "images_split": split})
