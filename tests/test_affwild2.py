"""Aff-Wild2 (ABAW) layout: a synthetic round trip, the official and k-fold splits, per-fold
statistics from training videos only, malformed annotation files, resume and atomic output."""

import json
from collections import Counter

import cv2
import h5py
import numpy as np
import pytest

from convert_helpers import fold_subjects, frame_grey, jpeg_bytes, read_back
from datasets_tools import affwild2, synth
from datasets_tools.cli import main
from datasets_tools.convert import FrameOptions, convert
from datasets_tools.errors import DatasetError
from datasets_tools.folds import fold_statistics
from datasets_tools.stats import compute_stats
from datasets_tools.verify import verify

# 7 videos, 9 sequences: videos 3 and 6 show two people (_left, _right); 3 and 7 are Validation_Set
VIDEOS = 7
OPTIONS = FrameOptions(image_size=16, crop="none")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("affwild2") / "raw"
    truth = synth.generate("affwild2", root, subjects=VIDEOS, frames=14, frame_size="32x32", seed=3, progress=False)
    return root, truth


@pytest.fixture(scope="module")
def official(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("official") / "affwild2.h5"
    return out, convert("affwild2", raw[0], out, OPTIONS, progress=False)


@pytest.fixture(scope="module")
def kfold(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("kfold") / "affwild2_kfold.h5"
    return out, convert("affwild2", raw[0], out, OPTIONS, progress=False, affwild2_split="kfold")


def images_of(seq) -> set:
    first, last = seq.image_frames
    return set(range(first, last + 1)) - set(seq.no_image)


def expected_frames(seq):
    """(frame numbers, labels) the converter must store: every annotation line with a face image."""
    keep = np.isin(seq.frame_no, sorted(images_of(seq)))
    return seq.frame_no[keep], seq.labels[keep]


def official_set(seq) -> str:
    return seq.label_file.split("/")[2]


def videos_in(truth, set_name) -> list:
    return sorted({seq.subject for seq in truth.sequences if official_set(seq) == set_name})


def note(result, text) -> int:
    return sum(count for message, count in result.notes.items() if text in message)


# ---- synthetic round trip ------------------------------------------------------------------

def test_synthetic_layout_has_every_case(raw):
    root, truth = raw
    names = [seq.name for seq in truth.sequences]
    assert {"3-30-1280x720_left", "3-30-1280x720_right", "6-30-1280x720_left"} <= set(names)
    assert len({len(seq.frame_no) for seq in truth.sequences}) > 1  # lengths vary
    assert videos_in(truth, "Validation_Set") == ["3-30-1280x720", "7-30-1280x720"]
    seq = truth.sequence("1-30-1280x720")
    lines = (root / seq.label_file).read_text().splitlines()
    assert lines[0] == "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"
    assert len(lines) == len(seq.frame_no) + 1
    faces = sorted((root / "cropped_aligned" / seq.name).iterdir())
    assert [p.name for p in faces] == [f"{f:05d}.jpg" for f in sorted(images_of(seq))]
    assert cv2.imread(str(faces[0])).shape == (32, 32, 3)
    assert not (root / "Landmarks").exists()
    unknown = np.concatenate([(s.labels < 0).all(1) for s in truth.sequences])
    assert unknown.any() and not unknown.all()


def test_every_annotated_frame_with_a_face_lands_with_its_labels(raw, official):
    _, truth = raw
    out, result = official
    stored = read_back(out)
    assert sorted(stored) == sorted(seq.name for seq in truth.sequences)
    stored_unknown = 0
    for seq in truth.sequences:
        frames, labels = expected_frames(seq)
        got = stored[seq.name]
        np.testing.assert_array_equal(got["frame_no"], frames)
        np.testing.assert_array_equal(got["label"], labels)  # -1 lines stay -1: unknown, never negatives
        assert got["subject"] == seq.subject == affwild2.video_of(seq.name)
        stored_unknown += int((got["label"] == -1).all(1).sum())
    assert stored_unknown > 0
    assert result.frames == sum(len(expected_frames(seq)[0]) for seq in truth.sequences)
    assert result.subjects == VIDEOS and result.sequences == len(truth.sequences)


def test_missing_faces_and_unannotated_images_are_counted_and_listed(raw, official):
    _, truth = raw
    out, result = official
    no_face = unannotated = unknown_kept = unknown_dropped = 0
    for seq in truth.sequences:
        has_image = np.isin(seq.frame_no, sorted(images_of(seq)))
        unknown = (seq.labels < 0).all(1)
        no_face += int((~has_image & ~unknown).sum())
        unannotated += sum(f > len(seq.frame_no) for f in images_of(seq))
        unknown_kept += int((unknown & has_image).sum())
        unknown_dropped += int((unknown & ~has_image).sum())
    kinds = Counter(skip.kind for skip in result.skips)
    assert kinds == {"no face image": no_face, "face image without annotation": unannotated}
    assert no_face >= len(truth.sequences) and unannotated >= len(truth.sequences)
    assert note(result, "stored with unknown labels") == unknown_kept > 0
    assert note(result, "without a face image: nothing to store") == unknown_dropped > 0
    listing = out.with_name(out.name + ".skipped.txt").read_text().splitlines()
    assert len(listing) == len(result.skips)
    with h5py.File(out, "r") as f:
        assert f.attrs["skipped_frames"] == len(result.skips)
        assert json.loads(f.attrs["skip_reasons"]) == dict(kinds)


def test_root_attributes_and_verify(raw, official):
    out, _ = official
    with h5py.File(out, "r") as f:
        assert f.attrs["dataset"] == "Aff-Wild2" and f.attrs["split_scheme"] == "official"
        assert [a.decode() if isinstance(a, bytes) else a for a in f.attrs["au_names"]] == [
            f"AU{a}" for a in (1, 2, 4, 6, 7, 10, 12, 15, 23, 24, 25, 26)]
        assert f.attrs["landmarks_source"] == "none" and "frames/landmarks" not in f
        assert f.attrs["crop"] == "none" and list(f.attrs["image_size"]) == [16, 16]
    assert verify(out, progress=False) == []


# ---- splits --------------------------------------------------------------------------------

def test_official_split_is_train_set_against_validation_set(raw, official):
    _, truth = raw
    out, _ = official
    (train, test), = fold_subjects(out)
    assert train == videos_in(truth, "Train_Set") and test == videos_in(truth, "Validation_Set")
    assert not set(train) & set(test)
    assert "3-30-1280x720" in test  # both people of a two-person video, one subject
    with h5py.File(out, "r") as f:
        assert f["folds"].attrs["num_folds"] == 1
        assert f["folds"].attrs["split_source"].startswith("official ABAW split")
    stats = compute_stats(out)
    assert stats["split_scheme"] == "official" and len(stats["folds"]) == 1
    assert stats["folds"][0]["test"]["subjects"] == 2


def test_kfold_split_folds_the_training_videos_only(raw, kfold):
    _, truth = raw
    out, result = kfold
    train_videos = videos_in(truth, "Train_Set")
    folds = fold_subjects(out)
    assert len(folds) == affwild2.DEFAULT_KFOLDS
    assert sorted(v for _, test in folds for v in test) == train_videos  # disjoint and covering
    for train, test in folds:
        assert test and not set(train) & set(test) and sorted(train + test) == train_videos
    stored = read_back(out)
    assert sorted(stored) == sorted(seq.name for seq in truth.sequences if official_set(seq) == "Train_Set")
    assert note(result, "Validation_Set video(s) not converted") == sum(
        len(seq.frame_no) for seq in truth.sequences if official_set(seq) == "Validation_Set")
    with h5py.File(out, "r") as f:
        assert f.attrs["split_scheme"] == "kfold"
        assert f["folds"].attrs["split_source"].startswith("5-fold cross-validation over the Train_Set videos")
    assert verify(out, progress=False) == []
    seeded = convert("affwild2", raw[0], out.with_name("seed7.h5"), OPTIONS, progress=False,
                     affwild2_split="kfold", affwild2_folds=3, folds_seed=7)
    assert "seed 7" in seeded.split_source and len(fold_subjects(out.with_name("seed7.h5"))) == 3


@pytest.mark.parametrize("which", ["official", "kfold"])
def test_fold_statistics_come_from_training_videos_only(which, request):
    out, _ = request.getfixturevalue(which)
    with h5py.File(out, "r") as f:
        label, subject = f["frames/label"][:], f["frames/subject"][:]
        names = [n.decode() for n in f["subjects/name"][:]]
        for k, (train, test) in enumerate(fold_subjects(out), start=1):
            rows = np.isin(subject, [names.index(s) for s in train])
            expected = fold_statistics(label[rows])
            for key, value in expected.items():
                np.testing.assert_allclose(f[f"folds/fold{k}/{key}"][:], value)
            assert f[f"folds/fold{k}"].attrs["num_train_frames"] == rows.sum()
            # with the test videos' labels the rates differ: the stored ones leave them out
            assert not np.allclose(fold_statistics(label)["au_rate"], f[f"folds/fold{k}/au_rate"][:])


def test_aubench_reads_the_one_fold_file(official):
    from aubench.data.h5file import AUFile
    out, _ = official
    file = AUFile(out)
    assert file.num_folds == 1 and file.dataset == "Aff-Wild2" and file.attrs["split_scheme"] == "official"
    train, test = file.rows(1, "train"), file.rows(1, "test")
    assert len(train) and len(test) and not np.intersect1d(train, test).size
    assert len(train) + len(test) == file.num_frames


# ---- hand-written trees: bad input, subjects, split errors -----------------------------------

def write_video(root, name, set_name, labels, images=None) -> None:
    """One annotation file and its face folder; ``images``: frame numbers with a face (default all
    annotation lines); each face a flat grey that encodes its frame number."""
    path = root.joinpath(*affwild2.ANNOTATION_DIR, set_name, f"{name}.txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(affwild2.annotation_text(labels))
    folder = root / affwild2.FACES_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    for frame in range(1, len(labels) + 1) if images is None else images:
        (folder / affwild2.face_file(frame)).write_bytes(jpeg_bytes(frame, 16, 16))


def small_tree(root, sets=(("a", "Train_Set"), ("b", "Train_Set"), ("c", "Validation_Set")), frames=5):
    rng = np.random.default_rng(0)
    for name, set_name in sets:
        write_video(root, name, set_name, rng.integers(0, 2, (frames, 12)).astype(np.int8))
    return root


def annotation(root, name, set_name="Train_Set"):
    return root.joinpath(*affwild2.ANNOTATION_DIR, set_name, f"{name}.txt")


def replace_line(number, text):
    def edit(content):
        lines = content.split("\n")
        lines[number - 1] = text
        return "\n".join(lines)
    return edit


@pytest.mark.parametrize("edit, line, message", [
    (lambda t: t.replace("AU4,", "AU5,", 1), 1, "unknown column 'AU5' (header cell 3)"),
    (lambda t: t.replace("AU10,", "AU1,", 1), 1, "column AU1 appears twice"),
    (lambda t: t.split("\n", 1)[1], 1, "no header line"),
    (replace_line(4, "0,1,0"), 4, "truncated row: expected 12 values, found 3"),
    (replace_line(3, "0,1,0,0,0,0,0,0,0,0,0,0,1"), 3, "too many values"),
    (replace_line(5, "0,0,2,0,0,0,0,0,0,0,0,0"), 5, "value '2' (AU4) is not -1, 0 or 1"),
    (replace_line(2, "0,0,0,0,0,0,0,0,0,0,0,x"), 2, "value 'x' (AU26) is not -1, 0 or 1"),
    (replace_line(3, ""), 3, "truncated row: expected 12 values, found 1"),  # never a silent shift
])
def test_malformed_annotation_file_is_an_error_naming_file_and_line(tmp_path, edit, line, message):
    root = small_tree(tmp_path / "raw")
    path = annotation(root, "b")
    path.write_text(edit(path.read_text()))
    with pytest.raises(DatasetError) as caught:
        convert("affwild2", root, tmp_path / "out.h5", OPTIONS, progress=False)
    assert caught.value.path == str(path) and caught.value.line == line
    assert message in str(caught.value)
    assert not (tmp_path / "out.h5").exists()


def test_cli_error_and_skip_bad(tmp_path, capsys):
    root = small_tree(tmp_path / "raw")
    path = annotation(root, "a")
    path.write_text(replace_line(3, "0,1,-2,0,0,0,0,0,0,0,0,0")(path.read_text()))
    out = tmp_path / "out.h5"
    assert main(["convert", "affwild2", str(root), str(out), "--quiet", "--workers", "1"]) == 2
    assert f"{path}, line 3: value '-2' (AU4) is not -1, 0 or 1" in capsys.readouterr().err
    result = convert("affwild2", root, out, OPTIONS, progress=False, skip_bad=True)
    assert [(s.sequence, s.frame_no, s.kind) for s in result.skips] == [("a", 2, "bad label row")]
    np.testing.assert_array_equal(read_back(out)["a"]["frame_no"], [1, 3, 4, 5])


def test_images_match_their_frames_and_unknown_lines(tmp_path):
    root = tmp_path / "raw"
    labels = np.zeros((6, 12), np.int8)
    labels[1] = 1
    labels[2:4] = -1  # not annotated: frame 3 has a face (stored, unknown), frame 4 none
    labels[5, :3] = -1  # partly unknown: stored as it is
    write_video(root, "a", "Train_Set", labels, images=[1, 2, 3, 5, 6, 7, 9])  # 5: annotated, 7 and 9: past
    write_video(root, "b", "Validation_Set", np.ones((2, 12), np.int8))
    result = convert("affwild2", root, tmp_path / "out.h5", OPTIONS, progress=False)
    got = read_back(tmp_path / "out.h5")["a"]
    np.testing.assert_array_equal(got["frame_no"], [1, 2, 3, 5, 6])
    np.testing.assert_array_equal(got["label"], labels[[0, 1, 2, 4, 5]])
    assert np.abs(got["grey"] - [frame_grey(f) for f in (1, 2, 3, 5, 6)]).max() <= 3
    assert sorted((s.frame_no, s.kind) for s in result.skips) == [
        (7, "face image without annotation"), (9, "face image without annotation")]
    assert note(result, "stored with unknown labels") == 1 and note(result, "nothing to store") == 1
    labels[3] = 0  # frame 4 annotated now, still without a face (the faces written before stay)
    write_video(root, "a", "Train_Set", labels, images=[])
    result = convert("affwild2", root, tmp_path / "out2.h5", OPTIONS, progress=False)
    assert [(s.frame_no, s.kind) for s in result.skips if s.frame_no == 4] == [(4, "no face image")]


def test_two_people_of_one_video_in_different_sets_get_their_own_subjects(tmp_path):
    root = small_tree(tmp_path / "raw", sets=(("a", "Train_Set"), ("c_left", "Train_Set"),
                                               ("c_right", "Validation_Set"), ("d_left", "Validation_Set"),
                                               ("d_right", "Validation_Set")))
    out = tmp_path / "out.h5"
    result = convert("affwild2", root, out, OPTIONS, progress=False)
    stored = read_back(out)
    assert {name: seq["subject"] for name, seq in stored.items()} == {
        "a": "a", "c_left": "c_left", "c_right": "c_right", "d_left": "d", "d_right": "d"}
    assert note(result, "lie in different sets") == 10
    assert fold_subjects(out) == [(["a", "c_left"], ["c_right", "d"])]
    assert verify(out, progress=False) == []


def test_split_needs_and_other_tracks(tmp_path):
    root = small_tree(tmp_path / "raw", sets=(("a", "Train_Set"), ("b", "Train_Set")))
    with pytest.raises(DatasetError, match="no Validation_Set/ folder"):
        convert("affwild2", root, tmp_path / "o.h5", OPTIONS, progress=False)
    with pytest.raises(DatasetError, match="2 Train_Set video\\(s\\) cannot make 5 folds"):
        convert("affwild2", root, tmp_path / "o.h5", OPTIONS, progress=False, affwild2_split="kfold")
    (root / affwild2.FACES_DIR / "expr_only").mkdir()  # a video of another ABAW track
    (root / affwild2.FACES_DIR / "expr_only" / "00001.jpg").write_bytes(jpeg_bytes(1))
    result = convert("affwild2", root, tmp_path / "o.h5", OPTIONS, progress=False, affwild2_split="kfold",
                     affwild2_folds=2)
    assert fold_subjects(tmp_path / "o.h5") == [(["b"], ["a"]), (["a"], ["b"])] or \
        fold_subjects(tmp_path / "o.h5") == [(["a"], ["b"]), (["b"], ["a"])]
    assert note(result, "1 face folder(s) in cropped_aligned/ have no AU annotation file") == 1


def test_verify_refuses_an_inconsistent_split_scheme(official, tmp_path):
    out, _ = official
    copy = tmp_path / "copy.h5"
    copy.write_bytes(out.read_bytes())
    with h5py.File(copy, "r+") as f:
        f.attrs["split_scheme"] = "kfold"
    assert any("cross-validation split needs at least 2 folds" in p for p in verify(copy, progress=False))


# ---- resume, atomic output, command line -----------------------------------------------------

def test_interrupted_conversion_resumes_to_the_same_file(raw, official, tmp_path):
    out = tmp_path / "resumed.h5"
    with pytest.raises(RuntimeError, match="injected failure"):
        convert("affwild2", raw[0], out, OPTIONS, progress=False, fail_after_sequences=3)
    assert not out.exists() and (tmp_path / "resumed.h5.partial").exists()
    result = convert("affwild2", raw[0], out, OPTIONS, progress=False)
    assert result.resumed_sequences == 3 and not (tmp_path / "resumed.h5.partial").exists()
    assert [str(s) for s in result.skips] == [str(s) for s in official[1].skips]
    with h5py.File(official[0], "r") as a, h5py.File(out, "r") as b:
        for name in ("label", "frame_no", "subject", "sequence"):
            np.testing.assert_array_equal(a[f"frames/{name}"][:], b[f"frames/{name}"][:])
        assert all(np.array_equal(x, y) for x, y in zip(a["frames/image"][:], b["frames/image"][:]))
    with pytest.raises(DatasetError, match="already exists"):
        convert("affwild2", raw[0], out, OPTIONS, progress=False)


def test_cli_synth_convert_verify_stats(tmp_path, capsys):
    raw = tmp_path / "raw"
    assert main(["synth", "--layout", "affwild2", str(raw), "--subjects", "4", "--frames", "6",
                 "--frame-size", "32x32", "--quiet"]) == 0
    out = tmp_path / "a.h5"
    assert main(["convert", "affwild2", str(raw), str(out), "--workers", "1", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "folds: official ABAW split: train on Train_Set (3 videos), test on Validation_Set (1 videos)" in text
    assert "no face image" in text and "face image without annotation" in text
    with h5py.File(out, "r") as f:  # the defaults for pre-aligned faces: no re-crop, stored at 112 px
        assert f.attrs["crop"] == "none" and list(f.attrs["image_size"]) == [112, 112]
    assert main(["verify", str(out), "--quiet", "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["dataset"] == "Aff-Wild2" and stats["split_scheme"] == "official"
    assert main(["synth", "--layout", "affwild2", str(tmp_path / "r2"), "--frame-size", "32x48"]) == 2
    assert "square" in capsys.readouterr().err
