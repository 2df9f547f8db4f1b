"""End-to-end DISFA conversion: videos and extracted image folders, threshold, camera, folds."""

import h5py
import numpy as np
import pytest

from convert_helpers import fold_subjects, frame_grey, make_disfa_tree, read_back
from datasets_tools.convert import FrameOptions, convert
from datasets_tools.folds import DISFA_TEST_FOLDS
from datasets_tools.verify import verify

SUBJECTS = ["SN003", "SN006", "SN001", "SN011"]  # fold1, fold2, fold3, fold2 test subjects


def check_against_truth(out, truth, threshold=2):
    stored = read_back(out)
    assert sorted(stored) == sorted(truth)
    for name, expected in truth.items():
        got = stored[name]
        np.testing.assert_array_equal(got["frame_no"], expected["frame_no"])
        np.testing.assert_array_equal(got["intensity"], expected["intensity"])
        np.testing.assert_array_equal(got["label"], (expected["intensity"] >= threshold).astype(np.int8))
        assert got["subject"] == name and got["frame_subject"] == {name}
        greys = np.array([frame_grey(int(f)) for f in expected["frame_no"]])
        assert np.abs(got["grey"] - greys).max() <= 4, name
    assert verify(out, progress=False) == []


def test_video_layout(tmp_path):
    truth = make_disfa_tree(tmp_path / "raw", SUBJECTS, frames=10)
    out = tmp_path / "disfa.h5"
    convert("disfa", tmp_path / "raw", out, FrameOptions(image_size=16), progress=False)
    check_against_truth(out, truth)
    for (train, test), standard in zip(fold_subjects(out), DISFA_TEST_FOLDS):
        assert test == sorted(set(SUBJECTS) & set(standard))
        assert train == sorted(set(SUBJECTS) - set(test))
    with h5py.File(out, "r") as f:
        assert f.attrs["label_rule"] == "intensity>=2" and f.attrs["camera"] == "left"
        assert [a.decode() if isinstance(a, bytes) else a for a in f.attrs["au_names"]] == [
            "AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU25", "AU26"]
        assert f["folds"].attrs["split_source"].startswith("standard DISFA")


def test_video_chunks_in_parallel_workers(tmp_path, monkeypatch):
    # chunks smaller than a video make workers seek into the middle of it
    monkeypatch.setattr("datasets_tools.convert.chunk_size", lambda options: 4)
    truth = make_disfa_tree(tmp_path / "raw", SUBJECTS[:3], frames=11)
    out = tmp_path / "disfa.h5"
    convert("disfa", tmp_path / "raw", out, FrameOptions(image_size=16), workers=2, progress=False)
    check_against_truth(out, truth)


@pytest.mark.parametrize("zero_based", [True, False])
def test_image_folders_either_numbering(tmp_path, zero_based):
    truth = make_disfa_tree(tmp_path / "raw", SUBJECTS[:3], frames=9, source="images", zero_based=zero_based)
    out = tmp_path / "disfa.h5"
    convert("disfa", tmp_path / "raw", out, FrameOptions(image_size=16, crop="none"), threshold=3,
            progress=False)
    check_against_truth(out, truth, threshold=3)


def test_right_camera_and_unknown_subjects_fall_back_to_balanced_split(tmp_path, capsys):
    subjects = ["SN001", "SN002", "SN901"]
    truth = make_disfa_tree(tmp_path / "raw", subjects, frames=8, camera="right")
    out = tmp_path / "disfa.h5"
    result = convert("disfa", tmp_path / "raw", out, FrameOptions(image_size=16), camera="right",
                     folds_seed=3, progress=False)
    assert "warning: DISFA: subjects not in the standard split: SN901" in capsys.readouterr().err
    assert "balanced" in result.split_source and "SN901" in result.split_source
    check_against_truth(out, truth)
    tests = [test for _, test in fold_subjects(out)]
    assert sorted(sum(tests, [])) == subjects and all(len(t) == 1 for t in tests)
