"""The engine's view of one dataset file and fold: datasets to train and test on, labels, stats.

Errors from aubench.data (missing file, not an aubench file, fold out of range) become
UserError so the command line prints them without a traceback.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aubench.data import (AUFile, ClipDataset, FrameDataset, sparse_label_mask, sparse_label_report,
                          visible_label_statistics)
from aubench.errors import UserError
from aubench.models.base import Preset


@dataclass
class RunData:
    path: Path
    fold: int
    file: AUFile

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
        `label_ratio` may see (the kept labels only; at ratio 1 the file's per-fold statistics)."""
        rows = self.file.rows(self.fold, "train")
        return visible_label_statistics(self.file, rows, sparse_label_mask(self.file, label_ratio))

    def label_report(self, label_ratio: float) -> dict:
        """Realised label ratio and label coverage of the training split (sparse_label_report)."""
        rows = self.file.rows(self.fold, "train")
        return sparse_label_report(self.file, rows, sparse_label_mask(self.file, label_ratio), label_ratio)

    @property
    def fingerprint(self) -> str:
        if not hasattr(self, "_fingerprint"):
            self._fingerprint = self.file.fingerprint()
        return self._fingerprint

    def test_rows(self) -> np.ndarray:
        return np.sort(self.file.rows(self.fold, "test"))

    def test_labels(self) -> np.ndarray:
        return self.file.labels[self.test_rows()]

    # Datasets yield uint8 images (normalize=False); the engine normalises each batch on the
    # device (aubench.engine.trainer.move_batch), so workers and host-to-device copies move 4x
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
        The preset's crop (Preset.crop_fraction) is random where `augment` is given, else the centre."""
        try:
            if input_kind == "clip":
                return ClipDataset(self.file, self.fold, "train", clip_len=preset.clip_len, label_ratio=label_ratio,
                                   image_size=preset.image_size, augment=augment, normalize=False,
                                   key_view=key_view, occlusion=occlusion, landmarks=landmarks, windows=windows,
                                   crop_fraction=preset.crop_fraction)
            return FrameDataset(self.file, self.fold, "train", image_size=preset.image_size, augment=augment,
                                label_ratio=label_ratio, labeled_only=labeled_only, normalize=False,
                                occlusion=occlusion, landmarks=landmarks, views=views,
                                crop_fraction=preset.crop_fraction)
        except ValueError as err:  # no 68-point landmarks in the file
            raise UserError(f"--data {err}") from None

    def test_dataset(self, input_kind: str, preset: Preset, occlusion=None, landmarks: bool = False):
        """The test split; under `occlusion` every frame gets the same mask in every evaluation,
        of every method and run (aubench.data.occlusion.frame_occlusion_mask: a function of the
        frame's row and the condition only). The preset's crop (Preset.crop_fraction) is the centre one."""
        try:
            if input_kind == "clip":
                return ClipDataset(self.file, self.fold, "test", clip_len=preset.clip_len,
                                   image_size=preset.image_size, normalize=False, occlusion=occlusion,
                                   landmarks=landmarks, crop_fraction=preset.crop_fraction)
            return FrameDataset(self.file, self.fold, "test", image_size=preset.image_size, normalize=False,
                                occlusion=occlusion, landmarks=landmarks, crop_fraction=preset.crop_fraction)
        except ValueError as err:
            raise UserError(f"--data {err}") from None


def open_dataset_file(path: str | Path) -> AUFile:
    path = Path(path)
    try:
        return AUFile(path)
    except FileNotFoundError:
        raise UserError(f"--data {path}: no such file (convert a dataset with `datasets_tools convert`)") from None
    except (ValueError, OSError, KeyError) as err:
        raise UserError(f"--data {path}: not a usable aubench dataset file: {err}") from None


def open_labeled_file(path: str | Path) -> AUFile:
    """A dataset file that runs can train and be scored on; an unlabeled one (an `images`
    conversion) is refused, naming it."""
    file = open_dataset_file(path)
    try:
        file.require_labels("training and testing a method")
    except ValueError as err:
        raise UserError(f"--data {err}; an unlabeled face collection is pre-training data, which no "
                        f"method reads yet") from None
    return file


def open_run_data(path: str | Path, fold: int) -> RunData:
    """The fold of a labeled file that a run trains on and is scored on."""
    file = open_labeled_file(path)
    if not isinstance(fold, int) or not 1 <= fold <= file.num_folds:
        raise UserError(f"--fold {fold} is out of range: {path} has folds 1..{file.num_folds}")
    return RunData(Path(path), fold, file)


@dataclass
class PretrainData:
    """The frames a pre-training stage (Stage.pretraining) learns from when the run is given
    --pretrain-data: the fold's training subjects when it is the run's own file, every frame of
    another file. Test subjects of the fold never reach pre-training."""

    path: Path
    file: AUFile
    fold: int | None
    split: str          # "train" (the run's own file) or "all" (another file)

    @property
    def fingerprint(self) -> str:
        if not hasattr(self, "_fingerprint"):
            self._fingerprint = self.file.fingerprint()
        return self._fingerprint

    def dataset(self, preset: Preset, augment, landmarks: bool = False, views: int = 1) -> FrameDataset:
        try:
            return FrameDataset(self.file, self.fold, self.split, image_size=preset.image_size, augment=augment,
                                normalize=False, landmarks=landmarks, views=views, crop_fraction=preset.crop_fraction)
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
    except (ValueError, OSError, KeyError) as err:
        raise UserError(f"--pretrain-data {path}: not a usable aubench dataset file: {err}") from None
    if file.fingerprint() == run.fingerprint:
        return PretrainData(Path(path), file, run.fold, "train")
    test = set(run.file.fold_subjects(run.fold)[1])
    shared = sorted(test & set(file.subjects))
    if file.dataset == run.dataset and shared:
        raise UserError(f"--pretrain-data {path}: holds {len(shared)} of fold {run.fold}'s test subjects "
                        f"({', '.join(shared[:3])}{'...' if len(shared) > 3 else ''}) of {run.dataset}; test "
                        f"subjects never reach pre-training (pass the run's own file to pre-train on its "
                        f"training subjects)")
    return PretrainData(Path(path), file, None, "all")
