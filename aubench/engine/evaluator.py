"""Test-split evaluation shared by all methods: every test frame scored once.

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
from aubench.engine.distributed import DistEnv, all_reduce_sum
from aubench.engine.predictions import Predictions, predictions_of_test_split
from aubench.engine.trainer import autocast_context, move_batch
from aubench.models.base import AUMethod, Preset


@torch.no_grad()
def predict_test_split(method: AUMethod, data: RunData, preset: Preset, env: DistEnv, precision: str = "fp32",
                       workers: int = 0, batch_size: int | None = None, progress: bool = False,
                       occlusion: tuple[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(test rows (T,), mean probabilities (T,U)) for every test frame, under `occlusion` (a
    parsed condition, aubench.data.occlusion) when given."""
    dataset = data.test_dataset(method.input_kind, preset, occlusion, landmarks=method.uses_landmarks)
    if env.distributed:
        sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=False)
    else:
        sampler = SequentialSampler(dataset)
    loader = DataLoader(dataset, batch_size=batch_size or preset.batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=env.device.type == "cuda")
    rows = data.test_rows()
    rows_on_device = torch.from_numpy(rows).to(env.device)
    sums = torch.zeros(len(rows), data.num_aus, dtype=torch.float64, device=env.device)
    counts = torch.zeros(len(rows), dtype=torch.float64, device=env.device)
    was_training = method.training
    method.eval()
    try:
        for batch in tqdm(loader, desc=f"test {method.name}", disable=not (progress and env.is_main), leave=False):
            batch = move_batch(batch, env.device)
            with autocast_context(env.device, precision):
                probs = method.predict(batch)
            if probs.shape != batch["label"].shape:
                raise RuntimeError(f"{method.name}.predict returned shape {tuple(probs.shape)}, "
                                   f"expected {tuple(batch['label'].shape)}")
            index = batch["index"].reshape(-1)
            position = torch.searchsorted(rows_on_device, index)
            if (position >= len(rows)).any() or (rows_on_device[position.clamp(max=len(rows) - 1)] != index).any():
                raise RuntimeError("a test batch holds frames outside the fold's test split")
            sums.index_add_(0, position, probs.reshape(-1, data.num_aus).double())
            counts.index_add_(0, position, torch.ones_like(index, dtype=torch.float64))
    finally:
        method.train(was_training)
    all_reduce_sum(sums)
    all_reduce_sum(counts)
    if (counts == 0).any():
        missing = int((counts == 0).sum())
        raise RuntimeError(f"{missing} test frames were never predicted")
    return rows, (sums / counts[:, None]).cpu().numpy()


def evaluate_with_predictions(method: AUMethod, data: RunData, preset: Preset, env: DistEnv,
                              precision: str = "fp32", workers: int = 0, progress: bool = False,
                              occlusion: tuple[str, float] | None = None) -> tuple[dict[str, Any], Predictions]:
    """(metrics, per-frame predictions) of `method` on the fold's test split (occluded by
    `occlusion` when given): the metrics (aubench.metrics.au_metrics) are those of the
    predictions as stored (float32), so the predictions file reproduces them exactly."""
    rows, probabilities = predict_test_split(method, data, preset, env, precision, workers, progress=progress,
                                             occlusion=occlusion)
    predictions = predictions_of_test_split(data.file, rows, probabilities)
    return predictions.metrics(data.file.labels), predictions

