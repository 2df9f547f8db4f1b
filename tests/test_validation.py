"""The validation split (--validation), checkpoint selection (--select), per-AU thresholds chosen
on validation (--thresholds), smoothing chosen on validation, and how results and the leaderboard
mark what was chosen on the test set."""
from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
import torch

import aubench.models  # noqa: F401  (registers the methods)
from aubench import leaderboard
from aubench.cli import main
from aubench.data import AUFile, sparse_label_mask, visible_label_statistics
from aubench.engine.checkpoint import load_checkpoint
from aubench.engine.config import RunConfig
from aubench.engine.data_access import validation_subjects
from aubench.engine.identity import result_identity, run_identity
from aubench.engine.postprocess import (FILTER_NOT_ON_VALIDATION, FILTER_ON_TEST, PAPER_FILTER, SMOOTHING_GRID,
                                        Smoothing, best_thresholds, filter_choice, smooth_predictions, smooth_result)
from aubench.engine.predictions import TestLabels, read_predictions, recompute_metrics
from aubench.engine.trainer import Trainer
from aubench.errors import UserError

from fixtures_h5 import write_au_h5

SMALL = dict(method="resnet", preset="tiny", image_size=32, batch_size=8, progress=False, device="cpu",
             model={"backbone": "test_resnet"})
# 9 subjects, 3 folds: fold 1 tests 3 and trains on 6, of which --validation 0.34 holds out 2
VALIDATION = 0.34
EVALUATE = ["--methods", "resnet", "--folds", "1", "--preset", "tiny", "--image-size", "32", "--batch-size", "8",
            "--device", "cpu", "--no-progress", "--model", "backbone=test_resnet"]


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    return write_au_h5(tmp_path_factory.mktemp("validation") / "nine.h5", num_subjects=9, sequence_lengths=(6, 5),
                       image_size=(32, 32))


def evaluate(h5, out, *extra) -> None:
    assert main(["evaluate", "--data", str(h5), "--out", str(out), *EVALUATE, *extra]) == 0


@pytest.fixture(scope="module")
def best_test(h5, tmp_path_factory):
    """An evaluation whose checkpoint is chosen on the test set, with a validation split."""
    out = tmp_path_factory.mktemp("best-test")
    evaluate(h5, out, "--epochs", "3", "--validation", str(VALIDATION), "--select", "best-test")
    return out


@pytest.fixture(scope="module")
def best_val(h5, tmp_path_factory):
    """An evaluation whose checkpoint and per-AU thresholds are chosen on the validation split."""
    out = tmp_path_factory.mktemp("best-val")
    evaluate(h5, out, "--epochs", "2", "--validation", str(VALIDATION), "--select", "best-val",
             "--thresholds", "best-val")
    return out


def test_validation_subjects_are_held_out_of_training_and_test(h5, tmp_path):
    config = RunConfig(data=str(h5), out=str(tmp_path), label_ratio=0.5, validation=VALIDATION, epochs=1, **SMALL)
    trainer = Trainer(config)
    file = AUFile(h5)
    train, test = file.fold_subjects(1)
    held_out = trainer.data.validation_subjects
    assert len(held_out) == 2 and set(held_out) < set(train)
    assert not set(held_out) & set(test) and not set(held_out) & set(trainer.data.train_subjects)
    assert sorted(trainer.data.train_subjects + held_out) == sorted(train)

    def subjects(rows) -> set[str]:
        return {file.subjects[i] for i in np.unique(file.frame_subject[rows])}

    assert subjects(trainer.train_dataset().rows) == set(trainer.data.train_subjects)
    validation_set = trainer.data.test_dataset("frame", trainer.stage.preset, split="validation")
    assert subjects(validation_set.rows) == set(held_out)
    assert np.array_equal(validation_set.rows, trainer.data.split_rows("validation"))
    # the statistics the method gets: the kept labels of the training subjects left, none of the held-out ones
    left = trainer.data.train_rows()
    assert subjects(left) == set(trainer.data.train_subjects)
    expected = visible_label_statistics(file, left, sparse_label_mask(file, 0.5))
    for key in ("au_rate", "class_weight", "cooccurrence"):
        np.testing.assert_allclose(trainer.label_statistics[key], expected[key])
    whole = visible_label_statistics(file, file.rows(1, "train"), sparse_label_mask(file, 0.5))
    assert not np.allclose(trainer.label_statistics["class_weight"], whole["class_weight"])
    np.testing.assert_allclose(trainer.method.class_weights.numpy(), expected["class_weight"], rtol=1e-6)
    # scored on the labels the protocol keeps there, as the run holds them
    labels = trainer.data.scoring_labels("validation", 0.5)
    hidden = ~sparse_label_mask(file, 0.5)
    assert (labels[hidden] == -1).all() and np.array_equal(labels[~hidden], file.labels[~hidden])


def test_validation_split_is_seeded_and_checked():
    subjects = [f"S{i:02d}" for i in range(10)]
    first = validation_subjects(subjects, 0.3, seed=0, fold=1)
    assert len(first) == 3 and first == validation_subjects(list(reversed(subjects)), 0.3, seed=0, fold=1)
    assert {tuple(validation_subjects(subjects, 0.3, seed, 1)) for seed in range(6)} != {tuple(first)}
    assert validation_subjects(subjects, 0.0, 0, 1) == []
    assert len(validation_subjects(subjects, 0.01, 0, 1)) == 1 and len(validation_subjects(subjects, 0.99, 0, 1)) == 9
    with pytest.raises(UserError, match="--validation 1"):
        validation_subjects(subjects, 1.0, 0, 1)
    with pytest.raises(UserError, match="at least two"):
        validation_subjects(subjects[:1], 0.5, 0, 1)


def test_select_and_thresholds_options_need_a_validation_split(h5, tmp_path, capsys):
    for option in (["--select", "best-val"], ["--thresholds", "best-val"]):
        assert main(["evaluate", "--data", str(h5), "--out", str(tmp_path), *EVALUATE, *option]) == 2
        assert f"{option[0]} best-val chooses on a validation split" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(h5), "--out", str(tmp_path), *EVALUATE, "--validation", "1"]) == 2
    assert "must be in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_identity_leaves_the_defaults_out_and_names_the_rest():
    config = {"method": "resnet", "preset": "tiny", "fold": 1, "label_ratio": 1.0, "seed": 0, "augment": True,
              "pretrained": None}
    preset = {"epochs": 1, "batch_size": 8, "image_size": 32, "model": {}}
    before = run_identity(config, preset, "f" * 64, "fp32")
    defaults = {"validation": 0.0, "select": "last", "thresholds": "fixed", "occluded_landmarks": "clean"}
    assert run_identity({**config, **defaults}, preset, "f" * 64, "fp32") == before
    chosen = {"validation": 0.2, "select": "best-val", "thresholds": "best-val", "occluded_landmarks": "detect"}
    identity = run_identity({**config, **chosen}, preset, "f" * 64, "fp32")
    assert {k: identity[k] for k in chosen} == chosen
    # a stored result gives them back (the results of runs before them: the defaults)
    result = {"config": {**config, **chosen}, "preset": preset, "data": {"fingerprint": "f" * 64}, "precision": "fp32"}
    assert result_identity(result) == identity
    assert result_identity({**result, "config": config}) == before


def test_best_test_tests_the_epoch_best_on_test_and_its_rows_are_marked(h5, best_test, tmp_path, monkeypatch):
    result, predictions = read_predictions(best_test / "results" / "resnet_fold1_full.json")
    selection = result["selection"]
    scores = selection["scores"]
    assert selection["checkpoint"] == "best-test" and [s["epoch"] for s in scores] == [1, 2, 3]
    best = max(scores, key=lambda s: s["test_mean_f1"])  # max: the first of equals
    assert selection["epoch"] == best["epoch"]
    assert result["mean_f1"] == best["test_mean_f1"]            # tested with that epoch's weights
    assert result["validation"]["mean_f1"] == best["validation_mean_f1"]
    assert load_checkpoint(best_test / "runs/resnet/full/fold1/best_train.pt")["epoch"] == best["epoch"]
    assert result["chosen_on_test"] and "best test mean F1" in result["chosen_on_test"][0]
    assert recompute_metrics(best_test / "results" / "resnet_fold1_full.json") == result["metrics"]
    # marked in every output
    rows = leaderboard.build_rows(leaderboard.find_results([best_test]), include_reported=False)
    ours = next(r for r in rows if r["kind"] == "ours")
    assert ours["chosen_on_test"] == result["chosen_on_test"][0]
    md = leaderboard.to_markdown(rows)
    assert f"| resnet {leaderboard.SELECTED_ON_TEST_MARK}" in md and "selected on test" in md
    line = next(csv.DictReader(io.StringIO(leaderboard.to_csv(rows))))
    assert line["chosen_on_test"] == ours["chosen_on_test"]
    assert json.loads(leaderboard.to_json(rows))[0]["chosen_on_test"] == ours["chosen_on_test"]
    legends = []  # the plot's legend, as drawn

    def keep_legend(fig, path):
        legends.extend(text.get_text() for ax in fig.axes for text in ax.get_legend().get_texts())

    monkeypatch.setattr(leaderboard, "_save", keep_legend)
    leaderboard.plot(rows, tmp_path / "plot.png")
    assert f"resnet {leaderboard.SELECTED_ON_TEST_MARK} selected on test" in legends
    assert all("selected on test" not in text for text in legends if not text.startswith("resnet"))


def test_selection_does_not_change_what_is_trained(h5, best_test, tmp_path):
    """Scoring each epoch restores every random state: the same run with --select last ends
    with the same weights."""
    config = RunConfig(data=str(h5), out=str(tmp_path), validation=VALIDATION, epochs=3, augment=True, **SMALL)
    trainer = Trainer(config)
    trainer.fit()
    selected = load_checkpoint(best_test / "runs/resnet/full/fold1/last.pt")["model"]
    last = trainer.method.state_dict()
    assert selected.keys() == last.keys()
    assert all(torch.equal(selected[k], last[k]) for k in last)
    assert not (tmp_path / "best_train.pt").exists() and trainer.selection == {}


def test_best_val_thresholds_and_their_predictions(h5, best_val):
    path = best_val / "results" / "resnet_fold1_full.json"
    result, predictions = read_predictions(path)
    scores = result["selection"]["scores"]
    assert result["selection"]["checkpoint"] == "best-val" and all("test_mean_f1" not in s for s in scores)
    assert result["selection"]["epoch"] == max(scores, key=lambda s: s["validation_mean_f1"])["epoch"]
    # per-AU thresholds chosen on the validation predictions, applied to the test predictions
    _, validation = read_predictions(path, validation=True)
    labels = TestLabels().validation_of(result, path)
    chosen = best_thresholds(validation.probabilities, labels[validation.rows])
    assert result["thresholds"] == {"kind": "best-val", "values": dict(zip(result["au_names"], chosen.tolist()))}
    assert np.array_equal(predictions.threshold, chosen) and np.array_equal(validation.threshold, chosen)
    assert recompute_metrics(path) == result["metrics"]
    assert result["validation"]["mean_f1"] == validation.metrics(labels)["mean_f1"]
    assert result["chosen_on_test"] == [] and len(result["choices"]) == 2
    rows = leaderboard.build_rows(leaderboard.find_results([best_val]), include_reported=False)
    ours = next(r for r in rows if r["kind"] == "ours")
    assert "per-AU thresholds chosen on validation" in ours["choices"] and not ours["chosen_on_test"]
    assert f"resnet {leaderboard.CHOICES_MARK}" in leaderboard.to_markdown(rows)


def test_resume_keeps_a_result_only_with_its_validation_predictions(h5, best_val, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(best_val, out)
    args = ("--epochs", "2", "--validation", str(VALIDATION), "--select", "best-val", "--thresholds", "best-val")
    capsys.readouterr()
    evaluate(h5, out, "--resume", *args)
    assert "kept" in capsys.readouterr().out
    (out / "results" / "resnet_fold1_full.validation.predictions.npz").unlink()
    evaluate(h5, out, "--resume", *args)
    assert "validation.predictions.npz is missing; testing it again" in capsys.readouterr().out
    assert (out / "results" / "resnet_fold1_full.validation.predictions.npz").is_file()


def test_best_thresholds_pick_each_aus_best_f1_and_keep_half_without_positives():
    labels = np.array([[1, 0, 0], [1, 0, -1], [0, 0, 1], [0, 0, 0]])
    probabilities = np.array([[0.3, 0.9, 0.2], [0.25, 0.8, 0.9], [0.1, 0.7, 0.6], [0.05, 0.6, 0.7]])
    chosen = best_thresholds(probabilities, labels)
    # AU 0: 0.15 .. 0.25 separate it perfectly, 0.25 is nearest 0.5; AU 1 has no positive: 0.5;
    # AU 2 (its 0.9 unknown): 0.25 .. 0.6 keep the positive (0.6) and one false positive (0.7),
    # F1 2/3, the best: 0.5 among them
    assert chosen.tolist() == [0.25, 0.5, 0.5]


def test_smoothing_chosen_on_validation(h5, best_val, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(best_val, out)
    assert main(["smooth", str(out), "--select-on-validation"]) == 0
    path = out / "results" / "resnet_fold1_full_smooth-val.json"
    smoothed, predictions = read_predictions(path)
    raw, raw_predictions = read_predictions(out / "results" / "resnet_fold1_full.json")
    record = smoothed["smoothing"]
    candidates = record["candidates"]
    assert [{k: c[k] for k in ("kind", "kernel_size", "sigma")} for c in candidates] == [
        f.record() for f in SMOOTHING_GRID]
    best = max(candidates, key=lambda c: c["validation_mean_f1"])
    assert (record["kernel_size"], record["sigma"]) == (best["kernel_size"], best["sigma"])
    assert smoothed["protocol"] == "full+smooth-val" and smoothed["validation"]["mean_f1"] == best["validation_mean_f1"]
    assert f"filter {Smoothing(best['kernel_size'], best['sigma']).name} chosen on validation" in smoothed["choices"]
    # thresholds chosen again on the smoothed validation predictions, the filter applied to the test ones
    assert smoothed["thresholds"]["kind"] == "best-val" and "predictions" not in smoothed["validation"]
    filtered = smooth_predictions(raw_predictions, Smoothing(best["kernel_size"], best["sigma"]))
    assert np.array_equal(predictions.probabilities, filtered.probabilities)
    assert recompute_metrics(path) == smoothed["metrics"]
    # a result without validation predictions has nothing to choose on
    bare = out / "bare.json"
    stored = json.loads((out / "results" / "resnet_fold1_full.json").read_text())
    stored.pop("validation")
    stored["predictions"]["file"] = "results/" + stored["predictions"]["file"]
    bare.write_text(json.dumps(stored))
    with pytest.raises(UserError, match="validation-split predictions"):
        smooth_result(bare, None, TestLabels())


def test_how_a_hand_picked_filter_was_chosen_is_recorded_and_shown():
    official = {"dataset": "Aff-Wild2", "data": {"split_scheme": "official"}}
    assert filter_choice(official, PAPER_FILTER) == FILTER_ON_TEST
    assert filter_choice(official, Smoothing(31, 3.0)) == FILTER_ON_TEST  # that split has no other held-out set
    assert filter_choice({"dataset": "Aff-Wild2", "data": {"split_scheme": "kfold"}}, PAPER_FILTER) \
        == FILTER_NOT_ON_VALIDATION
    assert filter_choice({"dataset": "BP4D", "data": {}}, PAPER_FILTER) == FILTER_NOT_ON_VALIDATION
    # a smoothed result made before the choice was recorded: the leaderboard says it all the same
    older = {**official, "smoothing": PAPER_FILTER.record()}
    assert leaderboard.result_choices(older) == ([FILTER_ON_TEST], [])
    assert leaderboard.result_choices({**older, "dataset": "BP4D"}) == ([], [FILTER_NOT_ON_VALIDATION])


def test_a_marks_footnote_keeps_each_rows_own_text():
    """Rows of one name in several protocols (a raw row and its smoothed row) each keep what was
    chosen on the test set for them."""
    checkpoint, both = "checkpoint on test", "checkpoint on test; filter on test"
    row = {"kind": "ours", "method": "resnet", "setting": "", "chosen_on_test": checkpoint, "occlusion_test": "none",
           "occlusion_train": "none", "folds": [1], "f1": {"AU1": {"mean": 50.0, "std": None}},
           "mean_f1": {"mean": 50.0, "std": None}, "params_m": None, "gflops_per_frame": None,
           "infer_frames_per_s": None, "train_frames_per_s": None, "dataset": "Aff-Wild2", "protocol": "full"}
    rows = [row, {**row, "protocol": "full+smooth-gaussian-k51-s3", "chosen_on_test": both}]
    md = leaderboard.to_markdown(rows)
    assert f"resnet {leaderboard.SELECTED_ON_TEST_MARK} (full, test none): {checkpoint};" in md
    assert f"(full+smooth-gaussian-k51-s3, test none): {both}" in md
    assert f"resnet {leaderboard.SELECTED_ON_TEST_MARK}: {checkpoint}\n" in leaderboard.to_markdown(rows[:1]) + "\n"
