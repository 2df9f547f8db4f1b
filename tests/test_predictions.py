"""Per-frame predictions beside every result: written by evaluate, scored back to the result's
metrics exactly, exported as OpenFace-style CSV, checked by checksum, kept or redone by --resume."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil

import numpy as np
import pytest

from aubench.cli import main
from aubench.data import AUFile
from aubench.engine.predictions import (decode, encode, predictions_of_test_split, predictions_path,
                                        predictions_problem, read_predictions, recompute_metrics)
from aubench.engine.run_files import clear_run_files, kept_run_files
from aubench.metrics import au_metrics
from fixtures_h5 import AU_NAMES, write_au_h5

CSV_AUS = ["AU01", "AU02", "AU04", "AU06", "AU12"]  # fixtures_h5.AU_NAMES as OpenFace writes them
RESULTS = ("resnet_fold1_full.json", "resnet_fold1_full_test-patches0.5.json")


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    return write_au_h5(tmp_path_factory.mktemp("pred") / "tiny.h5", num_subjects=6, sequence_lengths=(6, 5))


def evaluate_args(h5, out, *extra):
    return ["evaluate", "--methods", "resnet", "--folds", "1", "--data", str(h5), "--out", str(out),
            "--test-occlusion", "none,patches:0.5", "--preset", "tiny", "--image-size", "32", "--batch-size", "8",
            "--epochs", "1", "--device", "cpu", "--no-progress", *extra]


@pytest.fixture(scope="module")
def evaluated(h5, tmp_path_factory):
    """A finished evaluation: resnet, fold 1, tested on clean faces and under 50% patches."""
    out = tmp_path_factory.mktemp("evaluated") / "ev"
    assert main(evaluate_args(h5, out)) == 0
    return out


def read(path):
    return json.loads(path.read_text())


def test_every_result_has_a_predictions_file_that_gives_its_metrics_exactly(h5, evaluated):
    file = AUFile(h5)
    test_rows = file.rows(1, "test")
    for name in RESULTS:
        path = evaluated / "results" / name
        result = read(path)
        record = result["predictions"]
        data = predictions_path(path).read_bytes()
        assert record == {"file": name.replace(".json", ".predictions.npz"), "sha256": hashlib.sha256(data).hexdigest(),
                          "format": "aubench-predictions-1", "num_frames": len(test_rows)}
        # read with plain NumPy: the documented arrays, every test frame once
        with np.load(predictions_path(path), allow_pickle=False) as saved:
            rows, probabilities = saved["rows"], saved["probabilities"]
            assert rows.dtype == np.uint32 and probabilities.dtype == np.float32
            assert np.array_equal(rows, test_rows) and probabilities.shape == (len(test_rows), len(AU_NAMES))
            assert list(saved["au_names"]) == list(AU_NAMES) and float(saved["threshold"]) == 0.5
            names = saved["sequence_names"][saved["sequence"]]
            assert list(names) == [file.sequences["name"][s] for s in file.frame_sequence[test_rows]]
            assert np.array_equal(saved["frame_no"], file.frame_no[test_rows])
            # the evaluator's own metric code on the stored numbers: the result's metrics, bit for bit
            assert au_metrics(file.labels[rows], probabilities, list(saved["au_names"]),
                              float(saved["threshold"])) == result["metrics"]
        assert recompute_metrics(path) == result["metrics"]
    clean, occluded = (read_predictions(evaluated / "results" / name)[1] for name in RESULTS)
    assert not np.array_equal(clean.probabilities, occluded.probabilities)  # one file per test condition


def test_metrics_are_those_of_the_stored_float32_probabilities(h5):
    """A mean of clip predictions just below the threshold in float64 that float32 rounds up to it
    counts as the stored value does, so the file reproduces the metrics exactly."""
    file = AUFile(h5)
    rows = file.rows(1, "test")
    probabilities = np.full((len(rows), len(AU_NAMES)), 0.25)
    probabilities[::2] = 0.5 - 1e-12                     # float32(0.5 - 1e-12) == 0.5
    predictions = predictions_of_test_split(file, rows, probabilities)
    assert predictions.detections()[::2].all()
    again = decode(encode(predictions), "memory")
    assert np.array_equal(again.probabilities, predictions.probabilities)
    assert again.metrics(file.labels) == predictions.metrics(file.labels)
    assert predictions.metrics(file.labels)["f1"] != au_metrics(file.labels[rows], probabilities, AU_NAMES)["f1"]


def test_csv_has_one_row_per_test_frame_in_the_openface_layout(h5, evaluated, tmp_path, capsys):
    path = evaluated / "results" / RESULTS[1]
    out = tmp_path / "deep" / "frames.csv"
    assert main(["predictions", str(path), "--csv", str(out)]) == 0
    assert str(out) in capsys.readouterr().err
    with out.open(newline="") as f:
        lines = list(csv.reader(f))
    header, body = lines[0], lines[1:]
    assert header == ["sequence", "frame"] + [f"{au}_{kind}" for au in CSV_AUS for kind in ("p", "c")]
    file = AUFile(h5)
    rows = file.rows(1, "test")
    _, predictions = read_predictions(path)
    assert len(body) == len(rows)
    assert [line[0] for line in body] == [file.sequences["name"][s] for s in file.frame_sequence[rows]]
    assert [int(line[1]) for line in body] == file.frame_no[rows].tolist()
    written = np.array([[float(v) for v in line[2::2]] for line in body], dtype=np.float32)
    assert np.array_equal(written, predictions.probabilities)          # the float32 values, read back exactly
    decided = np.array([[int(v) for v in line[3::2]] for line in body])
    assert np.array_equal(decided, (predictions.probabilities >= 0.5).astype(int))


def test_a_corrupted_or_missing_predictions_file_is_refused_naming_it(evaluated, tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(evaluated / "results", results)
    path = results / RESULTS[0]
    npz = predictions_path(path)
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    out = tmp_path / "x.csv"
    assert main(["predictions", str(path), "--csv", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aubench: error: ") and str(npz) in err and "sha256" in err
    assert not out.exists()
    npz.unlink()
    assert main(["predictions", str(path), "--csv", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(npz) in err and "missing" in err


def test_resume_keeps_results_with_intact_predictions_and_tests_the_others_again(h5, evaluated, tmp_path, capsys):
    out = tmp_path / "ev"
    shutil.copytree(evaluated, out)
    clean, occluded = (out / "results" / name for name in RESULTS)
    kept = {p: p.read_bytes() for p in (clean, predictions_path(clean))}
    before = read(occluded)
    predictions_path(occluded).write_bytes(b"not the file the result names")
    log = out / "runs" / "resnet" / "full" / "fold1" / "log.jsonl"
    epochs = [json.loads(line)["event"] for line in log.read_text().splitlines()].count("epoch")
    capsys.readouterr()
    assert main(evaluate_args(h5, out, "--resume")) == 0
    printed = capsys.readouterr().out
    assert f"kept {clean}" in printed and f"{occluded}: its predictions file" in printed
    assert all(p.read_bytes() == data for p, data in kept.items())          # kept as they were
    after = read(occluded)
    assert predictions_problem(occluded, after) is None                      # tested again, written again
    assert after["metrics"] == before["metrics"] and recompute_metrics(occluded) == after["metrics"]
    assert [json.loads(line)["event"] for line in log.read_text().splitlines()].count("epoch") == epochs  # no training


def test_predictions_files_are_run_files_but_not_a_run_on_their_own(tmp_path):
    names = ["result.predictions.npz", "result_student_test-patches0.5.predictions.npz",
             "result.predictions.npz.abc123.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert kept_run_files(tmp_path) == []      # nothing to resume or to lose without a result
    (tmp_path / "result.json").write_text("{}")
    assert kept_run_files(tmp_path) == ["result.json"]
    clear_run_files(tmp_path)
    assert not list(tmp_path.iterdir())
