"""Convert trees written by the synthetic generator (every layout) and check every label, frame
number, subject, intensity and fold against the generator's truth."""

import h5py
import numpy as np
import pytest

from convert_helpers import fold_subjects, read_back
from datasets_tools import synth
from datasets_tools.cli import main
from datasets_tools.convert import FrameOptions, convert
from datasets_tools.errors import DatasetError
from datasets_tools.faces import haar_unavailable_reason
from datasets_tools.landmarks import BP4D_49, DISFA_66, NUM_POINTS
from datasets_tools.verify import verify

CASES = {
    # name: (layout, converter, generate kwargs)
    "bp4d": ("bp4d", "bp4d", {"subjects": ["F004", "F003", "F001"], "tasks": ["T1", "T2"]}),
    "disfa": ("disfa", "disfa", {"subjects": ["SN003", "SN006", "SN001"]}),
    "bp4d-plus-zip": ("bp4d-plus", "bp4d-plus", {"subjects": ["F006", "F046", "F078"], "tasks": ["T1", "T8"]}),
    "bp4d-plus-extracted": ("bp4d-plus", "bp4d-plus", {"subjects": ["F006", "F046", "F078"], "tasks": ["T6"],
                                                       "zip_images": False}),
    "mme": ("mme", "mme", {"subjects": 4, "tasks": ["T7"]}),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def synthetic(request, tmp_path_factory):
    layout, converter, kwargs = CASES[request.param]
    base = tmp_path_factory.mktemp(request.param)
    truth = synth.generate(layout, base / "raw", frames=5, frame_size="48x64", seed=1, progress=False, **kwargs)
    out = base / "out.h5"
    result = convert(converter, base / "raw", out, FrameOptions(image_size=24, crop="landmarks"), progress=False)
    return truth, out, result


def test_every_label_frame_subject_matches_truth(synthetic):
    truth, out, result = synthetic
    stored = read_back(out)
    assert sorted(stored) == sorted(s.name for s in truth.sequences)
    columns = [truth.au_numbers.index(a) for a in truth.benchmark_aus]
    for seq in truth.sequences:
        got = stored[seq.name]
        np.testing.assert_array_equal(got["frame_no"], seq.frame_no)
        np.testing.assert_array_equal(got["label"], seq.labels[:, columns])
        assert got["subject"] == seq.subject and got["frame_subject"] == {seq.subject}
        for column, au in enumerate(truth.benchmark_aus):
            if au in truth.intensity_aus:
                np.testing.assert_array_equal(got["intensity"][:, column], seq.intensity[:, columns[column]])
        # the dataset's own landmark files: BP4D's 49 points or DISFA's 66, in the 68-point scheme
        points = got["landmarks"]
        present = list(DISFA_66 if truth.dataset == "DISFA" else BP4D_49)
        absent = [i for i in range(NUM_POINTS) if i not in present]
        assert points.shape[1:] == (NUM_POINTS, 2) == (len(truth.landmark_names), 2)
        assert np.isfinite(points[:, present]).all() and np.isnan(points[:, absent]).all()
        assert points[:, present].min() >= 0 and points[:, present].max() <= 24
    assert result.skips == [] and result.frames == sum(len(s.frame_no) for s in truth.sequences)
    with h5py.File(out, "r") as f:
        expected = {"BP4D": "bp4d-2dfeatures-v7.3", "DISFA": "disfa-landmark-points"}.get(truth.dataset,
                                                                                         "bp4d-2dfeatures-v5")
        assert f.attrs["landmarks_source"] == expected and f.attrs["landmark_scheme"] == "ibug68"
        assert f.attrs["no_face_frames"] == 0 and f.attrs["no_face_policy"] == "skip"


def test_folds_are_subject_exclusive_and_cover(synthetic):
    truth, out, result = synthetic
    subjects = sorted({s.subject for s in truth.sequences})
    folds = fold_subjects(out)
    assert sorted(sum((test for _, test in folds), [])) == subjects
    for train, test in folds:
        assert test and not set(train) & set(test) and sorted(train + test) == subjects
    with h5py.File(out, "r") as f:
        expected = "standard" if truth.dataset in ("BP4D", "DISFA", "BP4D+") else "balanced"
        assert f["folds"].attrs["split_source"].startswith(expected)
        assert f.attrs["dataset"] == truth.dataset
    assert verify(out, progress=False) == []


def test_synth_subcommand_then_convert(tmp_path, capsys):
    raw = tmp_path / "raw"
    assert main(["synth", "--layout", "bp4d", str(raw), "--subjects", "3", "--tasks", "T1", "--frames", "4",
                 "--frame-size", "40x48", "--quiet"]) == 0
    out = tmp_path / "b.h5"
    assert main(["convert", "bp4d", str(raw), str(out), "--image-size", "16", "--workers", "1", "--quiet"]) == 0
    assert "wrote 12 frames (3 sequences, 3 subjects)" in capsys.readouterr().out
    assert main(["synth", "--layout", "bp4d", str(raw), "--frame-size", "3x3"]) == 2
    assert "frame size 3x3" in capsys.readouterr().err


def test_disfa_right_camera_has_no_landmark_files(tmp_path):
    """DISFA ships the left camera's landmarks only: the right camera stores none and says so."""
    synth.generate("disfa", tmp_path / "raw", subjects=["SN003", "SN006", "SN001"], frames=4, frame_size="48x64",
                   seed=2, progress=False)
    out = tmp_path / "right.h5"
    result = convert("disfa", tmp_path / "raw", out, FrameOptions(image_size=24), camera="right", progress=False)
    assert any(note.startswith("DISFA right camera: the landmark files are the left camera's") for note in result.notes)
    with h5py.File(out, "r") as f:
        assert f.attrs["camera"] == "right" and f.attrs["landmarks_source"] == "none" and "frames/landmarks" not in f
    with pytest.raises(DatasetError, match="--crop landmarks needs landmarks"):
        convert("disfa", tmp_path / "raw", tmp_path / "r2.h5", FrameOptions(image_size=24, crop="landmarks"),
                camera="right", progress=False)


def test_the_old_csv_layout_still_converts_with_a_note(tmp_path):
    """Trees written by earlier generators (Landmarks/<sequence>.csv, 68 points; DISFA's right camera
    in Landmarks/RightCamera/) convert as before, each camera with its own landmarks."""
    truth = synth.generate("disfa", tmp_path / "raw", subjects=["SN003", "SN006", "SN001"], frames=4,
                           frame_size="48x64", seed=2, progress=False, landmark_files="csv")
    assert not (tmp_path / "raw" / "Landmark_Points").exists()
    left, right = tmp_path / "left.h5", tmp_path / "right.h5"
    for camera, out in (("left", left), ("right", right)):
        result = convert("disfa", tmp_path / "raw", out, FrameOptions(image_size=24, crop="landmarks"),
                         camera=camera, progress=False)
        assert verify(out, progress=False) == []
        assert result.notes == {"landmarks read from Landmarks/<sequence>.csv, the old layout of earlier synthetic "
                                "trees": 12}
    with h5py.File(left, "r") as a, h5py.File(right, "r") as b:
        assert a.attrs["landmarks_source"] == b.attrs["landmarks_source"] == "csv"
        assert b.attrs["camera"] == "right"
        np.testing.assert_array_equal(a["frames/label"][:], b["frames/label"][:])
        assert np.isfinite(b["frames/landmarks"][:]).all()
        assert b["frames/landmarks"][:].min() >= 0 and b["frames/landmarks"][:].max() <= 24
        assert not np.allclose(a["frames/landmarks"][:], b["frames/landmarks"][:])   # two views of the faces
    assert len(truth.sequences) == 3


@pytest.mark.skipif(haar_unavailable_reason() is not None, reason="this OpenCV has no Haar cascades (OpenCV 5)")
def test_haar_crop_detects_or_counts_fallbacks(tmp_path):
    synth.generate("bp4d", tmp_path / "raw", subjects=["F004", "F003", "F001"], tasks=["T1"], frames=3,
                   frame_size="260x348", seed=0, progress=False)
    out = tmp_path / "haar.h5"
    result = convert("bp4d", tmp_path / "raw", out, FrameOptions(image_size=32, crop="haar"), progress=False)
    fallbacks = sum(n for note, n in result.notes.items() if note.startswith("haar: no face found"))
    assert fallbacks < result.frames == 9  # most rendered faces are found; misses are counted
    with h5py.File(out, "r") as f:
        assert f.attrs["crop"] == "haar"
    assert verify(out, progress=False) == []
