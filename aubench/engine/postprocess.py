"""Results made from other results' per-frame predictions, without retraining: temporal
smoothing (`--smooth`, `aubench smooth`) and ensembles (`aubench ensemble`).

Both read the predictions kept beside results (aubench.engine.predictions), compute new
per-frame probabilities, score them against the data file's labels with the evaluator's own
metric code (Predictions.metrics) and write ordinary results (JSON + predictions file), which the
leaderboard reads like any other.

Smoothing follows the RegNetY + ViViT ensemble paper (Section 3.4): a 1D Gaussian filter along
the video over each AU's scores, before thresholding; the paper chose kernel size 51 and sigma
3.0 by grid search (`gaussian:51:3.0`). Here each AU's probability at a frame becomes the
Gaussian-weighted mean of the probabilities of the frames of the same sequence whose frame
numbers lie within (kernel size - 1) / 2 of its own, weight exp(-d^2 / (2 sigma^2)) for a
frame-number distance d, normalised over the frames present. Never across a sequence boundary;
the paper does not say how it treats a video's ends or its frames without a face, so two choices
are ours: at the ends the mean runs over the frames that exist (nothing padded in), and a frame
missing from a sequence (an Aff-Wild2 frame without a face) leaves a gap rather than pulling
farther frames closer. A smoothed result is its source with protocol "<protocol>+smooth-<name>"
(name "gaussian-k51-s3"), so the leaderboard shows it in its own section, the raw result in
the raw one; it records "smoothing" (kind, kernel size, sigma) and "smoothed_from" (the source's
file name and predictions sha256), and is written beside its source as
"<source stem>_smooth-<name>.json".

How the filter was chosen is recorded (smoothing["choice"], and in the result's
"chosen_on_test" or "choices", which the leaderboard marks): a filter given by hand is "filter
not chosen on validation", except on the official Aff-Wild2 split, "filter chosen on this test
set (as the paper)": the paper grid-searched its gaussian:51:3.0 on the ABAW validation set, which
is that split's test set, and that split has no other held-out set a filter given by hand could
have been chosen on. With `select_on_validation` (`aubench smooth
--select-on-validation`) the filter is the one of SMOOTHING_GRID whose smoothed predictions on
the run's validation split (aubench.engine.predictions: a result of a run with --validation
keeps them) score the best mean F1; its results are named "smooth-val" (protocol
"<protocol>+smooth-val", file "<source stem>_smooth-val.json"), whatever filter each fold
chose, and record the filter, the grid and every candidate's validation mean F1. A result whose
thresholds were chosen on validation (--thresholds best-val) gets them chosen again on the
smoothed validation predictions.

Per-AU thresholds (`best_thresholds`): for each AU, the threshold of THRESHOLD_GRID with the
best F1 on a run's validation predictions (`--thresholds best-val`, aubench.engine.run).

Ensembles follow the paper's Section 3.3: average fusion of the members' prediction scores
(here a weighted mean of their per-frame probabilities, equal weights by default). Members are
(run, method) pairs; every (dataset, protocol, test condition) all members have is fused fold by
fold, refusing members that share none, and members whose folds, data files, AU sets, test rows,
thresholds or training occlusion differ. An ensemble result records "ensemble": its members (method, result file,
predictions sha256, weight, identity) and is named
"<name>_fold<k>_<protocol>[_train-<condition>][_test-<condition>].json";
its size and speed are the members' together (parameters and FLOPs added, frames per second of
running every member in turn). Smoothing, when asked, applies to the fused probabilities.

Both keep what they made: a smoothed or ensemble result already there, made from the same
predictions with the same settings, is kept. Results whose predictions file is missing or altered
are left out with a warning naming them.

Neither reads a training label: they see test predictions and the test split's labels only
(and a run's validation predictions with the labels the sparse-label protocol keeps on them, to
choose a filter or thresholds there).
"""
from __future__ import annotations

import glob
import hashlib
import math
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from aubench.engine.identity import result_identity
from aubench.engine.predictions import (Predictions, TestLabels, predictions_path, predictions_problem,
                                        read_predictions, remove_result, threshold_record, write_result)
from aubench.engine.results import RESULT_SCHEMA, conditions, dataset_label, find_results, read_json_or_none, warn
from aubench.errors import UserError
from aubench.metrics import THRESHOLD, confusion_counts

SMOOTH_PREFIX = "smooth-"


# ---- thresholds chosen on a validation split -------------------------------------------------

THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05, 0.10, ... 0.95


def best_thresholds(probabilities: np.ndarray, labels: np.ndarray, grid: tuple[float, ...] = THRESHOLD_GRID
                    ) -> np.ndarray:
    """float64 (U,): per AU, the threshold of `grid` whose detections score the best F1 against
    `labels` (T, U; -1 unknown, not counted) on these frames; of equal scores the one nearest
    the default 0.5 (then the lower), so an AU without a known positive keeps 0.5."""
    f1 = []
    for threshold in grid:
        c = confusion_counts(labels, probabilities >= threshold)
        denominator = (2 * c["tp"] + c["fp"] + c["fn"]).astype(np.float64)
        f1.append(np.divide(2.0 * c["tp"], denominator, out=np.zeros_like(denominator), where=denominator > 0))
    f1 = np.stack(f1)                                         # (G, U)
    order = sorted(range(len(grid)), key=lambda g: (abs(grid[g] - THRESHOLD), grid[g]))  # preferred first
    best = [order[int(np.argmax(f1[order, u]))] for u in range(f1.shape[1])]  # argmax: the first of equals
    return np.asarray([grid[g] for g in best], dtype=np.float64)


def with_best_thresholds(validation: Predictions, labels: np.ndarray) -> Predictions:
    """`validation` with best_thresholds chosen on it against `labels` (the file's whole array)."""
    return replace(validation, threshold=best_thresholds(validation.probabilities, labels[validation.rows]))


def thresholds_record(threshold, au_names: list[str], kind: str) -> dict[str, Any]:
    """What a result records of its decision thresholds: {"kind": "fixed" | "best-val",
    "values": a number, or per AU by name}."""
    values = threshold_record(threshold)
    return {"kind": kind, "values": dict(zip(au_names, values)) if isinstance(values, list) else values}


THRESHOLDS_CHOICE = "per-AU thresholds chosen on validation"  # the text results and the leaderboard show


# ---- smoothing -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Smoothing:
    """A temporal filter over each AU's per-frame probabilities along a sequence."""

    kernel_size: int       # odd: frames within (kernel_size - 1) / 2 frame numbers of a frame count
    sigma: float           # the Gaussian's standard deviation, in frames
    kind: str = "gaussian"

    @property
    def name(self) -> str:
        """"gaussian-k51-s3": the protocol suffix and file name part."""
        return f"{self.kind}-k{self.kernel_size}-s{self.sigma:g}"

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "kernel_size": self.kernel_size, "sigma": self.sigma}


SMOOTH_SYNTAX = "gaussian:<kernel size>:<sigma>, e.g. gaussian:51:3.0"
PAPER_FILTER = Smoothing(51, 3.0)  # the RegNetY + ViViT paper's, grid-searched on the ABAW validation set
# --select-on-validation: the candidates (the paper's among them), tried in this order
SMOOTHING_GRID = tuple(Smoothing(k, s) for k in (11, 21, 31, 51, 71) for s in (1.0, 2.0, 3.0, 5.0, 10.0))
SELECTED_NAME = "val"  # the name (protocol "+smooth-val", files "_smooth-val") of a filter chosen on validation
# How a filter was chosen, as results record it and the leaderboard shows it
FILTER_ON_TEST = "filter chosen on this test set (as the paper)"
FILTER_NOT_ON_VALIDATION = "filter not chosen on validation"


def filter_choice(result: dict[str, Any], smoothing: Smoothing) -> str:
    """How a filter given by hand (`smoothing`, any) was chosen for `result` (the source result, or
    a smoothed one): FILTER_ON_TEST on the official Aff-Wild2 split (whose test set is the ABAW
    validation set the paper chose its filter on), FILTER_NOT_ON_VALIDATION otherwise."""
    official = result.get("dataset") == "Aff-Wild2" and (result.get("data") or {}).get("split_scheme") == "official"
    return FILTER_ON_TEST if official else FILTER_NOT_ON_VALIDATION


def parse_smoothing(text: str) -> Smoothing:
    """Smoothing of a --smooth value; ValueError saying what is expected."""
    parts = text.split(":")
    if len(parts) != 3 or parts[0] != "gaussian":
        raise ValueError(f"expected {SMOOTH_SYNTAX}, got {text!r}")
    try:
        size, sigma = int(parts[1]), float(parts[2])
    except ValueError:
        raise ValueError(f"expected {SMOOTH_SYNTAX}, got {text!r}") from None
    if size < 3 or size % 2 == 0:
        raise ValueError(f"{text!r}: the kernel size must be odd and at least 3 (it is centred on a frame), got {size}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"{text!r}: sigma must be a positive number, got {parts[2]}")
    if float(f"{sigma:g}") != sigma:  # the name must tell filters apart: it names their files
        raise ValueError(f"{text!r}: give sigma with at most 6 significant digits, got {parts[2]}")
    return Smoothing(size, sigma)


def smooth_probabilities(probabilities: np.ndarray, sequence: np.ndarray, frame_no: np.ndarray,
                         smoothing: Smoothing) -> np.ndarray:
    """float32 (T, U): each column of `probabilities` smoothed along each sequence (see the module
    docstring). Rows are frames in file order: a sequence's frames contiguous, frame numbers
    strictly increasing within it, so every frame within `radius` frame numbers of a frame is
    within `radius` rows of it."""
    t = len(probabilities)
    sequence = np.asarray(sequence, dtype=np.int64)
    frame_no = np.asarray(frame_no, dtype=np.int64)
    same = sequence[1:] == sequence[:-1]
    if np.any(same & (frame_no[1:] <= frame_no[:-1])):
        raise ValueError("frame numbers do not increase within a sequence")
    if len(np.unique(sequence)) != t - int(same.sum()):  # as many runs of rows as sequences
        raise ValueError("a sequence's frames are not consecutive rows")
    radius = smoothing.kernel_size // 2
    values = np.asarray(probabilities, dtype=np.float64)
    weighted = np.zeros_like(values)
    total = np.zeros(t, dtype=np.float64)
    for shift in range(-min(radius, t - 1), min(radius, t - 1) + 1):
        here = slice(max(0, -shift), t - max(0, shift))           # frames i
        there = slice(max(0, shift), t - max(0, -shift))          # their neighbours i + shift
        distance = frame_no[there] - frame_no[here]
        weight = np.where((sequence[there] == sequence[here]) & (np.abs(distance) <= radius),
                          np.exp(-0.5 * (distance / smoothing.sigma) ** 2), 0.0)
        weighted[here] += weight[:, None] * values[there]
        total[here] += weight
    return (weighted / total[:, None]).astype(np.float32)  # total >= 1: a frame weighs itself with 1


def smooth_predictions(predictions: Predictions, smoothing: Smoothing) -> Predictions:
    probabilities = smooth_probabilities(predictions.probabilities, predictions.sequence, predictions.frame_no,
                                         smoothing)
    return Predictions(predictions.rows, probabilities, predictions.sequence, predictions.frame_no,
                       predictions.sequence_names, predictions.au_names, predictions.threshold)


def smoothed_path(path: str | Path, smoothing: Smoothing | None) -> Path:
    """Where the smoothed result of the result at `path` goes; `smoothing` None: the filter
    chosen on validation (SELECTED_NAME)."""
    path = Path(path)
    return path.with_name(f"{path.stem}_{SMOOTH_PREFIX}{SELECTED_NAME if smoothing is None else smoothing.name}.json")


def select_smoothing(validation: Predictions, labels: np.ndarray, rechoose_thresholds: bool,
                     grid: tuple[Smoothing, ...] = SMOOTHING_GRID) -> tuple[Smoothing, list[dict[str, Any]]]:
    """(the filter of `grid` whose smoothed `validation` predictions score the best mean F1 against
    `labels`, the first of equals in grid order; every candidate's record with its
    "validation_mean_f1"). With `rechoose_thresholds` each candidate is scored at the per-AU
    thresholds chosen on its own smoothed predictions."""
    scores = []
    for candidate in grid:
        smoothed = smooth_predictions(validation, candidate)
        if rechoose_thresholds:
            smoothed = with_best_thresholds(smoothed, labels)
        scores.append({**candidate.record(), "validation_mean_f1": smoothed.metrics(labels)["mean_f1"]})
    best = max(range(len(grid)), key=lambda i: scores[i]["validation_mean_f1"])  # max: the first of equals
    return grid[best], scores


def _same_filter_request(stored: Any, smoothing: Smoothing | None, grid: tuple[Smoothing, ...]) -> bool:
    """Whether a stored smoothing record answers the same request: the same filter given by
    hand, or a choice on validation among the same grid."""
    if not isinstance(stored, dict):
        return False
    if smoothing is None:
        return stored.get("grid") == [candidate.record() for candidate in grid]
    return "grid" not in stored and {k: stored.get(k) for k in ("kind", "kernel_size", "sigma")} == smoothing.record()


def smooth_result(path: str | Path, smoothing: Smoothing | None, labels: TestLabels,
                  grid: tuple[Smoothing, ...] = SMOOTHING_GRID) -> tuple[Path, bool, float, float]:
    """Write the smoothed result of the result at `path` beside it: (its path, True, its mean F1,
    the source's mean F1), or (its path, False, ...) when it is there already, made from the same
    predictions with the same filter (or the same grid). `smoothing` None: the filter of `grid`
    chosen on the result's validation predictions (select_smoothing; UserError naming the file
    when it has none). A result with thresholds chosen on validation gets them chosen again on
    its smoothed validation predictions."""
    path = Path(path)
    result, predictions = read_predictions(path)
    if "smoothing" in result:
        raise UserError(f"{path}: already smoothed ({result['smoothing']}); smooth the result it was made from")
    out = smoothed_path(path, smoothing)
    source = {"file": path.name, "predictions_sha256": result["predictions"]["sha256"]}
    stored = read_json_or_none(out) if out.is_file() else None
    if (isinstance(stored, dict) and stored.get("smoothed_from") == source
            and _same_filter_request(stored.get("smoothing"), smoothing, grid)
            and predictions_problem(out, stored) is None):
        return out, False, stored["mean_f1"], result["mean_f1"]
    rechoose = (result.get("thresholds") or {}).get("kind") == "best-val"
    validation = validation_labels = None
    if smoothing is None or rechoose:
        try:
            validation = read_predictions(path, validation=True)[1]
        except UserError as err:
            raise UserError(f"{err}; choosing a filter on validation needs a result of a run with --validation"
                            ) from None
        validation_labels = labels.validation_of(result, path)
    record = {key: value for key, value in result.items() if key not in ("predictions", "_file")}
    on_test, choices = list(result.get("chosen_on_test") or []), list(result.get("choices") or [])
    try:
        if smoothing is None:
            smoothing, scores = select_smoothing(validation, validation_labels, rechoose, grid)
            choice = f"filter {smoothing.name} chosen on validation"
            smoothing_record = {**smoothing.record(), "choice": choice, "grid": [c.record() for c in grid],
                                "candidates": scores}
            name = SELECTED_NAME
        else:
            choice = filter_choice(result, smoothing)
            smoothing_record = {**smoothing.record(), "choice": choice}
            name = smoothing.name
        smoothed = smooth_predictions(predictions, smoothing)
        if validation is not None:
            smoothed_validation = smooth_predictions(validation, smoothing)
    except ValueError as err:
        raise UserError(f"{predictions_path(path)}: {err}; it cannot be smoothed") from None
    (on_test if choice == FILTER_ON_TEST else choices).append(choice)
    if validation is not None:
        if rechoose:
            smoothed_validation = with_best_thresholds(smoothed_validation, validation_labels)
            smoothed = replace(smoothed, threshold=smoothed_validation.threshold)
            record["thresholds"] = thresholds_record(smoothed.threshold, smoothed.au_names, "best-val")
        # the smoothed validation predictions are not kept: the record names none
        record["validation"] = {**{k: v for k, v in result["validation"].items() if k != "predictions"},
                                "mean_f1": smoothed_validation.metrics(validation_labels)["mean_f1"]}
    elif isinstance(record.get("validation"), dict):
        record["validation"] = {k: v for k, v in record["validation"].items() if k not in ("predictions", "mean_f1")}
    metrics = smoothed.metrics(labels.of(result, path))
    record.update(protocol=f"{result['protocol']}+{SMOOTH_PREFIX}{name}", metrics=metrics,
                  mean_f1=metrics["mean_f1"], smoothing=smoothing_record, smoothed_from=source,
                  chosen_on_test=on_test, choices=choices, created=_now())
    write_result(out, record, smoothed)
    return out, True, metrics["mean_f1"], result["mean_f1"]


def raw_results(paths: Iterable[str | Path], methods: list[str] | None = None) -> list[Path]:
    """The result files under run directories / named result files that may be smoothed or fused:
    with predictions, not smoothed already; only those of `methods` when given (UserError naming a
    method none of them holds). A named file must be one."""
    return list(raw_records(paths, methods))


def raw_records(paths: Iterable[str | Path], methods: list[str] | None = None) -> dict[Path, dict[str, Any]]:
    """raw_results, each file with its result record as read."""
    found: dict[Path, dict[str, Any]] = {}
    for path in map(Path, paths):
        for result in find_results([path]):
            file = Path(result["_file"])
            problem = predictions_problem(file, result)
            if path.is_file():
                if problem:
                    raise UserError(f"{file}: {problem}")
                if "smoothing" in result:
                    raise UserError(f"{file}: already smoothed; name the result it was made from")
            if methods and result["method"] not in methods or "smoothing" in result:
                continue
            if problem:
                warn(f"{file}: {problem}; left out")
                continue
            found[file] = result
    missing = [m for m in methods or [] if m not in {r["method"] for r in found.values()}]
    if missing:
        raise UserError(f"no result of method {missing[0]!r} with per-frame predictions under "
                        f"{', '.join(map(str, paths))}")
    if not found:
        raise UserError(f"no result with per-frame predictions under {', '.join(map(str, paths))}")
    return found


def smooth_results(paths: Iterable[str | Path], smoothing: Smoothing | None, labels: TestLabels | None = None,
                   quiet: bool = False) -> list[Path]:
    """Smooth every result file in `paths` (`smoothing` None: each with the filter chosen on its
    validation predictions, smooth_result); the smoothed results' paths."""
    labels = labels or TestLabels()
    written = []
    for path in paths:
        out, made, mean_f1, raw_mean_f1 = smooth_result(path, smoothing, labels)
        if not quiet:
            print(f"{'smoothed' if made else 'kept    '} {out}: mean F1 {100 * mean_f1:.1f} "
                  f"(raw {100 * raw_mean_f1:.1f})", flush=True)
        written.append(out)
    return written


# ---- ensembles -------------------------------------------------------------------------------

@dataclass
class Member:
    """One member of an ensemble: a method's results in a run directory (or named result files)."""

    run: str
    method: str
    weight: float = 1.0
    # (dataset as the leaderboard names it, protocol, test condition) -> fold -> result file
    results: dict[tuple[str, str, str], dict[int, Path]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.run} ({self.method})"


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
MAX_NAME = 64  # an ensemble's name; its result files add the fold, protocol, conditions and suffixes


def ensemble_members(runs: list[str], methods: list[str] | None, weights: list[float] | None) -> list[Member]:
    """The members of `aubench ensemble RUN ... [--methods ...] [--weights ...]`: for each RUN, each
    of `methods` it holds (every method when not given, which must then be one), in that order;
    weights normalised to sum 1 (equal by default)."""
    members = []
    for run in runs:
        records = raw_records([run])
        held = list(dict.fromkeys(r["method"] for r in records.values()))
        chosen = [m for m in methods if m in held] if methods else held
        if not methods and len(held) > 1:
            raise UserError(f"{run} holds results of several methods ({', '.join(held)}); choose the members with "
                            f"--methods")
        if not chosen:
            raise UserError(f"{run} holds no result of {', '.join(methods or [])} (it has {', '.join(held)})")
        for method in chosen:
            member = Member(str(run), method)
            for path, record in records.items():
                if record["method"] != method:
                    continue
                key = (dataset_label(record), record["protocol"], conditions(record)[1])
                folds = member.results.setdefault(key, {})
                if record["fold"] in folds:
                    raise UserError(f"{member.label}: two results of fold {record['fold']}, {_key_text(key)} "
                                    f"({folds[record['fold']]}, {path}); an ensemble member needs one; name one run "
                                    f"directory per setting")
                folds[record["fold"]] = path
            members.append(member)
    missing = [m for m in methods or [] if not any(member.method == m for member in members)]
    if missing:
        raise UserError(f"--methods: no run holds results of {missing[0]!r}")
    if len(members) < 2:
        raise UserError(f"an ensemble needs at least two members; {members[0].label} is the only one")
    if weights is not None:
        if len(weights) != len(members):
            raise UserError(f"--weights gives {len(weights)} weights for {len(members)} members "
                            f"({', '.join(m.label for m in members)})")
        if any(not (math.isfinite(w) and w > 0) for w in weights):
            raise UserError(f"--weights {','.join(map(str, weights))}: every weight must be a positive number")
    weights = weights or [1.0] * len(members)
    scaled = [w / max(weights) for w in weights]  # in (0, 1]: their sum cannot overflow (1e308,1e308)
    for member, weight in zip(members, scaled):
        member.weight = weight / sum(scaled)
    return members


def _check_same(members: list[Member], values: list[Any], what: str, where: str) -> None:
    if any(v != values[0] for v in values[1:]):
        listed = "; ".join(f"{m.label}: {v}" for m, v in zip(members, values))
        raise UserError(f"{where}: the members' {what} differ ({listed}); an ensemble fuses predictions of the same "
                        f"test frames")


def fuse(predictions: list[Predictions], weights: list[float]) -> Predictions:
    """The weighted mean of the members' probabilities (float32); the members must share rows."""
    fused = sum(w * p.probabilities.astype(np.float64) for w, p in zip(weights, predictions))
    first = predictions[0]
    return Predictions(first.rows, np.asarray(fused, dtype=np.float32), first.sequence, first.frame_no,
                       first.sequence_names, first.au_names, first.threshold)


def _combined_bench(benches: list[dict[str, Any]]) -> dict[str, Any]:
    """Size and speed of running every member: parameters and FLOPs added, frames per second of
    the members one after the other. Fields a member lacks are left out."""
    out: dict[str, Any] = {}
    for key in ("params_m", "gflops_per_frame"):
        if all(isinstance(b.get(key), (int, float)) for b in benches):
            out[key] = sum(b[key] for b in benches)
    if all(isinstance(b.get("infer_frames_per_s"), (int, float)) and b["infer_frames_per_s"] > 0 for b in benches):
        out["infer_frames_per_s"] = 1.0 / sum(1.0 / b["infer_frames_per_s"] for b in benches)
    devices = {b.get("device") for b in benches}
    if len(devices) == 1 and None not in devices:
        out["device"] = devices.pop()
    return out


def ensemble_file_name(name: str, fold: int, protocol: str, train: str, test: str) -> str:
    stem = f"{name}_fold{fold}_{protocol.replace('+', '_')}"
    stem += f"_train-{train}" if train != "none" else ""
    stem += f"_test-{test}" if test != "none" else ""
    return stem + ".json"


def _key_text(key: tuple[str, str, str]) -> str:
    dataset, protocol, test = key
    return f"{dataset} {protocol} (test {test})"


@dataclass
class _Planned:
    """One ensemble result to write (or keep): its path and the members' results of its fold."""

    path: Path
    fold: int
    protocol: str
    test: str
    read: list[tuple[dict[str, Any], Predictions]]
    paths: list[Path]
    member_records: list[dict[str, Any]]
    keep: bool = False


def make_ensemble(runs: list[str], name: str, out: str | Path, methods: list[str] | None = None,
                  weights: list[float] | None = None, smoothing: Smoothing | None = None,
                  overwrite: bool = False, data: str | Path | None = None, quiet: bool = False) -> list[Path]:
    """`aubench ensemble`: fuse the members' predictions for every (protocol, test condition) they
    all have, fold by fold, into OUT/results; then smooth them when `smoothing` is given. Every
    check runs before anything is written. The result files written or kept (an ensemble result
    made from the same members' predictions with the same weights is kept; one made otherwise is
    replaced only with `overwrite`, which also removes this name's results that are not made again)."""
    from aubench.models import available_methods

    if not NAME_PATTERN.fullmatch(name):
        raise UserError(f"--name {name!r}: use letters, digits and . _ + - (it names the result files)")
    if len(name) > MAX_NAME:  # with the fold, protocol and suffixes it must fit a file name (255 bytes)
        raise UserError(f"--name: {len(name)} characters, at most {MAX_NAME} (it names the result files)")
    members = ensemble_members(runs, methods, weights)
    if name in available_methods() or name in {m.method for m in members}:
        raise UserError(f"--name {name!r} is a method's name; an ensemble needs a name of its own (its leaderboard "
                        f"row would be mistaken for the method's)")
    keys = [key for key in members[0].results if all(key in m.results for m in members[1:])]
    if not keys:
        held = "; ".join(f"{m.label}: {', '.join(map(_key_text, m.results))}" for m in members)
        raise UserError(f"the members share no dataset, protocol and test condition ({held}); an ensemble fuses "
                        f"results of the same protocol")
    left = sorted({key for m in members for key in m.results} - set(keys))
    if left and not quiet:
        warn(f"ensemble {name}: not every member has {', '.join(map(_key_text, left))}; left out")
    inputs = {path.resolve() for m in members for folds in m.results.values() for path in folds.values()}

    planned: list[_Planned] = []
    for key in keys:
        _, protocol, test = key
        folds = [sorted(m.results[key]) for m in members]
        _check_same(members, folds, "folds", _key_text(key))
        for fold in folds[0]:
            paths = [m.results[key][fold] for m in members]
            read = [read_predictions(p) for p in paths]
            results = [r for r, _ in read]
            where = f"fold {fold}, {_key_text(key)}"
            _check_same(members, [r["data"]["fingerprint"] for r in results], "data files (fingerprints)", where)
            _check_same(members, [", ".join(r["au_names"]) for r in results], "AU sets", where)
            _check_same(members, [conditions(r)[0] for r in results], "training occlusion conditions", where)
            _check_same(members, [threshold_record(p.threshold) for _, p in read], "decision thresholds", where)
            _check_same(members, [f"{p.num_frames} frames, rows digest {hashlib.sha256(p.rows.tobytes()).hexdigest()[:8]}"
                                  for _, p in read], "test rows", where)
            member_records = [{"run": m.run, "method": m.method, "result": str(p.resolve()), "weight": m.weight,
                               "predictions_sha256": r["predictions"]["sha256"],
                               "identity": {k: v for k, v in result_identity(r).items() if k != "fold"}}
                              for m, p, r in zip(members, paths, results)]
            path = Path(out) / "results" / ensemble_file_name(name, fold, protocol, conditions(results[0])[0], test)
            plan = _Planned(path, fold, protocol, test, read, paths, member_records)
            if path.resolve() in inputs:
                raise UserError(f"--out {out}: {path} is one of the members' results; write the ensemble elsewhere")
            if path.is_file():
                stored = read_json_or_none(path)
                if not (isinstance(stored, dict) and "ensemble" in stored):
                    raise UserError(f"--out {out}: {path} exists and is not an ensemble result; choose another --out "
                                    f"or --name")
                plan.keep = (stored["ensemble"].get("members") == member_records
                             and predictions_problem(path, stored) is None)
                if not plan.keep and not overwrite:
                    raise UserError(f"{path} holds an ensemble made from other results or weights (or its predictions "
                                    f"file is missing or altered); pass --overwrite to replace it, or another --out / "
                                    f"--name")
            planned.append(plan)

    labels = TestLabels(data)
    written = []
    for plan in planned:
        if plan.keep:
            if not quiet:
                print(f"kept     {plan.path} (same members and weights)", flush=True)
            written.append(plan.path)
            continue
        results = [r for r, _ in plan.read]
        fused = fuse([p for _, p in plan.read], [m.weight for m in members])
        first = results[0]
        metrics = fused.metrics(labels.of(first, plan.paths[0]))
        # a result file named twice (the same run as two members) is one model to run
        distinct = {str(p.resolve()): r.get("bench") or {} for p, r in zip(plan.paths, results)}
        record = {
            "schema": RESULT_SCHEMA, "method": name, "dataset": first["dataset"], "fold": plan.fold,
            "protocol": plan.protocol, "label_ratio": first["label_ratio"],
            "occlusion": {"train": conditions(first)[0], "test": plan.test}, "au_names": first["au_names"],
            "metrics": metrics, "mean_f1": metrics["mean_f1"],
            "ensemble": {"fusion": "weighted mean of per-frame probabilities", "members": plan.member_records},
            # what the members chose on the test set, and how they made their other choices
            "chosen_on_test": list(dict.fromkeys(t for r in results for t in r.get("chosen_on_test") or [])),
            "choices": list(dict.fromkeys(t for r in results for t in r.get("choices") or [])),
            "bench": _combined_bench(list(distinct.values())),
            "data": {key: first["data"][key] for key in ("path", "fingerprint", "split_scheme")
                     if key in first["data"]} | {"num_test_frames": metrics["num_frames"]},
            "created": _now(),
        }
        write_result(plan.path, record, fused)
        if not quiet:
            print(f"fused    {plan.path}: mean F1 {100 * metrics['mean_f1']:.1f} (members "
                  + ", ".join(f"{m.method} {100 * r['mean_f1']:.1f}" for m, r in zip(members, results)) + ")",
                  flush=True)
        written.append(plan.path)
    if overwrite:  # this name's earlier results that were not made again (a fold or condition gone)
        for path in sorted((Path(out) / "results").glob(f"{glob.escape(name)}_fold*.json")):
            if path in written:
                continue
            stored = read_json_or_none(path)
            # smoothed results go with their source (remove_result)
            if isinstance(stored, dict) and stored.get("method") == name and "ensemble" in stored \
                    and "smoothing" not in stored:
                remove_result(path)
                if not quiet:
                    print(f"removed  {path} (not made again)", flush=True)
    if smoothing is not None:
        written += smooth_results(list(written), smoothing, labels, quiet)
    return written


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
