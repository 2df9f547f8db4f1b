"""aubench.metrics agrees with scikit-learn's f1/precision/recall/accuracy per AU."""
import gzip

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from aubench.metrics import au_metrics


def sklearn_per_au(labels, probabilities):
    out = {"f1": [], "precision": [], "recall": [], "accuracy": [], "all_positive": []}
    for u in range(labels.shape[1]):
        known = labels[:, u] >= 0
        y, p = labels[known, u], (probabilities[known, u] >= 0.5).astype(int)
        out["f1"].append(f1_score(y, p, zero_division=0))
        out["precision"].append(precision_score(y, p, zero_division=0))
        out["recall"].append(recall_score(y, p, zero_division=0))
        out["accuracy"].append(accuracy_score(y, p) if known.any() else 0.0)
        out["all_positive"].append(f1_score(y, np.ones_like(y), zero_division=0))
    return {k: np.array(v) for k, v in out.items()}


def check_against_sklearn(labels, probabilities):
    ours = au_metrics(labels, probabilities)
    ref = sklearn_per_au(labels, probabilities)
    names = ours["au_names"]
    for key in ("f1", "precision", "recall", "accuracy"):
        np.testing.assert_allclose([ours[key][n] for n in names], ref[key], rtol=0, atol=1e-12, err_msg=key)
    np.testing.assert_allclose([ours["all_positive_f1"][n] for n in names], ref["all_positive"], atol=1e-12)
    assert ours["mean_f1"] == pytest.approx(ref["f1"].mean(), abs=1e-12)
    return ours


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_labels_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.choice([-1, 0, 1], size=(500, 8), p=[0.2, 0.6, 0.2]).astype(np.int8)
    labels[:, 3] = -1 + (rng.random(500) < 0.5)  # an AU with only unknown and negative labels
    probabilities = rng.random((500, 8))
    ours = check_against_sklearn(labels, probabilities)
    assert ours["num_known"]["AU0"] == int((labels[:, 0] >= 0).sum())


def test_threshold_is_inclusive_and_unknown_ignored():
    labels = np.array([[1], [0], [-1], [1]])
    probs = np.array([[0.5], [0.49], [0.99], [0.1]])
    m = au_metrics(labels, probs, ["AU1"])
    # TP=1 (0.5 counts as positive), FN=1, FP=0; the unknown frame's 0.99 is ignored.
    assert m["f1"]["AU1"] == pytest.approx(2 / 3)
    assert m["precision"]["AU1"] == 1.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        au_metrics(np.zeros((3, 2)), np.zeros((3, 3)))


def read_labels(path):
    with gzip.open(path, "rt") as f:
        return np.loadtxt(f, dtype=np.int8)


@pytest.mark.parametrize("dataset", ["bp4d", "disfa"])
def test_real_labels_perturbed_predictions(shared_data, dataset):
    prefix = "BP4D" if dataset == "bp4d" else "DISFA"
    labels = read_labels(shared_data / "au_labels" / dataset / f"{prefix}_test_label_fold1.txt.gz")
    rng = np.random.default_rng(7)
    flip = rng.random(labels.shape) < 0.15
    probabilities = np.where(flip, 1 - labels, labels).astype(np.float64) * 0.6 + rng.random(labels.shape) * 0.3
    ours = check_against_sklearn(labels, probabilities)
    # Mostly-correct predictions beat predicting every AU present.
    assert ours["mean_f1"] > ours["all_positive_mean_f1"]
