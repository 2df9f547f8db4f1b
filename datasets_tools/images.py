"""The ``images`` layout: a folder tree of unlabeled face images (an EmotioNet-like collection for
self-supervised pre-training), converted with face detection, alignment and landmarks and no
labels (``datasets_tools convert images DIR OUT.h5 --landmarks detect --crop align``).

Every folder that holds images (.jpg, .jpeg, .png, .bmp, any case; hidden files and folders
ignored) is one sequence, its images in name order, numbered 1, 2, ... as frames; the file keeps
each frame's image path relative to DIR in ``frames/source``. The file holds no AU
(``au_names`` empty, ``labeled`` false), and ``aubench train`` / ``evaluate`` refuse it as
``--data``. Pass ``--landmarks detect --crop align`` for detected landmarks and aligned faces
(the defaults, as for every layout, are landmark files and a centre crop).

Folds (--images-split; the same for the ``videos`` layout, datasets_tools.videos): an unlabeled
file needs none, so by default it has none (``none``: any number of folders converts). Asked for:
- ``folders``: the subjects are DIR's top-level folders (images lying directly in DIR form the
  subject "."), split into 3 subject-exclusive folds balanced by image count, as for MME; needs
  at least 3 of them;
- ``random``: the sequences (folders) are shuffled with --folds-seed and dealt into 3 subjects
  "shard1", "shard2", "shard3", so each fold tests one shard; a sequence is never cut, so this
  needs at least 3 sequences.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import DatasetError, Report
from .folds import NUM_FOLDS
from .raw import IMAGE_SUFFIXES, DatasetPlan, SequencePlan

SPLITS = ("none", "folders", "random")
DEFAULT_SPLIT = "none"
LABEL_RULE = "unlabeled (an images conversion: no AU labels)"
NO_FOLDS = "no folds (an unlabeled file; --images-split folders or random makes them)"


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


def unlabeled_plan(dataset: str, root: Path, sequences: list[SequencePlan], split: str, seed: int,
                   label_rule: str) -> DatasetPlan:
    """The plan of an unlabeled layout (``images``, ``videos``) whose sequences name their
    top-level folder as subject, with its folds: none, by those folders, or ``random`` (each
    sequence whole in one of 3 shards, which become the subjects)."""
    if split not in SPLITS:
        raise DatasetError(f"--images-split {split!r}: choose one of {', '.join(SPLITS)}")
    choose = None
    if split == "none":
        def choose(counts, seed):
            return [], NO_FOLDS
    elif split == "folders":
        subjects = {seq.subject for seq in sequences}
        if len(subjects) < NUM_FOLDS:
            raise DatasetError(f"{len(subjects)} top-level folder(s) hold {dataset}; a split by folders needs at "
                               f"least {NUM_FOLDS} (use --images-split random, or none)", str(root))
    else:
        if len(sequences) < NUM_FOLDS:
            raise DatasetError(f"{len(sequences)} sequence(s) cannot make {NUM_FOLDS} folds without cutting one "
                               f"(--images-split none needs no folds)", str(root))
        order = np.random.default_rng(seed).permutation(len(sequences))
        for k, i in enumerate(order):
            sequences[i].subject = f"shard{k % NUM_FOLDS + 1}"
    return DatasetPlan(dataset=dataset, au_names=[], label_rule=label_rule, source_root=str(root),
                       sequences=sequences, extras={"labeled": False, f"{dataset}_split": split}, choose_folds=choose)


def plan(root: Path, options, report: Report) -> DatasetPlan:
    folders = _image_folders(root)
    if not folders:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the folder tree", str(root))
    sequences = [_sequence(folder.split(os.sep)[0], folder, [os.path.join(root, folder, n) for n in names])
                 for folder, names in folders.items()]
    return unlabeled_plan("images", root, sequences, getattr(options, "images_split", DEFAULT_SPLIT),
                          getattr(options, "folds_seed", 0), LABEL_RULE)
