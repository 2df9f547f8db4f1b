"""Fold choice and per-fold statistics (definitions in docs/hdf5_schema.md), checked by brute force."""

import numpy as np
import pytest

from datasets_tools.folds import (BP4D_PLUS_TEST_FOLDS, BP4D_TEST_FOLDS, DISFA_TEST_FOLDS, balanced_split,
                                  choose_folds, distinct_combinations, fold_statistics)


def test_statistics_match_brute_force():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, size=(400, 5)).astype(np.int8)
    label[rng.random(label.shape) < 0.2] = -1
    label[:, 4] = np.where(label[:, 4] == 1, 0, label[:, 4])  # AU 4 never occurs
    stats = fold_statistics(label)
    for i in range(5):
        known = label[:, i] >= 0
        assert stats["au_rate"][i] == pytest.approx((label[known, i] == 1).mean())
        for j in range(5):
            both = (label[:, i] >= 0) & (label[:, j] >= 0)
            given = both & (label[:, i] == 1)
            if i == 4:
                assert stats["cooccurrence"][i, j] == 0
            elif i == j:
                assert stats["cooccurrence"][i, j] == 1
            else:
                assert stats["cooccurrence"][i, j] == pytest.approx((label[given, j] == 1).mean())
    rate = stats["au_rate"]
    weight = 1 / rate[:4]
    weight = np.append(weight, weight.max())
    np.testing.assert_allclose(stats["class_weight"], weight / weight.mean(), rtol=1e-6)
    assert stats["class_weight"].dtype == np.float32 and stats["class_weight"].mean() == pytest.approx(1)


def test_no_positive_at_all_gives_unit_weights():
    stats = fold_statistics(np.zeros((10, 3), np.int8))
    np.testing.assert_array_equal(stats["class_weight"], np.ones(3, np.float32))
    np.testing.assert_array_equal(stats["cooccurrence"], np.zeros((3, 3)))


def test_distinct_combinations_ignores_rows_with_unknowns():
    label = np.array([[1, 0], [1, 0], [0, 0], [1, -1], [-1, -1]], np.int8)
    assert distinct_combinations(label) == 2


def test_standard_splits_are_disjoint_and_sized():
    for folds, sizes in ((BP4D_TEST_FOLDS, (13, 14, 14)), (DISFA_TEST_FOLDS, (9, 9, 9)),
                         (BP4D_PLUS_TEST_FOLDS, (47, 46, 47))):
        assert tuple(len(f) for f in folds) == sizes
        assert len(set().union(*folds)) == sum(sizes)


def test_bp4d_plus_split_is_the_public_one_plus_f082(shared_data):
    for k, fold in enumerate(BP4D_PLUS_TEST_FOLDS, start=1):
        lines = (shared_data / "bp4d_plus_splits" / f"Split{k}_Test_Subjects.csv").read_text().split()
        public = {line.split(",")[1] for line in lines[1:]}
        assert set(fold) - public == ({"F082"} if k == 1 else set())
        assert public <= set(fold)
    counts = {s: 10 for fold in BP4D_PLUS_TEST_FOLDS for s in fold}
    assert len(counts) == 140
    folds, source = choose_folds("BP4D+", counts, seed=0)
    assert source.startswith("standard BP4D+") and [set(f) for f in folds] == [set(f) for f in BP4D_PLUS_TEST_FOLDS]


def test_balanced_split_is_deterministic_balanced_and_covering():
    counts = {f"S{i:02d}": int(c) for i, c in enumerate(np.random.default_rng(1).integers(100, 1000, 20))}
    folds = balanced_split(counts, seed=5)
    assert folds == balanced_split(counts, seed=5)
    assert sorted(sum(folds, [])) == sorted(counts)
    totals = [sum(counts[s] for s in f) for f in folds]
    assert max(totals) - min(totals) <= max(counts.values())
    with pytest.raises(ValueError, match="2 subject"):
        balanced_split({"a": 1, "b": 2}, seed=0)


def test_choose_folds_standard_or_fallback():
    counts = {s: 10 for s in ("F001", "F003", "F004", "M002")}
    folds, source = choose_folds("BP4D", counts, seed=0)
    assert source.startswith("standard BP4D") and folds == [["F004"], ["F003", "M002"], ["F001"]]
    with pytest.warns(UserWarning, match="X999"):
        folds, source = choose_folds("BP4D", {**counts, "X999": 5}, seed=0)
    assert source.startswith("balanced") and sorted(sum(folds, [])) == sorted([*counts, "X999"])
    folds, source = choose_folds("MME", counts, seed=0)
    assert source.startswith("balanced") and "no standard split for MME" in source
