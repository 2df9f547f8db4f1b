"""AU detection metrics, the protocol of JAA-Net and ME-GraphAU.

Per AU, over every test frame whose label is known (label -1 is ignored): predictions are
probabilities thresholded at 0.5 (or at per-AU thresholds chosen on a validation split:
aubench.engine.postprocess.best_thresholds); F1 = 2 TP / (2 TP + FP + FN) (0 when the AU has neither
positives nor predicted positives, as scikit-learn's zero_division=0). The headline number is
the mean of the per-AU F1 scores. The all-positive baseline (predict 1 for every frame) is
reported beside it: its F1 is 2r / (1 + r) for an AU with positive rate r, the floor any
detector must beat.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

THRESHOLD = 0.5


def confusion_counts(labels: np.ndarray, predictions: np.ndarray) -> dict[str, np.ndarray]:
    """Per-AU TP, FP, FN, TN over known labels. labels (N,U) in {1,0,-1}; predictions (N,U) 0/1."""
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    if labels.shape != predictions.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} must both be (frames, AUs)")
    known = labels >= 0
    positive = labels == 1
    predicted = predictions.astype(bool)
    return {
        "tp": np.sum(known & positive & predicted, axis=0),
        "fp": np.sum(known & ~positive & predicted, axis=0),
        "fn": np.sum(known & positive & ~predicted, axis=0),
        "tn": np.sum(known & ~positive & ~predicted, axis=0),
    }


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = num.astype(np.float64)
    den = den.astype(np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def au_metrics(labels: np.ndarray, probabilities: np.ndarray, au_names: Sequence[str] | None = None,
               threshold: float | Sequence[float] = THRESHOLD) -> dict:
    """Per-AU and mean F1, precision, recall and accuracy, plus the all-positive baseline's F1.

    labels: (N,U) with 1 / 0 / -1 (unknown, ignored); probabilities: (N,U) in [0,1];
    threshold: one for every AU, or one per AU (U,): recorded as a number, or per AU by name.
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if labels.shape != probabilities.shape:
        raise ValueError(f"labels {labels.shape} and probabilities {probabilities.shape} differ in shape")
    num_aus = labels.shape[1]
    names = list(au_names) if au_names is not None else [f"AU{i}" for i in range(num_aus)]
    if len(names) != num_aus:
        raise ValueError(f"{len(names)} AU names for {num_aus} label columns")
    if np.isnan(probabilities).any():
        raise ValueError("predicted probabilities contain NaN")
    per_au_threshold = np.ndim(threshold) > 0
    if per_au_threshold and np.shape(threshold) != (num_aus,):
        raise ValueError(f"{np.shape(threshold)[0]} thresholds for {num_aus} AUs")
    c = confusion_counts(labels, probabilities >= np.asarray(threshold, dtype=np.float64))
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    known = tp + fp + fn + tn
    accuracy = _ratio(tp + tn, known)
    positives = tp + fn
    # Predicting 1 everywhere: TP = positives, FP = negatives, FN = 0.
    baseline_f1 = _ratio(2 * positives, positives + known)

    def per_au(values: np.ndarray) -> dict[str, float]:
        return {name: float(v) for name, v in zip(names, values)}

    return {
        "au_names": names,
        "threshold": per_au(np.asarray(threshold)) if per_au_threshold else float(threshold),
        "f1": per_au(f1),
        "precision": per_au(precision),
        "recall": per_au(recall),
        "accuracy": per_au(accuracy),
        "mean_f1": float(f1.mean()) if num_aus else 0.0,
        "mean_precision": float(precision.mean()) if num_aus else 0.0,
        "mean_recall": float(recall.mean()) if num_aus else 0.0,
        "mean_accuracy": float(accuracy.mean()) if num_aus else 0.0,
        "all_positive_f1": per_au(baseline_f1),
        "all_positive_mean_f1": float(baseline_f1.mean()) if num_aus else 0.0,
        "num_frames": int(labels.shape[0]),
        "num_known": {name: int(k) for name, k in zip(names, known)},
        "num_positive": {name: int(p) for name, p in zip(names, positives)},
    }
