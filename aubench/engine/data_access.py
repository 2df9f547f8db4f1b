"""The engine's view of one dataset file and fold: datasets to train and test on, labels, stats.

The validation split (--validation R, docs/validation.md): a share R of the fold's training
subjects held out, whole subjects, drawn with the run's seed (`validation_subjects`). The run
then trains on the training subjects left, and every statistic of the training labels (class
weights, co-occurrence, AU rates: what methods get from set_training_data) comes from those
alone; the sparse-label protocol hides labels as it does without a validation split (the same
kept frames), on the validation subjects too, so a validation score counts the labels the
protocol keeps. The validation split is predicted as the test split is (every frame, tiled
clips, each frame's fixed occlusion mask).

Errors from aubench.data (missing file, not an aubench file, fold out of range) become
UserError so the command line prints them without a traceback.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aubench.data import (AUFile, ClipDataset, FrameDataset, sparse_label_mask, sparse_label_report,
                          visible_label_statistics)
from aubench.errors import UserError
from aubench.models.base import Preset


SPLITS = ("test", "validation")  # the splits a run is scored on


def protocol_labels(file: AUFile, label_ratio: float) -> np.ndarray:
    """The file's labels (N, U) as a run at `label_ratio` holds them: those the sparse-label
    protocol hides are -1 (unknown). What a validation split is scored against."""
    labels = file.labels.copy()
    labels[~sparse_label_mask(file, label_ratio)] = -1
    return labels


def validation_subjects(train_subjects: list[str], ratio: float, seed: int, fold: int) -> list[str]:
    """The subjects a run holds out of its fold's training subjects as its validation split:
    round(ratio x their number), at least one and never all of them, drawn without replacement
    (numpy default_rng seeded with (seed, fold)) from the subjects in name order, so the split
    depends on the seed, the fold and the subjects only; none for ratio 0. Returned in name order.
    UserError for a ratio outside [0, 1) or a fold with fewer than two training subjects."""
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"--validation {ratio:g}: must be in [0, 1) (a share of the fold's training subjects)")
    if ratio == 0.0:
        return []
    subjects = sorted(train_subjects)
    if len(subjects) < 2:
        raise UserError(f"--validation {ratio:g}: fold {fold} has {len(subjects)} training subject(s); a validation "
                        f"split needs at least two (one to hold out, one to train on)")
    count = min(max(round(ratio * len(subjects)), 1), len(subjects) - 1)
    rng = np.random.default_rng(np.random.SeedSequence([seed, fold]))
    return sorted(subjects[i] for i in rng.choice(len(subjects), size=count, replace=False))


@dataclass
class RunData:
    path: Path
    fold: int
    file: AUFile
    validation: float = 0.0   # the share of the fold's training subjects held out (validation_subjects)
    seed: int = 0             # the run's seed, which draws them
    # the held-out subjects, drawn when the data are opened (a bad share is refused there); []
    # without a validation split
    validation_subjects: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.validation_subjects = validation_subjects(self.file.fold_subjects(self.fold)[0], self.validation,
                                                       self.seed, self.fold)

    @property
    def train_subjects(self) -> list[str]:
        """The fold's training subjects the run trains on: those not held out for validation."""
        held_out = set(self.validation_subjects)
        return [name for name in self.file.fold_subjects(self.fold)[0] if name not in held_out]

    def _subjects_option(self, split: str) -> list[str] | None:
        """The `subjects` of a dataset of `split` ("train", "test", "validation"): None for every
        subject of the file's split."""
        if split == "validation":
            if not self.validation_subjects:
                raise ValueError("this run has no validation split (--validation)")
            return self.validation_subjects
        return self.train_subjects if split == "train" and self.validation_subjects else None

    def train_rows(self) -> np.ndarray:
        """The rows of the training subjects the run trains on (sorted)."""
        rows = self.file.rows(self.fold, "train")
        if not self.validation_subjects:
            return rows
        wanted = [self.file.subjects.index(name) for name in self.train_subjects]
        return rows[np.isin(self.file.frame_subject[rows], wanted)]

    @property
    def dataset(self) -> str:
        return self.file.dataset

    @property
    def au_names(self) -> list[str]:
        return list(self.file.au_names)

    @property
    def num_aus(self) -> int:
        return self.file.num_aus

    def train_label_statistics(self, label_ratio: float) -> dict[str, np.ndarray]:
        """AU rates, class weights and co-occurrence of the training labels a run at
        `label_ratio` may see (the kept labels only; at ratio 1 and without a validation split the
        file's per-fold statistics), of the training subjects left beside the validation split."""
        rows = self.train_rows()
        return visible_label_statistics(self.file, rows, sparse_label_mask(self.file, label_ratio))

    def label_report(self, label_ratio: float) -> dict:
        """Realised label ratio and label coverage of the training split (sparse_label_report)."""
        rows = self.train_rows()
        return sparse_label_report(self.file, rows, sparse_label_mask(self.file, label_ratio), label_ratio)

    def label_note(self, labels: dict) -> str | None:
        """What a person should know of the labels a label_report says are kept (sequences too
        short to keep one), or None."""
        if not labels["sequences_without_label"]:
            return None
        return (f"[aubench] note: at label ratio {labels['label_ratio']:g}, {labels['sequences_without_label']} of "
                f"{labels['sequences']} training sequences of fold {self.fold} are too short to hold a kept "
                f"label (shorter than 1/r frames at their place in the spacing); the split as a whole keeps "
                f"{labels['realised_label_ratio']:.2%} of its labels")

    @property
    def fingerprint(self) -> str:
        if not hasattr(self, "_fingerprint"):
            self._fingerprint = self.file.fingerprint()
        return self._fingerprint

    def test_rows(self) -> np.ndarray:
        return np.sort(self.file.rows(self.fold, "test"))

    def test_labels(self) -> np.ndarray:
        return self.file.labels[self.test_rows()]

    def split_rows(self, split: str) -> np.ndarray:
        """The sorted rows of the "test" or "validation" split."""
        if split == "test":
            return self.test_rows()
        wanted = [self.file.subjects.index(name) for name in self._subjects_option(split)]
        return np.flatnonzero(np.isin(self.file.frame_subject, wanted)).astype(np.int64)

    def scoring_labels(self, split: str, label_ratio: float) -> np.ndarray:
        """The label array (N, U) a split is scored against, rows as in the file: the file's own
        for the test split; for the validation split, the labels the sparse-label protocol at
        `label_ratio` keeps (the others -1, unknown: not scored), as a run holds them."""
        return self.file.labels if split == "test" else protocol_labels(self.file, label_ratio)

    def validation_record(self, label_ratio: float) -> dict:
        """What a result records of the validation split: the share, the seed, the held-out and
        remaining subjects, frames and labeled frames (those whose labels the protocol keeps)."""
        rows = self.split_rows("validation")
        known = (self.scoring_labels("validation", label_ratio)[rows] >= 0).any(axis=1)
        return {"ratio": self.validation, "seed": self.seed, "subjects": list(self.validation_subjects),
                "train_subjects": len(self.train_subjects), "frames": int(rows.size),
                "labeled_frames": int(known.sum())}

    # Datasets yield uint8 images (normalize=False); the engine normalises each batch on the
    # device (aubench.engine.device.move_batch), so workers and host-to-device copies move 4x
    # fewer bytes.
    def train_dataset(self, input_kind: str, preset: Preset, label_ratio: float, augment, key_view: bool = False,
                      labeled_only: bool = True, occlusion=None, landmarks: bool = False, views: int = 1,
                      windows: bool = False):
        """Frame methods are supervised: with `labeled_only` they train on the frames whose labels
        the protocol keeps (a stage that uses no labels passes False: every training frame).
        Clip methods train on one clip per labeled key frame, or with `windows` on windows that
        tile the training sequences with every label the protocol keeps (ClipDataset).
        `occlusion`: a parsed condition (aubench.data.occlusion), drawn afresh for every item.
        `landmarks`: items carry them (a method that uses them; the file must have them).
        The preset's crop (Preset.crop_fraction) is random where `augment` is given, else the centre.
        Only the training subjects left beside the validation split (train_subjects)."""
        subjects = self._subjects_option("train")
        try:
            if input_kind == "clip":
                return ClipDataset(self.file, self.fold, "train", clip_len=preset.clip_len, label_ratio=label_ratio,
                                   image_size=preset.image_size, augment=augment, normalize=False,
                                   key_view=key_view, occlusion=occlusion, landmarks=landmarks, windows=windows,
                                   crop_fraction=preset.crop_fraction, subjects=subjects)
            return FrameDataset(self.file, self.fold, "train", image_size=preset.image_size, augment=augment,
                                label_ratio=label_ratio, labeled_only=labeled_only, normalize=False,
                                occlusion=occlusion, landmarks=landmarks, views=views,
                                crop_fraction=preset.crop_fraction, subjects=subjects)
        except ValueError as err:  # no 68-point landmarks in the file
            raise UserError(f"--data {err}") from None

    def test_dataset(self, input_kind: str, preset: Preset, occlusion=None, landmarks: bool = False,
                     split: str = "test"):
        """The test split (or with `split` "validation" the validation split, predicted the same
        way: the file's "all" split restricted to the held-out subjects); under `occlusion` every
        frame gets the same mask in every evaluation, of every method and run
        (aubench.data.occlusion.frame_occlusion_mask: a function of the frame's row and the
        condition only). The preset's crop (Preset.crop_fraction) is the centre one."""
        file_split, subjects = ("test", None) if split == "test" else ("all", self._subjects_option(split))
        try:
            if input_kind == "clip":
                return ClipDataset(self.file, self.fold, file_split, clip_len=preset.clip_len,
                                   image_size=preset.image_size, normalize=False, occlusion=occlusion,
                                   landmarks=landmarks, crop_fraction=preset.crop_fraction, subjects=subjects)
            return FrameDataset(self.file, self.fold, file_split, image_size=preset.image_size, normalize=False,
                                occlusion=occlusion, landmarks=landmarks, crop_fraction=preset.crop_fraction,
                                subjects=subjects)
        except ValueError as err:
            raise UserError(f"--data {err}") from None


def open_dataset_file(path: str | Path) -> AUFile:
    path = Path(path)
    try:
        return AUFile(path)
    except FileNotFoundError:
        raise UserError(f"--data {path}: no such file (convert a dataset with `datasets_tools convert`)") from None
    except IsADirectoryError as err:
        raise UserError(f"--data {err}") from None
    except (ValueError, OSError, KeyError) as err:
        raise UserError(f"--data {path}: not a usable aubench dataset file: {err}") from None


def open_labeled_file(path: str | Path) -> AUFile:
    """A dataset file that runs can train and be scored on; an unlabeled one (an `images`
    conversion) is refused, naming it."""
    file = open_dataset_file(path)
    try:
        file.require_labels("training and testing a method")
    except ValueError as err:
        raise UserError(f"--data {err}; an unlabeled face collection is pre-training data: give it to a "
                        f"self-supervised method (rrl) as --pretrain-data {path}, beside a labeled --data") from None
    return file


def open_run_data(path: str | Path, fold: int, validation: float = 0.0, seed: int = 0) -> RunData:
    """The fold of a labeled file that a run trains on and is scored on; with `validation` > 0
    a share of its training subjects held out (drawn with `seed`: validation_subjects)."""
    file = open_labeled_file(path)
    if not isinstance(fold, int) or not 1 <= fold <= file.num_folds:
        raise UserError(f"--fold {fold} is out of range: {path} has folds 1..{file.num_folds}")
    return RunData(Path(path), fold, file, validation, seed)


@dataclass
class PretrainData:
    """The frames a pre-training stage (Stage.pretraining) learns from when the run is given
    --pretrain-data: the fold's training subjects when it is the run's own file (without those
    held out for validation), every frame of another file. Test subjects of the fold never reach
    pre-training."""

    path: Path
    file: AUFile
    fold: int | None
    split: str          # "train" (the run's own file) or "all" (another file)
    subjects: list[str] | None = None  # the run's own file: its training subjects left beside the validation split

    @property
    def fingerprint(self) -> str:
        if not hasattr(self, "_fingerprint"):
            self._fingerprint = self.file.fingerprint()
        return self._fingerprint

    def dataset(self, preset: Preset, augment, landmarks: bool = False, views: int = 1) -> FrameDataset:
        try:
            return FrameDataset(self.file, self.fold, self.split, image_size=preset.image_size, augment=augment,
                                normalize=False, landmarks=landmarks, views=views, crop_fraction=preset.crop_fraction,
                                subjects=self.subjects)
        except ValueError as err:
            raise UserError(f"--pretrain-data {err}") from None


def open_pretrain_data(path: str | Path, run: RunData) -> PretrainData:
    """--pretrain-data for a run on `run`'s file and fold (labeled or not, e.g. an `images`
    conversion). A file holding subjects named like the fold's test subjects, of the same dataset,
    is refused: its frames could be the test faces."""
    try:
        file = AUFile(path)
    except FileNotFoundError:
        raise UserError(f"--pretrain-data {path}: no such file") from None
    except IsADirectoryError as err:
        raise UserError(f"--pretrain-data {err}") from None
    except (ValueError, OSError, KeyError) as err:
        raise UserError(f"--pretrain-data {path}: not a usable aubench dataset file: {err}") from None
    if file.fingerprint() == run.fingerprint:
        return PretrainData(Path(path), file, run.fold, "train",
                            run.train_subjects if run.validation_subjects else None)
    test = set(run.file.fold_subjects(run.fold)[1])
    shared = sorted(test & set(file.subjects))
    if file.dataset == run.dataset and shared:
        raise UserError(f"--pretrain-data {path}: holds {len(shared)} of fold {run.fold}'s test subjects "
                        f"({', '.join(shared[:3])}{'...' if len(shared) > 3 else ''}) of {run.dataset}; test "
                        f"subjects never reach pre-training (pass the run's own file to pre-train on its "
                        f"training subjects)")
    return PretrainData(Path(path), file, None, "all")
