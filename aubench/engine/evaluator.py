"""Test-split evaluation shared by all methods: every test frame scored once (and the same for
a run's validation split, aubench.engine.data_access: its frames predicted the same way).

Frame methods predict each test frame; clip methods predict the test split's clips, which tile
every sequence, and a frame covered by several clips gets the mean of its predictions
(batch["index"] holds each prediction's frame row). Under DDP every rank predicts its shard
(DistributedSampler pads with repeats, harmless because predictions are averaged per row); the
per-row sums and counts are summed over ranks, then metrics are computed on rank 0's copy
(every rank has the same numbers). The metrics are computed from the per-frame probabilities as
they are stored beside the result (aubench.engine.predictions: float32), so that file gives the
result's metrics back exactly.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler
from tqdm.auto import tqdm

from aubench.engine.data_access import RunData
from aubench.engine.device import autocast_context, move_batch
from aubench.engine.distributed import DistEnv, all_reduce_sum
from aubench.engine.predictions import Predictions, predictions_of_test_split
from aubench.errors import UserError
from aubench.models.base import AUMethod, Preset


class DetectedLandmarks:
    """Landmarks detected on the test images as the method sees them (occluded), with dlib's
    detector and 68-point predictor (the faces extra, as `datasets_tools convert --landmarks
    detect`); where no face is found, the mean shape of the fold's training faces (stored
    landmarks, placed as test items place them): nothing comes from the clean frame. `counts`
    ({"detected", "mean_shape"}) counts the frames of each kind."""

    def __init__(self, dataset, counts: dict[str, int]):
        from datasets_tools.face_detect import DEFAULT_MAX_SIDE, detector_for, unavailable_reason

        reason = unavailable_reason()
        if reason:
            raise UserError(f"--occluded-landmarks detect: {reason}")
        self.detector = detector_for(None, DEFAULT_MAX_SIDE)
        train = dataset.file.read_landmarks(dataset.file.rows(dataset.fold, "train"))
        with np.errstate(invalid="ignore"):
            mean_shape = np.nanmean(train, axis=0)
        self.mean_shape = torch.from_numpy(dataset.item_points(mean_shape).astype(np.float32))
        self.counts = counts

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["image"]                       # uint8 (..., 3, H, W), occluded
        points = []
        for image in images.reshape(-1, *images.shape[-3:]):
            found = self.detector(np.ascontiguousarray(image.permute(1, 2, 0).numpy()[:, :, ::-1]))
            self.counts["mean_shape" if found is None else "detected"] += 1
            points.append(self.mean_shape if found is None else torch.from_numpy(found))
        return {**batch, "landmarks": torch.stack(points).reshape(*images.shape[:-3], *self.mean_shape.shape)}


@torch.no_grad()
def predict_test_split(method: AUMethod, data: RunData, preset: Preset, env: DistEnv, precision: str = "fp32",
                       workers: int = 0, batch_size: int | None = None, progress: bool = False,
                       occlusion: tuple[str, float] | None = None,
                       landmark_counts: dict[str, int] | None = None,
                       split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(test rows (T,), mean probabilities (T,U)) for every test frame, under `occlusion` (a
    parsed condition, aubench.data.occlusion) when given. With `landmark_counts` (a dict, filled
    in) the method's landmarks are detected on the test images (DetectedLandmarks) instead of
    read from the data file. `split` "validation": the run's validation split instead."""
    dataset = data.test_dataset(method.input_kind, preset, occlusion, landmarks=method.uses_landmarks, split=split)
    detect = DetectedLandmarks(dataset, landmark_counts) if landmark_counts is not None else None
    if env.distributed:
        sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=False)
    else:
        sampler = SequentialSampler(dataset)
    loader = DataLoader(dataset, batch_size=batch_size or preset.batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=env.device.type == "cuda")
    rows = data.split_rows(split)
    rows_on_device = torch.from_numpy(rows).to(env.device)
    sums = torch.zeros(len(rows), data.num_aus, dtype=torch.float64, device=env.device)
    counts = torch.zeros(len(rows), dtype=torch.float64, device=env.device)
    was_training = method.training
    method.eval()
    try:
        for batch in tqdm(loader, desc=f"{split} {method.name}", disable=not (progress and env.is_main), leave=False):
            if detect is not None:
                batch = detect(batch)
            batch = move_batch(batch, env.device)
            with autocast_context(env.device, precision):
                probs = method.predict(batch)
            if probs.shape != batch["label"].shape:
                raise RuntimeError(f"{method.name}.predict returned shape {tuple(probs.shape)}, "
                                   f"expected {tuple(batch['label'].shape)}")
            index = batch["index"].reshape(-1)
            position = torch.searchsorted(rows_on_device, index)
            if (position >= len(rows)).any() or (rows_on_device[position.clamp(max=len(rows) - 1)] != index).any():
                raise RuntimeError(f"a {split} batch holds frames outside the fold's {split} split")
            sums.index_add_(0, position, probs.reshape(-1, data.num_aus).double())
            counts.index_add_(0, position, torch.ones_like(index, dtype=torch.float64))
    finally:
        method.train(was_training)
    all_reduce_sum(sums)
    all_reduce_sum(counts)
    if (counts == 0).any():
        missing = int((counts == 0).sum())
        raise RuntimeError(f"{missing} {split} frames were never predicted")
    return rows, (sums / counts[:, None]).cpu().numpy()


def evaluate_with_predictions(method: AUMethod, data: RunData, preset: Preset, env: DistEnv,
                              precision: str = "fp32", workers: int = 0, progress: bool = False,
                              occlusion: tuple[str, float] | None = None,
                              landmark_counts: dict[str, int] | None = None, split: str = "test",
                              label_ratio: float = 1.0) -> tuple[dict[str, Any], Predictions]:
    """(metrics, per-frame predictions) of `method` on the fold's test split (occluded by
    `occlusion` when given): the metrics (aubench.metrics.au_metrics) are those of the
    predictions as stored (float32), so the predictions file reproduces them exactly. `split`
    "validation": on the run's validation split, scored on the labels the sparse-label protocol
    at `label_ratio` keeps (RunData.scoring_labels)."""
    rows, probabilities = predict_test_split(method, data, preset, env, precision, workers, progress=progress,
                                             occlusion=occlusion, landmark_counts=landmark_counts, split=split)
    predictions = predictions_of_test_split(data.file, rows, probabilities)
    return predictions.metrics(data.scoring_labels(split, label_ratio)), predictions

