"""Reliability of what aubench writes and reads back as results: an output never replaces an input
or a file aubench manages, writes go through symlinks and into FIFOs and devices as a shell
redirection would; ensemble weights that overflow; hand-edited results with impossible values,
and `leaderboard --verify` recomputing each result from its predictions and data file."""
from __future__ import annotations

import json
import os
import shutil
import stat
import threading

import numpy as np
import pytest

from aubench import leaderboard
from aubench.cli import main
from aubench.engine.predictions import read_predictions
from aubench.errors import UserError
from aubench.files import atomic_file
from fixtures_h5 import write_au_h5

RESULT = "resnet_fold1_full.json"
PREDICTIONS = "resnet_fold1_full.predictions.npz"


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    return write_au_h5(tmp_path_factory.mktemp("outputs") / "tiny.h5", num_subjects=6, sequence_lengths=(6, 5))


@pytest.fixture(scope="module")
def evaluated(h5, tmp_path_factory):
    """One evaluation of resnet (its result and predictions file), copied by the tests that change it."""
    out = tmp_path_factory.mktemp("outputs") / "ev"
    assert main(["evaluate", "--methods", "resnet", "--folds", "1", "--data", str(h5), "--out", str(out),
                 "--preset", "tiny", "--image-size", "32", "--batch-size", "8", "--epochs", "1", "--device", "cpu",
                 "--no-progress"]) == 0
    return out


@pytest.fixture
def run(evaluated, tmp_path):
    copy = tmp_path / "ev"
    shutil.copytree(evaluated / "results", copy / "results")
    return copy


def one_line_error(capsys, *fragments) -> str:
    """The one line a refused command printed (no traceback), holding every fragment."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("aubench: error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ---- 2. writers never replace what they must not ---------------------------------------------

@pytest.mark.parametrize("target", [RESULT, PREDICTIONS])
def test_csv_over_its_own_result_or_predictions_is_refused(run, capsys, target):
    result = run / "results" / RESULT
    before = {p.name: p.read_bytes() for p in (run / "results").iterdir()}
    assert main(["predictions", str(result), "--out", str(run / "results" / target)]) == 2
    one_line_error(capsys, f"--out {run / 'results' / target}", "an input of this command")
    assert {p.name: p.read_bytes() for p in (run / "results").iterdir()} == before


def test_csv_over_another_result_or_a_checkpoint_or_data_file_is_refused(run, h5, tmp_path, capsys):
    result = run / "results" / RESULT
    other = tmp_path / "other_result.json"
    shutil.copy(result, other)
    checkpoint = tmp_path / "weights.pt"
    checkpoint.write_bytes(b"PK\x03\x04 a checkpoint")
    for target, kind in [(other, "a result"), (checkpoint, "a checkpoint"), (h5, "a data file")]:
        before = target.read_bytes()
        assert main(["predictions", str(result), "--out", str(target)]) == 2
        one_line_error(capsys, f"--out {target}", f"is {kind} of aubench")
        assert target.read_bytes() == before


def test_leaderboard_output_over_a_result_is_refused(run, capsys):
    inside = run / "results" / "x.json"  # another fold's result
    inside.write_text(json.dumps({**json.loads((run / "results" / RESULT).read_text()), "fold": 2}, indent=2))
    before = inside.read_bytes()
    assert main(["leaderboard", str(run), "--out", str(inside)]) == 2
    one_line_error(capsys, f"--out {inside}", "an input of this command")
    assert inside.read_bytes() == before
    assert main(["leaderboard", str(run / "results" / RESULT), "--out", str(inside)]) == 2  # not an input here
    one_line_error(capsys, "is a result of aubench")
    assert main(["leaderboard", str(run / "results" / RESULT), "--out", str(run / "table.md")]) == 0  # a table
    assert (run / "table.md").read_text().startswith("#")


def test_bench_json_over_a_result_is_refused_before_measuring(run, capsys):
    result = run / "results" / RESULT
    before = result.read_bytes()
    assert main(["bench", "--methods", "resnet", "--out", str(result)]) == 2
    assert "is a result of aubench" in one_line_error(capsys)
    assert result.read_bytes() == before and "params M" not in capsys.readouterr().out


def test_csv_through_a_symlink_writes_its_target_and_keeps_the_link(run, tmp_path):
    target = tmp_path / "real" / "frames.csv"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "frames.csv"
    link.symlink_to(target)
    assert main(["predictions", str(run / "results" / RESULT), "--out", str(link)]) == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text().startswith("sequence,frame,")
    assert [p.name for p in target.parent.iterdir()] == ["frames.csv"]  # no temporary file left


def test_csv_into_a_fifo_is_written_to_its_reader(run, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    assert main(["predictions", str(run / "results" / RESULT), "--out", str(fifo)]) == 0
    reader.join(10)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still a FIFO, not a file put in its place
    _, predictions = read_predictions(run / "results" / RESULT)
    lines = received[0].decode().splitlines()
    assert lines[0].startswith("sequence,frame,") and len(lines) == 1 + predictions.num_frames


def test_csv_to_a_full_device_is_one_line_and_leaves_the_device(run, tmp_path, capsys):
    if not stat.S_ISCHR(os.stat("/dev/full").st_mode if os.path.exists("/dev/full") else 0):
        pytest.skip("no /dev/full device on this system")
    # through a link of our own: code that replaced what it is given (as root, the device node
    # itself) replaces only the link
    link = tmp_path / "full.csv"
    link.symlink_to("/dev/full")
    assert main(["predictions", str(run / "results" / RESULT), "--out", str(link)]) == 2
    one_line_error(capsys, f"--out {link}: cannot write (No space left on device)")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode) and link.is_symlink()


def test_atomic_file_and_check_output_directly(tmp_path):
    from aubench.files import check_output, managed_kind

    with atomic_file(tmp_path / "a" / "b.txt") as f:  # parents made, as before
        f.write("x")
    assert (tmp_path / "a" / "b.txt").read_text() == "x"
    assert managed_kind(tmp_path / "a" / "b.txt") is None and managed_kind(tmp_path / "missing.pt") is None
    (tmp_path / "r.json").write_text(json.dumps({"schema": leaderboard.RESULT_SCHEMA}, separators=(",", ":")))
    assert managed_kind(tmp_path / "r.json") == "a result"
    (tmp_path / "link.json").symlink_to(tmp_path / "r.json")
    with pytest.raises(UserError, match="an input of this command"):
        check_output("--out", tmp_path / "link.json", [tmp_path / "r.json"])
    check_output("--out", tmp_path / "new.csv", [tmp_path / "r.json"])  # a new file: fine


# ---- 5. ensemble weights ---------------------------------------------------------------------

def test_ensemble_weights_that_overflow_their_sum_are_normalised(run, tmp_path, capsys):
    out = tmp_path / "ens"
    assert main(["ensemble", str(run), str(run), "--methods", "resnet", "--name", "huge", "--out", str(out),
                 "--weights", "1e308,1e308"]) == 0
    source, source_predictions = read_predictions(run / "results" / RESULT)
    fused, predictions = read_predictions(out / "results" / "huge_fold1_full.json")
    assert [m["weight"] for m in fused["ensemble"]["members"]] == [0.5, 0.5]
    assert np.array_equal(predictions.probabilities, source_predictions.probabilities)
    assert fused["metrics"] == source["metrics"]
    for bad, says in [("0,0", "positive"), ("1,nan", "positive"), ("1,inf", "positive"), ("1,-1", "positive")]:
        assert main(["ensemble", str(run), str(run), "--methods", "resnet", "--name", "bad", "--out", str(out),
                     f"--weights={bad}"]) == 2
        assert says in capsys.readouterr().err, bad


def test_ensemble_name_too_long_for_a_file_name_is_one_line(run, tmp_path, capsys):
    out = tmp_path / "ens"
    assert main(["ensemble", str(run), str(run), "--methods", "resnet", "--name", "n" * 300, "--out", str(out)]) == 2
    one_line_error(capsys, "--name: 300 characters, at most")
    assert not out.exists()


# ---- 7. results with impossible values; leaderboard --verify ---------------------------------

def edit_result(path, edit) -> None:
    result = json.loads(path.read_text())
    edit(result)
    path.write_text(json.dumps(result, indent=2))


def set_metric(key, value):
    return lambda r: r["metrics"].__setitem__(key, value)


def set_au_f1(value):
    def edit(r):
        au = r["au_names"][0]
        r["metrics"]["f1"][au] = value
    return edit


def set_positive(value):
    def edit(r):
        au = r["au_names"][0]
        r["metrics"]["num_positive"][au] = value
    return edit


@pytest.mark.parametrize("edit, says", [
    (set_metric("mean_f1", float("nan")), "'metrics.mean_f1' is nan"),
    (set_metric("mean_f1", 5.0), "'metrics.mean_f1' is 5.0, not the mean"),
    (set_metric("mean_f1", 0.9), "not the mean of its AUs' F1"),
    (set_au_f1(-0.1), "not an F1 in [0, 1]"),
    (set_au_f1(float("inf")), "not an F1 in [0, 1]"),
    (set_metric("num_frames", -3), "'metrics.num_frames' is -3, not a count"),
    (set_positive(10 ** 6), "counts of AU1 disagree"),
])
def test_result_with_impossible_values_is_skipped_with_a_warning(run, tmp_path, capsys, edit, says):
    good = tmp_path / "good"
    shutil.copytree(run, good)
    edit_result(run / "results" / RESULT, edit)
    assert main(["leaderboard", str(run), str(good)]) == 0
    captured = capsys.readouterr()
    assert f"aubench: warning: {run / 'results' / RESULT}: incomplete result: " in captured.err
    assert says in captured.err, captured.err
    assert "nan" not in captured.out and "500.0" not in captured.out
    assert main(["leaderboard", str(run / "results" / RESULT)]) == 2  # named directly: an error
    one_line_error(capsys, says)


def test_leaderboard_verify_recomputes_each_result(run, h5, tmp_path, capsys):
    assert main(["leaderboard", str(run), "--verify"]) == 0
    assert "verify: 1 result(s) match their predictions, 0 do not" in capsys.readouterr().err
    # a consistent but false edit: every F1 and their mean changed together
    tampered = tmp_path / "tampered"
    shutil.copytree(run, tampered)

    def lift(r):
        for au in r["au_names"]:
            r["metrics"]["f1"][au] = min(1.0, r["metrics"]["f1"][au] + 0.25)
        r["metrics"]["mean_f1"] = sum(r["metrics"]["f1"].values()) / len(r["au_names"])
    edit_result(tampered / "results" / RESULT, lift)
    assert main(["leaderboard", str(tampered)]) == 0  # plausible values: shown without --verify
    capsys.readouterr()
    assert main(["leaderboard", str(run), str(tampered), "--verify"]) == 1
    captured = capsys.readouterr()
    assert f"aubench: verify: {tampered / 'results' / RESULT}: its metrics are not those of its predictions" \
           in captured.err
    assert "verify: 1 result(s) match their predictions, 1 do not" in captured.err
    # a missing predictions file, and a data file that has moved
    (tampered / "results" / PREDICTIONS).unlink()
    assert main(["leaderboard", str(tampered), "--verify"]) == 1
    assert "cannot be verified" in capsys.readouterr().err
    moved = tmp_path / "moved.h5"
    shutil.copy(h5, moved)
    result = json.loads((run / "results" / RESULT).read_text())
    result["data"]["path"] = str(tmp_path / "gone.h5")
    (run / "results" / RESULT).write_text(json.dumps(result, indent=2))
    assert main(["leaderboard", str(run), "--verify"]) == 1
    assert "pass --data with its new path" in capsys.readouterr().err
    assert main(["leaderboard", str(run), "--verify", "--data", str(moved)]) == 0


# ---- unclear messages ------------------------------------------------------------------------

def test_negative_weights_after_a_space_are_read_and_explained(run, tmp_path, capsys):
    for spelling in (["--weights", "-1,2"], ["--weights=-1,2"]):
        assert main(["ensemble", str(run), str(run), "--methods", "resnet", "--name", "neg", "--out",
                     str(tmp_path / "ens"), *spelling]) == 2
        assert "argument --weights: must be a positive number, got -1" in capsys.readouterr().err
    assert not (tmp_path / "ens").exists()


def test_a_folder_where_a_data_file_belongs_is_named_as_a_folder(run, h5, tmp_path, capsys):
    folder = tmp_path / "raw"
    folder.mkdir()
    assert main(["evaluate", "--methods", "resnet", "--folds", "1", "--data", str(folder), "--out",
                 str(tmp_path / "ev2")]) == 2
    one_line_error(capsys, f"--data {folder}: is a folder; expected an aubench HDF5 file",
                   "datasets_tools convert LAYOUT FOLDER OUT.h5")
    assert main(["smooth", str(run), "--smooth", "gaussian:3:1", "--data", str(folder)]) == 2
    one_line_error(capsys, f"{folder}: is a folder; expected an aubench HDF5 file")
