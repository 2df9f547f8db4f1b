"""What a method reads at test time besides the image: recorded in every result, and rows that
read what a deployed detector would not have (RRL's clean-frame landmarks under occlusion,
MAE-FAU's teacher told which patches are occluded) marked in the leaderboard's md, csv, json and
plot legend; RRL's landmarks re-detected on the occluded image (--occluded-landmarks detect)."""
from __future__ import annotations

import csv
import io
import json

import pytest

from aubench import leaderboard
from aubench.engine.config import RunConfig
from aubench.engine.evaluate import EvaluateRequest, evaluate_runs
from aubench.engine.run import inputs_read_at_test
from test_leaderboard import AUS, fake_result
from test_rrl import landmark_h5


def test_the_record_says_what_is_privileged_under_which_condition():
    assert inputs_read_at_test((), "patches0.5") == ({}, [])
    clean, privileged = inputs_read_at_test(("landmarks",), "none")
    assert clean == {"landmarks": "the data file's, of the test frame"} and privileged == []
    occluded, privileged = inputs_read_at_test(("landmarks",), "patches0.5")
    assert "clean frame" in occluded["landmarks"] and privileged == ["landmarks of the clean frame"]
    detected, privileged = inputs_read_at_test(("landmarks",), "patches0.5", "detect", {"detected": 3, "mean_shape": 5})
    assert "detected on the occluded test image (3 frames" in detected["landmarks"] and privileged == []
    assert "5 frames without a face" in detected["landmarks"]
    _, privileged = inputs_read_at_test(("occlusion_mask",), "block0.3")
    assert privileged == ["which patches are occluded"]
    assert inputs_read_at_test(("occlusion_mask",), "none")[1] == []


def test_maefau_teacher_reads_the_mask_and_the_student_does_not():
    from aubench.models.maefau import MAEFAU

    preset = MAEFAU.presets["tiny"]
    stages = {stage.name: stage for stage in MAEFAU.stages(preset)}
    assert MAEFAU(12, stages["teacher2"].preset, None).test_inputs() == ("occlusion_mask",)
    assert MAEFAU(12, stages["student"].preset, None).test_inputs() == ()


def test_the_leaderboard_marks_rows_that_read_privileged_inputs(tmp_path):
    for fold in (1, 2):
        plain = fake_result("resnet", fold, [0.5] * len(AUS))
        marked = {**fake_result("rrl", fold, [0.6] * len(AUS)), "occlusion": {"train": "none", "test": "patches0.5"},
                  "privileged_test_inputs": ["landmarks of the clean frame"]}
        other = {**plain, "occlusion": {"train": "none", "test": "patches0.5"}}
        for name, result in (("plain", plain), ("marked", marked), ("other", other)):
            (tmp_path / f"{name}{fold}.json").write_text(json.dumps(result))
    rows = leaderboard.build_rows(leaderboard.find_results([tmp_path]), include_reported=False)
    by_method = {(r["method"], r["occlusion_test"]): r for r in rows if r["kind"] == "ours"}
    assert by_method[("rrl", "patches0.5")]["reads_at_test"] == "landmarks of the clean frame"
    assert by_method[("resnet", "patches0.5")]["reads_at_test"] == ""
    md = leaderboard.to_markdown(rows)
    assert f"| rrl {leaderboard.PRIVILEGED_MARK} " in md
    assert f"{leaderboard.PRIVILEGED_MARK} reads at test time more than the image: rrl" in md
    assert f"resnet {leaderboard.PRIVILEGED_MARK}" not in md
    table = list(csv.DictReader(io.StringIO(leaderboard.to_csv(rows))))
    assert {r["method"]: r["reads_at_test"] for r in table if r["occlusion_test"] == "patches0.5"
            and r["kind"] == "ours"} == {"rrl": "landmarks of the clean frame", "resnet": ""}
    assert [r["reads_at_test"] for r in json.loads(leaderboard.to_json(rows))
            if r["method"] == "rrl"] == ["landmarks of the clean frame"]
    legend = [line["method"] for line in leaderboard.occlusion_series(rows)]
    assert f"rrl {leaderboard.PRIVILEGED_MARK}" in legend


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    return landmark_h5(tmp_path_factory.mktemp("inputs") / "au.h5")


def evaluate_rrl(h5, out, occluded_landmarks="clean"):
    run = RunConfig(method="", data=str(h5), preset="tiny", batch_size=8, epochs=1, progress=False, device="cpu",
                    model={"probe_epochs": 1}, occluded_landmarks=occluded_landmarks)
    request = EvaluateRequest(methods=["rrl"], run=run, out=str(out), folds=[1],
                              test_occlusions=["none", "patches:0.5"], bench_batch_size=2)
    return {json.loads(p.read_text())["occlusion"]["test"]: json.loads(p.read_text()) for p in evaluate_runs(request)}


def test_rrl_results_record_the_landmarks_they_read(h5, tmp_path):
    results = evaluate_rrl(h5, tmp_path / "clean")
    assert results["none"]["privileged_test_inputs"] == []
    assert results["none"]["test_inputs"] == {"landmarks": "the data file's, of the test frame"}
    assert results["patches0.5"]["privileged_test_inputs"] == ["landmarks of the clean frame"]


def test_rrl_landmarks_detected_on_the_occluded_image(h5, tmp_path):
    from datasets_tools.face_detect import unavailable_reason

    if unavailable_reason():
        pytest.skip(unavailable_reason())
    results = evaluate_rrl(h5, tmp_path / "detect", "detect")
    occluded = results["patches0.5"]
    assert occluded["privileged_test_inputs"] == []
    assert occluded["test_inputs"]["landmarks"].startswith("detected on the occluded test image")
    frames = occluded["metrics"]["num_frames"]
    detected = int(occluded["test_inputs"]["landmarks"].split("(")[1].split()[0])
    mean_shape = int(occluded["test_inputs"]["landmarks"].split("mean shape on ")[1].split()[0])
    assert detected + mean_shape == frames
    assert results["none"]["test_inputs"] == {"landmarks": "the data file's, of the test frame"}
    # another setting: the leaderboard keeps it apart from clean-landmark results
    assert occluded["config"]["occluded_landmarks"] == "detect"
