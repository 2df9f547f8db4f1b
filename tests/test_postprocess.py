"""Results made from other results' per-frame predictions: temporal smoothing (--smooth, aubench
smooth) and ensembles (aubench ensemble); the leaderboard's Aff-Wild2 sections."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from aubench import leaderboard
from aubench.cli import main
from aubench.data import AUFile
from aubench.engine.postprocess import (Smoothing, parse_smoothing, smooth_predictions, smooth_probabilities,
                                        smoothed_path)
from aubench.engine.predictions import (Predictions, predictions_path, read_predictions, recompute_metrics,
                                        write_result)
from fixtures_h5 import write_au_h5

PAPER = "gaussian:51:3.0"
SMOOTHED = "full+smooth-gaussian-k51-s3"
RESULTS = ("resnet_fold1_full.json", "resnet_fold1_full_test-patches0.5.json")


def read(path):
    return json.loads(path.read_text())


# ---- smoothing: the filter -------------------------------------------------------------------

def test_smoothing_spec_is_parsed_and_bad_specs_are_refused(capsys):
    assert parse_smoothing(PAPER) == Smoothing(51, 3.0) and Smoothing(51, 3.0).name == "gaussian-k51-s3"
    for bad, says in [("gaussian:50:3", "odd"), ("gaussian:51:0", "positive"), ("gaussian:51:nan", "positive"),
                      ("box:5:1", "expected gaussian"), ("gaussian:51", "expected gaussian"),
                      ("gaussian:51:3.0000001", "at most 6 significant digits")]:
        with pytest.raises(ValueError, match=says):
            parse_smoothing(bad)
    assert main(["smooth", "nowhere", "--smooth", "gaussian:4:1"]) == 2
    assert "--smooth: 'gaussian:4:1': the kernel size must be odd" in capsys.readouterr().err


def test_smoothing_equals_a_hand_computed_case():
    """Kernel 3, sigma 1: a frame's neighbours weigh w = exp(-1/2); at a sequence's first frame
    the mean runs over the frames that exist."""
    w = math.exp(-0.5)
    impulse = np.array([[0.0], [0.0], [1.0], [0.0], [0.0]], dtype=np.float32)
    out = smooth_probabilities(impulse, np.zeros(5), np.arange(1, 6), Smoothing(3, 1.0))
    expected = [0.0, w / (1 + 2 * w), 1 / (1 + 2 * w), w / (1 + 2 * w), 0.0]
    assert out.dtype == np.float32 and np.allclose(out[:, 0], expected, atol=1e-7)
    ramp = np.array([[0.2], [0.6], [0.4]], dtype=np.float32)
    out = smooth_probabilities(ramp, np.zeros(3), np.array([10, 11, 12]), Smoothing(3, 1.0))
    assert np.allclose(out[:, 0], [(0.2 + w * 0.6) / (1 + w), (w * 0.2 + 0.6 + w * 0.4) / (1 + 2 * w),
                                   (w * 0.6 + 0.4) / (1 + w)], atol=1e-7)


def test_smoothing_never_mixes_sequences_and_respects_frame_gaps():
    """A step between two sequences (frame numbers running on across the boundary) stays a step;
    within one sequence, a frame 30 frame numbers away is outside a 51-frame kernel."""
    probabilities = np.concatenate([np.full((30, 2), 0.9), np.full((30, 2), 0.1)]).astype(np.float32)
    sequence = np.repeat([0, 1], 30)
    frame_no = np.arange(1, 61)
    out = smooth_probabilities(probabilities, sequence, frame_no, Smoothing(51, 3.0))
    assert np.array_equal(out, probabilities)
    # the same frames as one sequence: the step is blurred
    blurred = smooth_probabilities(probabilities, np.zeros(60), frame_no, Smoothing(51, 3.0))
    assert 0.1 < blurred[30, 0] < 0.9 and 0.1 < blurred[29, 0] < 0.9
    # a gap: frames 1..5 and 36..40 of one sequence do not reach each other (radius 25)
    gapped = smooth_probabilities(np.array([[0.9]] * 5 + [[0.1]] * 5, dtype=np.float32), np.zeros(10),
                                  np.r_[1:6, 36:41], Smoothing(51, 3.0))
    assert np.allclose(gapped[:5], 0.9) and np.allclose(gapped[5:], 0.1)
    with pytest.raises(ValueError, match="frame numbers do not increase"):
        smooth_probabilities(probabilities[:3], np.zeros(3), np.array([1, 3, 2]), Smoothing(3, 1.0))
    with pytest.raises(ValueError, match="not consecutive rows"):  # sequence 0, then 1, then 0 again
        smooth_probabilities(probabilities[:3], np.array([0, 1, 0]), np.array([1, 2, 3]), Smoothing(3, 1.0))
    single = smooth_probabilities(probabilities[:1], np.zeros(1), np.ones(1), Smoothing(51, 3.0))
    assert np.array_equal(single, probabilities[:1])  # one frame, and fewer frames than the radius


# ---- runs to smooth and fuse -----------------------------------------------------------------

@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    # sequences of 20 frames: long enough for the filter to matter
    return write_au_h5(tmp_path_factory.mktemp("post") / "tiny.h5", num_subjects=6, sequence_lengths=(20, 12))


def evaluate(h5, out, *extra):
    assert main(["evaluate", "--methods", "resnet", "--folds", "1", "--data", str(h5), "--out", str(out),
                 "--test-occlusion", "none,patches:0.5", "--preset", "tiny", "--image-size", "32",
                 "--batch-size", "8", "--epochs", "1", "--device", "cpu", "--no-progress", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def runs(h5, tmp_path_factory):
    """Two evaluations of resnet that differ in their seed; the first also smoothed (--smooth)."""
    root = tmp_path_factory.mktemp("runs")
    return evaluate(h5, root / "a", "--smooth", PAPER), evaluate(h5, root / "b", "--seed", "1")


def test_evaluate_smooth_writes_smoothed_results_beside_the_raw_ones(h5, runs):
    a, _ = runs
    file = AUFile(h5)
    for name in RESULTS:
        raw_path = a / "results" / name
        raw, raw_predictions = read_predictions(raw_path)
        smoothed, predictions = read_predictions(smoothed_path(raw_path, Smoothing(51, 3.0)))
        assert smoothed["protocol"] == SMOOTHED and raw["protocol"] == "full"
        # the paper's filter on a file that is not Aff-Wild2's official split: not chosen on validation
        assert smoothed["smoothing"] == {"kind": "gaussian", "kernel_size": 51, "sigma": 3.0,
                                         "choice": "filter not chosen on validation"}
        assert smoothed["choices"] == ["filter not chosen on validation"] and smoothed["chosen_on_test"] == []
        assert smoothed["smoothed_from"] == {"file": name, "predictions_sha256": raw["predictions"]["sha256"]}
        assert smoothed["occlusion"] == raw["occlusion"] and smoothed["config"] == raw["config"]
        # the smoothed probabilities are the filter's output on the raw ones, each sequence apart
        expected = smooth_predictions(raw_predictions, Smoothing(51, 3.0))
        assert np.array_equal(predictions.probabilities, expected.probabilities)
        assert not np.array_equal(predictions.probabilities, raw_predictions.probabilities)
        for s in np.unique(raw_predictions.sequence):  # a sequence's frames give its smoothed values alone
            alone = raw_predictions.sequence == s
            assert np.allclose(predictions.probabilities[alone], smooth_probabilities(
                raw_predictions.probabilities[alone], np.zeros(alone.sum()), raw_predictions.frame_no[alone],
                Smoothing(51, 3.0)), atol=1e-6)
        assert recompute_metrics(smoothed_path(raw_path, Smoothing(51, 3.0))) == smoothed["metrics"]
        assert smoothed["metrics"] == predictions.metrics(file.labels)
    rows = leaderboard.build_rows(leaderboard.find_results([a]), include_reported=False)
    sections = {(r["protocol"], r["occlusion_test"]) for r in rows if r["method"] == "resnet"}
    assert sections == {("full", "none"), ("full", "patches0.5"), (SMOOTHED, "none"), (SMOOTHED, "patches0.5")}


def test_aubench_smooth_applies_to_existing_results_and_keeps_what_is_made(runs, tmp_path, capsys):
    a, _ = runs
    copy = tmp_path / "a"
    shutil.copytree(a / "results", copy / "results")
    made = smoothed_path(copy / "results" / RESULTS[0], Smoothing(51, 3.0))
    made.unlink()
    assert main(["smooth", str(copy), "--smooth", PAPER]) == 0
    out = capsys.readouterr().out
    assert f"smoothed {made}" in out and out.count("kept") == 1  # the other one was there already
    assert read(made)["metrics"] == read(smoothed_path(a / "results" / RESULTS[0], Smoothing(51, 3.0)))["metrics"]
    # another filter is another result; a smoothed result is not smoothed again
    assert main(["smooth", str(copy / "results" / RESULTS[0]), "--smooth", "gaussian:5:1"]) == 0
    assert (copy / "results" / "resnet_fold1_full_smooth-gaussian-k5-s1.json").is_file()
    assert main(["smooth", str(made), "--smooth", "gaussian:5:1"]) == 2
    assert "already smoothed; name the result it was made from" in capsys.readouterr().err


def test_a_moved_data_file_is_named_and_can_be_given(runs, h5, tmp_path, capsys):
    a, _ = runs
    copy = tmp_path / "results"
    shutil.copytree(a / "results", copy)
    for path in copy.glob("*.json"):  # the results name a data file that is gone
        record = read(path)
        record["data"]["path"] = str(tmp_path / "gone.h5")
        path.write_text(json.dumps(record))
    source = copy / RESULTS[0]
    assert main(["smooth", str(source), "--smooth", "gaussian:5:1"]) == 2
    assert f"its data file {tmp_path / 'gone.h5'} is missing; pass --data" in capsys.readouterr().err
    assert main(["smooth", str(source), "--smooth", "gaussian:5:1", "--data", str(h5)]) == 0
    other = write_au_h5(tmp_path / "other.h5", num_subjects=6, sequence_lengths=(20, 12), seed=5)
    assert main(["smooth", str(source), "--smooth", "gaussian:7:1", "--data", str(other)]) == 2
    assert "not the data file" in capsys.readouterr().err


# ---- ensembles -------------------------------------------------------------------------------

def test_an_ensemble_of_a_run_with_itself_reproduces_it(runs, tmp_path):
    a, _ = runs
    assert main(["ensemble", str(a), str(a), "--methods", "resnet", "--name", "self", "--out", str(tmp_path)]) == 0
    for name in RESULTS:
        source, source_predictions = read_predictions(a / "results" / name)
        fused, predictions = read_predictions(tmp_path / "results" / name.replace("resnet", "self"))
        assert np.array_equal(predictions.probabilities, source_predictions.probabilities)
        assert fused["metrics"] == source["metrics"] and fused["method"] == "self"
        assert [m["weight"] for m in fused["ensemble"]["members"]] == [0.5, 0.5]
        # one model run once: its size and speed, not twice them
        assert fused["bench"]["params_m"] == source["bench"]["params_m"]


def test_weighted_ensemble_of_two_runs_and_its_leaderboard_row(runs, h5, tmp_path, capsys):
    a, b = runs
    out = tmp_path / "ens"
    assert main(["ensemble", str(a), str(b), "--name", "pair", "--weights", "3,1", "--out", str(out),
                 "--smooth", "gaussian:5:1"]) == 0
    file = AUFile(h5)
    for name in RESULTS:
        (ra, pa), (rb, pb) = read_predictions(a / "results" / name), read_predictions(b / "results" / name)
        path = out / "results" / name.replace("resnet", "pair")
        fused, predictions = read_predictions(path)
        expected = (0.75 * pa.probabilities.astype(np.float64) + 0.25 * pb.probabilities).astype(np.float32)
        assert np.array_equal(predictions.probabilities, expected)
        assert fused["metrics"] == predictions.metrics(file.labels) == recompute_metrics(path)
        assert fused["occlusion"] == ra["occlusion"] and fused["protocol"] == "full"
        members = fused["ensemble"]["members"]
        assert [(m["method"], m["weight"], m["predictions_sha256"]) for m in members] == [
            ("resnet", 0.75, ra["predictions"]["sha256"]), ("resnet", 0.25, rb["predictions"]["sha256"])]
        assert fused["bench"]["params_m"] == pytest.approx(ra["bench"]["params_m"] + rb["bench"]["params_m"])
        # smoothing after fusion
        smoothed, smoothed_predictions = read_predictions(smoothed_path(path, Smoothing(5, 1.0)))
        assert np.array_equal(smoothed_predictions.probabilities,
                              smooth_predictions(predictions, Smoothing(5, 1.0)).probabilities)
    rows = leaderboard.build_rows(leaderboard.find_results([a, b, out]), include_reported=False)
    pair = [r for r in rows if r["method"] == "pair"]
    assert {(r["protocol"], r["occlusion_test"]) for r in pair} == {
        ("full", "none"), ("full", "patches0.5"), ("full+smooth-gaussian-k5-s1", "none"),
        ("full+smooth-gaussian-k5-s1", "patches0.5")}
    # the same again is kept; other weights are refused unless --overwrite
    assert main(["ensemble", str(a), str(b), "--name", "pair", "--weights", "3,1", "--out", str(out)]) == 0
    assert "kept" in capsys.readouterr().out
    assert main(["ensemble", str(a), str(b), "--name", "pair", "--out", str(out)]) == 2
    assert "holds an ensemble made from other results or weights (or its predictions file is missing or " \
           "altered); pass --overwrite" in capsys.readouterr().err
    assert main(["ensemble", str(a), str(b), "--name", "pair", "--out", str(out), "--overwrite"]) == 0
    stale = smoothed_path(out / "results" / RESULTS[0].replace("resnet", "pair"), Smoothing(5, 1.0))
    assert not stale.exists()  # made from the replaced predictions: removed with them
    # --overwrite with members that no longer share the occluded condition: its results go
    fewer = tmp_path / "fewer"
    shutil.copytree(b / "results", fewer / "results")
    (fewer / "results" / RESULTS[1]).unlink()
    assert main(["ensemble", str(a), str(fewer), "--name", "pair", "--out", str(out), "--overwrite"]) == 0
    assert "not every member has BP4D" not in capsys.readouterr().out  # the note goes to stderr
    assert sorted(p.name for p in (out / "results").glob("*.json")) == ["pair_fold1_full.json"]


def test_ensemble_never_replaces_other_results(runs, tmp_path, capsys):
    a, b = runs
    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    shutil.copy(a / "results" / RESULTS[0], out / "results" / "x_fold1_full.json")
    assert main(["ensemble", str(a), str(b), "--name", "x", "--out", str(out), "--overwrite"]) == 2
    assert "x_fold1_full.json exists and is not an ensemble result" in capsys.readouterr().err
    assert main(["ensemble", str(a), str(b), "--name", "resnet", "--out", str(tmp_path / "o2")]) == 2
    assert "--name 'resnet' is a method's name" in capsys.readouterr().err
    members = tmp_path / "members"  # an OUT whose ensemble file would be a member's result
    shutil.copytree(a / "results", members / "results")
    for path in (members / "results").glob("resnet_*"):
        path.rename(path.with_name(path.name.replace("resnet_", "y_")))
    for path in (members / "results").glob("y_*.json"):
        record = read(path)
        record.update(method="y")
        record["predictions"]["file"] = record["predictions"]["file"].replace("resnet_", "y_")
        path.write_text(json.dumps(record))
    assert main(["ensemble", str(members), str(members), "--name", "y2", "--out", str(members)]) == 0
    assert main(["ensemble", str(members), str(b), "--methods", "y,resnet", "--name", "y2", "--out", str(members),
                 "--overwrite"]) == 0  # its own earlier ensemble is replaced, not the member
    assert read(members / "results" / "y_fold1_full.json")["method"] == "y"


def test_leaderboard_warns_about_a_result_made_from_replaced_predictions(runs, tmp_path, capsys):
    a, b = runs
    copy = tmp_path / "a"
    shutil.copytree(a / "results", copy / "results")
    source = copy / "results" / RESULTS[0]
    # the source replaced by other means than aubench (write_result would remove what was made
    # from it): another run's result copied over it
    for name in (RESULTS[0], predictions_path(RESULTS[0]).name):
        shutil.copy(b / "results" / name, copy / "results" / name)
    leaderboard.find_results([copy])
    err = capsys.readouterr().err
    assert f"{smoothed_path(source, Smoothing(51, 3.0))}: made from predictions of {source} that have since been " \
           f"replaced" in err and err.count("since been replaced") == 1


def altered_copy(a, tmp_path, edit, only=RESULTS):
    """A copy of run `a` whose results `only` went through `edit(result, predictions) -> (result, predictions)`."""
    copy = tmp_path / "altered"
    for name in RESULTS:
        result, predictions = read_predictions(a / "results" / name)
        if name in only:
            result, predictions = edit(result, predictions)
        write_result(copy / "results" / name, {k: v for k, v in result.items() if k != "predictions"}, predictions)
    return copy


def drop_au(result, p):
    kept = result["au_names"][1:]
    metrics = {**result["metrics"], **{key: {au: result["metrics"][key][au] for au in kept}
                                       for key in ("f1", "all_positive_f1")}}
    for mean, key in (("mean_f1", "f1"), ("all_positive_mean_f1", "all_positive_f1")):
        metrics[mean] = float(np.mean(list(metrics[key].values())))  # a consistent result of the other AUs
    result = {**result, "au_names": kept, "metrics": metrics}
    return result, Predictions(p.rows, p.probabilities[:, 1:], p.sequence, p.frame_no, p.sequence_names,
                               p.au_names[1:], p.threshold)


def drop_last_frame(result, p):
    return result, Predictions(p.rows[:-1], p.probabilities[:-1], p.sequence[:-1], p.frame_no[:-1],
                               p.sequence_names, p.au_names, p.threshold)


@pytest.mark.parametrize("edit, message", [
    (lambda r, p: ({**r, "fold": 2}, p), "the members' folds differ"),
    (lambda r, p: ({**r, "dataset": "DISFA"}, p), "the members share no dataset, protocol and test condition"),
    (lambda r, p: ({**r, "data": {**r["data"], "fingerprint": "0" * 64}}, p), "data files (fingerprints) differ"),
    (drop_au, "the members' AU sets differ"),
    (drop_last_frame, "the members' test rows differ"),
    (lambda r, p: ({**r, "protocol": "sparse0.5"}, p), "the members share no dataset, protocol and test condition"),
])
def test_mismatched_members_are_refused_with_their_message(runs, tmp_path, capsys, edit, message):
    a, _ = runs
    # altered under the second test condition only: the first is checked fine, and still nothing is written
    other = altered_copy(a, tmp_path, edit, only=RESULTS if "share no" in message else RESULTS[1:])
    assert main(["ensemble", str(a), str(other), "--name", "x", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and str(other) in err
    assert not (tmp_path / "out" / "results").exists()


def test_ensemble_arguments_are_checked(runs, tmp_path, capsys):
    a, b = runs
    out = str(tmp_path / "out")
    cases = [
        (["ensemble", str(a), "--name", "x", "--out", out], "at least two members"),
        (["ensemble", str(a), str(b), "--name", "x", "--weights", "1,2,3", "--out", out], "3 weights for 2 members"),
        (["ensemble", str(a), str(b), "--name", "a/b", "--out", out], "--name 'a/b'"),
        (["ensemble", str(a), str(b), "--name", "x", "--methods", "resnet,ks", "--out", out], "'ks'"),
        (["ensemble", str(a), str(b), "--name", "x", "--weights", "1,-1", "--out", out], "positive"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    both = tmp_path / "both"  # one directory holding two methods' results
    shutil.copytree(a / "results", both / "results")
    for path in (a / "results").glob("resnet_*"):
        shutil.copy(path, both / "results" / path.name.replace("resnet_", "other_"))
    for path in (both / "results").glob("other_*.json"):
        record = read(path)
        record["method"] = "other"
        record["predictions"]["file"] = record["predictions"]["file"].replace("resnet_", "other_")
        path.write_text(json.dumps(record))
    assert main(["ensemble", str(both), str(b), "--name", "x", "--out", out]) == 2
    assert "holds results of several methods (other, resnet); choose the members with --methods" in \
        capsys.readouterr().err
    assert main(["ensemble", str(both), "--methods", "resnet,other", "--name", "x", "--out", out]) == 0


# ---- Aff-Wild2: the split scheme in the leaderboard, the paper's ABAW rows --------------------

def test_affwild2_evaluation_names_its_split_and_stands_beside_the_abaw_rows(tmp_path, capsys):
    from datasets_tools import synth
    from datasets_tools.convert import FrameOptions, convert

    raw = tmp_path / "raw"
    synth.generate("affwild2", raw, subjects=6, frames=30, frame_size="32x32", seed=2, progress=False)
    data = tmp_path / "affwild2.h5"
    convert("affwild2", raw, data, FrameOptions(image_size=32, crop="none"), progress=False)
    out = tmp_path / "run"
    assert main(["evaluate", "--methods", "resnet", "--folds", "1", "--data", str(data), "--out", str(out),
                 "--preset", "tiny", "--batch-size", "8", "--epochs", "1", "--device", "cpu", "--no-progress",
                 "--smooth", PAPER]) == 0
    result = read(out / "results" / "resnet_fold1_full.json")
    assert result["dataset"] == "Aff-Wild2" and result["data"]["split_scheme"] == "official"
    rows = leaderboard.build_rows(leaderboard.find_results([out]))
    section = {(r["method"], r["protocol"]) for r in rows if r["dataset"] == "Aff-Wild2 (official split)"}
    validation = " [ABAW validation set]"
    assert {("resnet", "full"), ("resnet", SMOOTHED), ("Regnet-ViT" + validation, "full"),
            ("Regnet-ViT-Ensemble [ABAW test set]", "full"), ("Regnet-ViT-Smoothing" + validation, SMOOTHED)} <= section
    assert ("Regnet-ViT-Smoothing" + validation, "full") not in section and len({r["dataset"] for r in rows}) == 1
    regnet = next(r for r in rows if r["method"] == "Regnet-ViT" + validation and r["protocol"] == "full")
    assert regnet["mean_f1"]["mean"] == 52.80 and regnet["f1"]["AU25"]["mean"] == 85.35
    assert "### Aff-Wild2 (official split)" in leaderboard.to_markdown(rows)
    # a k-fold file's results are another section, never averaged with the official split's
    kfold = dict(result, data={**result["data"], "split_scheme": "kfold"}, _file="kfold.json")
    rows = leaderboard.build_rows([dict(result, _file="official.json"), kfold])
    assert {r["dataset"] for r in rows} == {"Aff-Wild2 (official split)", "Aff-Wild2 (kfold split)"}
    assert not any(r["kind"] == "reported" for r in rows if r["dataset"] == "Aff-Wild2 (kfold split)")


def test_demo_adds_one_smoothed_method_and_one_ensemble(h5, tmp_path):
    from aubench.demo import DEMO_ENSEMBLE, DEMO_SMOOTHING, demo_postprocess

    members = DEMO_ENSEMBLE[1]
    assert main(["evaluate", "--methods", ",".join(members), "--folds", "1", "--data", str(h5), "--out",
                 str(tmp_path / "run"), "--preset", "tiny", "--image-size", "32", "--batch-size", "2", "--epochs", "1",
                 "--device", "cpu", "--no-progress"]) == 0
    assert demo_postprocess(tmp_path, ["resnet"]) == []  # neither is there to show
    runs = demo_postprocess(tmp_path, [*members, "ks"])
    assert runs == [tmp_path / "ensemble"]
    rows = leaderboard.build_rows(leaderboard.find_results([tmp_path / "run", *runs]), include_reported=False)
    ours = {(r["method"], r["protocol"]) for r in rows if r["kind"] == "ours"}
    smoothing = parse_smoothing(DEMO_SMOOTHING[1])
    assert ours == {*((m, "full") for m in members), (DEMO_ENSEMBLE[0], "full"),
                    (DEMO_SMOOTHING[0], f"full+smooth-{smoothing.name}")}
    assert demo_postprocess(tmp_path, list(members)) == runs  # a rerun keeps what is made
