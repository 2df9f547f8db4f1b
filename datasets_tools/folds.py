"""Subject-exclusive folds (the literature's standard splits, or a seeded balanced split) and
the per-fold training statistics stored in the HDF5 file (definitions in docs/hdf5_schema.md)."""

from __future__ import annotations

import warnings

import numpy as np

NUM_FOLDS = 3

# Test subjects of fold K, as in JAA-Net / ME-GraphAU (fold1 tests on their "part3", fold2 on
# "part2", fold3 on "part1"; each fold trains on the other two). Checked against the test lists
# BP4D_test_img_path_foldK.txt / DISFA_test_img_path_foldK.txt of those repositories.
BP4D_TEST_FOLDS = (
    ("F004", "F006", "F007", "F012", "F014", "F015", "F017", "F019", "F021", "M003", "M006", "M009",
     "M015"),
    ("F003", "F005", "F011", "F013", "F020", "F022", "M002", "M005", "M010", "M011", "M013", "M016",
     "M017", "M018"),
    ("F001", "F002", "F008", "F009", "F010", "F016", "F018", "F023", "M001", "M004", "M007", "M008",
     "M012", "M014"),
)
DISFA_TEST_FOLDS = (
    ("SN003", "SN004", "SN005", "SN007", "SN008", "SN017", "SN023", "SN025", "SN029"),
    ("SN006", "SN011", "SN012", "SN013", "SN018", "SN021", "SN024", "SN028", "SN031"),
    ("SN001", "SN002", "SN009", "SN010", "SN016", "SN026", "SN027", "SN030", "SN032"),
)
# BP4D+ public 3-fold split (SplitK_Test_Subjects.csv of girishvn/BigSmall). It names 139 of the
# 140 subjects; the missing F082 is added to fold 1 (one of its two smallest test folds, 46
# subjects) so that a complete BP4D+ keeps the public split instead of falling back.
BP4D_PLUS_TEST_FOLDS = (
    ("F006", "F028", "F067", "F061", "F074", "F052", "F017", "M026", "F032", "F004", "F009", "F063",
     "F068", "F053", "F038", "M028", "M040", "M049", "M019", "M036", "M009", "F047", "M006", "M037",
     "F033", "F022", "M003", "M046", "F031", "M051", "M047", "M056", "M025", "F029", "F005", "M012",
     "F081", "M005", "M054", "F055", "F076", "F003", "F075", "M031", "F044", "F048", "F082"),
    ("F046", "F077", "M023", "M041", "M043", "M001", "F070", "F073", "M014", "M030", "F001", "F041",
     "M042", "F060", "F025", "M027", "F072", "F058", "F026", "F037", "F036", "F057", "M013", "M024",
     "M035", "F040", "F064", "M002", "F042", "M016", "F002", "F071", "M022", "F035", "F049", "M034",
     "F066", "F018", "M029", "M048", "F021", "F008", "M007", "M055", "F039", "F062"),
    ("F078", "M008", "F080", "M011", "F014", "M033", "F020", "M010", "M052", "M057", "M017", "M038",
     "F030", "F051", "M032", "F013", "F011", "F015", "F016", "F065", "M015", "M020", "F007", "F050",
     "F010", "M021", "F012", "F045", "F059", "M045", "F023", "M004", "F069", "M044", "M053", "M018",
     "M058", "M050", "F019", "F024", "F034", "F079", "M039", "F056", "F054", "F027", "F043"),
)
STANDARD_SPLITS = {
    "BP4D": (BP4D_TEST_FOLDS, "standard BP4D 3-fold split (JAA-Net / ME-GraphAU)"),
    "DISFA": (DISFA_TEST_FOLDS, "standard DISFA 3-fold split (JAA-Net / ME-GraphAU)"),
    "BP4D+": (BP4D_PLUS_TEST_FOLDS, "standard BP4D+ 3-fold split (the public BigSmall SplitK_Test_Subjects; F082, "
              "absent there, in fold 1)"),
}


def balanced_split(frame_counts: dict[str, int], seed: int, num_folds: int = NUM_FOLDS) -> list[list[str]]:
    """Deterministic subject-exclusive split with near-equal frame totals: subjects in a seeded
    random order, then largest first (stable), each to the fold with the fewest frames so far."""
    if len(frame_counts) < num_folds:
        raise ValueError(f"{len(frame_counts)} subject(s) cannot make {num_folds} subject-exclusive folds")
    names = sorted(frame_counts)
    order = np.random.default_rng(seed).permutation(len(names))
    shuffled = [names[i] for i in order]
    shuffled.sort(key=lambda s: -frame_counts[s])
    folds: list[list[str]] = [[] for _ in range(num_folds)]
    totals = [0] * num_folds
    for subject in shuffled:
        k = min(range(num_folds), key=lambda i: (totals[i], len(folds[i]), i))
        folds[k].append(subject)
        totals[k] += frame_counts[subject]
    return [sorted(f) for f in folds]


def choose_folds(dataset: str, frame_counts: dict[str, int], seed: int) -> tuple[list[list[str]], str]:
    """-> (test subjects per fold, split_source). The standard split when every present subject
    is in it and no fold is left without test or training subjects; else the balanced split."""
    present = set(frame_counts)
    if dataset in STANDARD_SPLITS:
        test_folds, description = STANDARD_SPLITS[dataset]
        known = set().union(*test_folds)
        folds = [sorted(set(f) & present) for f in test_folds]
        unknown = sorted(present - known)
        if not unknown and all(folds) and all(len(f) < len(present) for f in folds):
            missing = len(known - present)
            note = f"; {missing} of its subjects absent" if missing else ""
            return folds, description + note
        reason = (f"subjects not in the standard split: {', '.join(unknown[:5])}"
                  + ("..." if len(unknown) > 5 else "") if unknown
                  else "a fold of the standard split would be empty with the subjects present")
        warnings.warn(f"{dataset}: {reason}; using a balanced split (seed {seed}) instead", stacklevel=2)
        source = f"balanced by frame count, seed {seed} ({dataset} standard split not usable: {reason})"
    else:
        source = f"balanced by frame count, seed {seed} (no standard split for {dataset})"
    return balanced_split(frame_counts, seed), source


def fold_statistics(label: np.ndarray) -> dict[str, np.ndarray]:
    """Training-frame statistics from int8 labels (n, U), -1 unknown.

    au_rate r_i = positives / known labels (0 when AU_i is never known); class_weight
    w_i = 1 / r_i normalised to mean 1, an AU with r_i = 0 getting the largest finite weight
    (all ones when no AU ever occurs); cooccurrence C[i, j] = P(AU_j = 1 | AU_i = 1) over frames
    where both are known, diagonal 1, a row of zeros when AU_i never occurs.
    """
    positive = (label == 1).astype(np.float64)
    known = (label >= 0).astype(np.float64)
    positives = positive.sum(0)
    known_count = known.sum(0)
    rate = np.divide(positives, known_count, out=np.zeros_like(positives), where=known_count > 0)
    weight = np.ones_like(rate)
    occurring = rate > 0
    if occurring.any():
        weight[occurring] = 1.0 / rate[occurring]
        weight[~occurring] = weight[occurring].max()
    if weight.size:  # an unlabeled file has no AU
        weight = weight / weight.mean()
    joint = positive.T @ positive          # both positive
    given = positive.T @ known             # AU_i positive and AU_j known
    cooccurrence = np.divide(joint, given, out=np.zeros_like(joint), where=given > 0)
    occurs = positives > 0
    cooccurrence[~occurs] = 0.0
    np.fill_diagonal(cooccurrence, occurs.astype(np.float64))
    return {"au_rate": rate, "class_weight": weight.astype(np.float32), "cooccurrence": cooccurrence}


def distinct_combinations(label: np.ndarray) -> int:
    """Number of distinct label rows among frames whose labels are all known."""
    complete = label[(label >= 0).all(axis=1)]
    if len(complete) == 0:
        return 0
    return int(len(np.unique(complete, axis=0)))
