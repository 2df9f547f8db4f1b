"""End-to-end BP4D conversion of tiny trees: labels, frames, subjects, folds, images, resume."""

import json

import h5py
import numpy as np
import pytest

from convert_helpers import fold_subjects, frame_grey, make_occurrence_tree, read_back
from datasets_tools.cli import main
from datasets_tools.convert import FrameOptions, convert
from datasets_tools.folds import BP4D_TEST_FOLDS, distinct_combinations, fold_statistics
from datasets_tools.verify import verify

SUBJECTS = ["F004", "F003", "F001", "M002"]  # fold1, fold2, fold3, fold2 test subjects


@pytest.fixture(scope="module")
def bp4d_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("bp4d_raw")
    truth = make_occurrence_tree(root, SUBJECTS, tasks=("T1", "T8"), frames_per_sequence=7, intensity=True,
                                 landmarks=True)
    return root, truth


@pytest.fixture(scope="module")
def converted(bp4d_tree, tmp_path_factory):
    root, _ = bp4d_tree
    out = tmp_path_factory.mktemp("bp4d_h5") / "bp4d.h5"
    convert("bp4d", root, out, FrameOptions(image_size=16), progress=False)
    return out


def test_labels_frames_subjects_images_match_truth(bp4d_tree, converted):
    _, truth = bp4d_tree
    stored = read_back(converted)
    assert sorted(stored) == sorted(truth)
    for name, expected in truth.items():
        got = stored[name]
        np.testing.assert_array_equal(got["frame_no"], expected["frame_no"])
        np.testing.assert_array_equal(got["label"], expected["label"])
        np.testing.assert_array_equal(got["intensity"], expected["intensity"])
        assert got["subject"] == expected["subject"] and got["frame_subject"] == {expected["subject"]}
        greys = np.array([frame_grey(int(f)) for f in expected["frame_no"]])
        assert np.abs(got["grey"] - greys).max() <= 3  # each image came from its own frame


def test_landmarks_mapped_into_stored_crop(bp4d_tree, converted):
    _, truth = bp4d_tree
    stored = read_back(converted)
    # 24 x 32 (w x h) frames, centre crop: square x 0..24, y 4..28, scaled by 16 / 24 as OpenCV
    # scales pixels (pixel centres at whole numbers: x -> (x + 0.5) * s - 0.5)
    for name, expected in truth.items():
        want = (expected["landmarks"] - np.array([0, 4], np.float32) + 0.5) * (16 / 24) - 0.5
        np.testing.assert_allclose(stored[name]["landmarks"], want, atol=1e-3)


def test_standard_folds_and_statistics(converted):
    folds = fold_subjects(converted)
    for (train, test), standard in zip(folds, BP4D_TEST_FOLDS):
        assert test == sorted(set(SUBJECTS) & set(standard))
        assert train == sorted(set(SUBJECTS) - set(test))
    with h5py.File(converted, "r") as f:
        assert f["folds"].attrs["split_source"].startswith("standard BP4D")
        label, subject = f["frames/label"][:], f["frames/subject"][:]
        names = [n.decode() for n in f["subjects/name"][:]]
        for k, (train, _) in enumerate(folds, start=1):
            rows = np.isin(subject, [names.index(s) for s in train])
            expected = fold_statistics(label[rows])
            np.testing.assert_allclose(f[f"folds/fold{k}/au_rate"][:], expected["au_rate"])
            np.testing.assert_allclose(f[f"folds/fold{k}/cooccurrence"][:], expected["cooccurrence"])
            assert f[f"folds/fold{k}"].attrs["num_train_frames"] == rows.sum()


def test_root_attributes(converted, bp4d_tree):
    with h5py.File(converted, "r") as f:
        assert f.attrs["schema_version"] == 2 and f.attrs["dataset"] == "BP4D" and f.attrs["labeled"]
        # the fixture's landmark files hold 5 points: stored, but of no known scheme
        assert f["frames/landmarks"].shape[1] == 5
        assert f.attrs["landmarks_source"] == "csv" and f.attrs["landmark_scheme"] == "unknown (5 points)"
        assert [a.decode() if isinstance(a, bytes) else a for a in f.attrs["au_names"]] == [
            "AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24"]
        assert list(f.attrs["image_size"]) == [16, 16] and f.attrs["crop"] == "center"
        assert f.attrs["label_rule"] == "occurrence codes, 9 = unknown"
        assert f.attrs["source_root"] == str(bp4d_tree[0])
    assert verify(converted, progress=False) == []


def test_workers_and_raw_format_give_the_same_frames(bp4d_tree, converted, tmp_path):
    root, _ = bp4d_tree
    parallel = tmp_path / "parallel.h5"
    convert("bp4d", root, parallel, FrameOptions(image_size=16), workers=2, progress=False)
    raw = tmp_path / "raw.h5"
    convert("bp4d", root, raw, FrameOptions(image_size=16, image_format="raw", crop="none"), progress=False)
    with h5py.File(converted, "r") as a, h5py.File(parallel, "r") as b, h5py.File(raw, "r") as c:
        for name in ("label", "frame_no", "subject", "sequence", "intensity", "landmarks"):
            np.testing.assert_array_equal(a[f"frames/{name}"][:], b[f"frames/{name}"][:])
        assert all(np.array_equal(x, y) for x, y in zip(a["frames/image"][:], b["frames/image"][:]))
        assert c["frames/image"].shape == (len(a["frames/label"]), 16, 16, 3)
        np.testing.assert_array_equal(a["frames/label"][:], c["frames/label"][:])
    assert verify(raw, progress=False) == []


def test_interrupted_conversion_resumes(bp4d_tree, converted, tmp_path):
    root, _ = bp4d_tree
    out = tmp_path / "resumed.h5"
    with pytest.raises(RuntimeError, match="injected failure"):
        convert("bp4d", root, out, FrameOptions(image_size=16), progress=False, fail_after_sequences=3)
    assert not out.exists()  # nothing that looks finished
    assert (tmp_path / "resumed.h5.partial").exists()
    result = convert("bp4d", root, out, FrameOptions(image_size=16), progress=False)
    assert result.resumed_sequences == 3
    assert not (tmp_path / "resumed.h5.partial").exists()
    with h5py.File(converted, "r") as a, h5py.File(out, "r") as b:
        for name in ("label", "frame_no", "subject", "sequence", "intensity"):
            np.testing.assert_array_equal(a[f"frames/{name}"][:], b[f"frames/{name}"][:])
        assert all(np.array_equal(x, y) for x, y in zip(a["frames/image"][:], b["frames/image"][:]))
    assert verify(out, progress=False) == []


def test_changed_options_restart_instead_of_resuming(bp4d_tree, tmp_path):
    root, _ = bp4d_tree
    out = tmp_path / "restart.h5"
    with pytest.raises(RuntimeError):
        convert("bp4d", root, out, FrameOptions(image_size=16), progress=False, fail_after_sequences=2)
    result = convert("bp4d", root, out, FrameOptions(image_size=20), progress=False)
    assert result.resumed_sequences == 0
    with h5py.File(out, "r") as f:
        assert len(f["frames/label"]) == 7 * 8
    assert verify(out, progress=False) == []


def test_damaged_partial_file_restarts(bp4d_tree, tmp_path):
    root, _ = bp4d_tree
    out = tmp_path / "damaged.h5"
    (tmp_path / "damaged.h5.partial").write_bytes(b"not an hdf5 file")
    result = convert("bp4d", root, out, FrameOptions(image_size=16), progress=False)
    assert result.resumed_sequences == 0 and result.frames == 7 * 8


def test_verify_catches_tampering(converted, tmp_path):
    broken = tmp_path / "broken.h5"
    broken.write_bytes(converted.read_bytes())
    with h5py.File(broken, "r+") as f:
        label = f["frames/label"]
        label[0] = np.where(label[0] == 1, 0, 1)  # statistics no longer match
        start = f["sequences/start"]
        start[1] = start[1] + 1
    problems = verify(broken, progress=False)
    assert any("statistics recomputed" in p for p in problems)
    assert any("contiguous" in p for p in problems)


def test_cli_stats_info_verify(converted, bp4d_tree, capsys):
    assert main(["stats", str(converted), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    _, truth = bp4d_tree
    labels = np.concatenate([t["label"] for t in truth.values()])
    assert stats["frames"] == len(labels) and stats["subjects"] == 4 and stats["sequences"] == 8
    assert stats["distinct_combinations"] == distinct_combinations(labels)
    known = labels >= 0
    assert stats["au_rate"]["AU1"] == pytest.approx((labels[:, 0] == 1).sum() / known[:, 0].sum(), abs=1e-6)
    assert [fold["test"]["subjects"] for fold in stats["folds"]] == [1, 2, 1]
    assert main(["stats", str(converted)]) == 0
    assert "distinct AU combinations" in capsys.readouterr().out
    assert main(["info", str(converted)]) == 0
    assert "/frames/label: int8" in capsys.readouterr().out
    assert main(["verify", str(converted), "--quiet", "--workers", "2"]) == 0


def test_cli_convert_report(bp4d_tree, tmp_path, capsys):
    root, _ = bp4d_tree
    out = tmp_path / "cli.h5"
    assert main(["convert", "bp4d", str(root), str(out), "--image-size", "12", "--workers", "1", "--quiet",
                 "--crop", "landmarks"]) == 0
    text = capsys.readouterr().out
    assert "wrote 56 frames (8 sequences, 4 subjects)" in text and "skipped 0 frame(s)" in text
    with h5py.File(out, "r") as f:
        assert f.attrs["crop"] == "landmarks" and f["frames/landmarks"].shape == (56, 5, 2)
        # landmark crops keep every point inside the stored image
        assert np.nanmin(f["frames/landmarks"][:]) >= 0 and np.nanmax(f["frames/landmarks"][:]) <= 12
