"""Convert trees written by the synthetic generator (every layout) and check every label, frame
number, subject, intensity and fold against the generator's truth."""

import h5py
import numpy as np
import pytest

from convert_helpers import fold_subjects, read_back
from datasets_tools import synth
from datasets_tools.cli import main
from datasets_tools.convert import FrameOptions, convert
from datasets_tools.faces import haar_unavailable_reason
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
        points = got["landmarks"]
        assert points.shape[1:] == (len(truth.landmark_names), 2)
        assert np.isfinite(points).all() and points.min() >= 0 and points.max() <= 24
    assert result.skips == [] and result.frames == sum(len(s.frame_no) for s in truth.sequences)


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
    assert main(["synth", "--layout", "bp4d", str(raw), "--frame-size", "3x3"]) == 1
    assert "frame size 3x3" in capsys.readouterr().err


def test_disfa_right_camera_uses_its_own_landmarks(tmp_path):
    truth = synth.generate("disfa", tmp_path / "raw", subjects=["SN003", "SN006", "SN001"], frames=4,
                           frame_size="48x64", seed=2, progress=False)
    left, right = tmp_path / "left.h5", tmp_path / "right.h5"
    for camera, out in (("left", left), ("right", right)):
        convert("disfa", tmp_path / "raw", out, FrameOptions(image_size=24, crop="landmarks"), camera=camera,
                progress=False)
        assert verify(out, progress=False) == []
    with h5py.File(left, "r") as a, h5py.File(right, "r") as b:
        assert b.attrs["camera"] == "right"
        np.testing.assert_array_equal(a["frames/label"][:], b["frames/label"][:])
        assert np.isfinite(b["frames/landmarks"][:]).all()
        assert b["frames/landmarks"][:].min() >= 0 and b["frames/landmarks"][:].max() <= 24
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
