"""The datasets' own landmark files: BP4D's 2DFeatures (MATLAB v7.3), BP4D+'s (MATLAB v5) and
DISFA's Landmark_Points, written by the synthetic generator in those layouts. Aligned crops made
from them, frame offsets, lost and flagged frames under --no-face, malformed files."""

import shutil

import cv2
import h5py
import numpy as np
import pytest
import scipy.io

from datasets_tools import synth
from datasets_tools.cli import main
from datasets_tools.convert import FrameOptions, convert
from datasets_tools.errors import DatasetError
from datasets_tools.landmark_files import BAD_LANDMARKS, NO_LANDMARKS, NO_LANDMARKS_KEPT
from datasets_tools.landmarks import (BP4D_49, CANONICAL_LEFT_EYE, CANONICAL_RIGHT_EYE, DISFA_66, NUM_POINTS,
                                      eye_centres)
from datasets_tools.verify import verify

SIZE = 64
FRAME_SIZE = "96x120"
SOURCES = {"bp4d": "bp4d-2dfeatures-v7.3", "bp4d-plus": "bp4d-2dfeatures-v5", "disfa": "disfa-landmark-points"}
TREES = {"bp4d": {"subjects": ["F001", "F003", "F004"], "tasks": ["T1"]},
         "bp4d-plus": {"subjects": ["F006", "F046", "F078"], "tasks": ["T1"], "zip_images": False},
         "disfa": {"subjects": ["SN003", "SN006", "SN001"]}}
ALIGN = FrameOptions(image_size=SIZE, crop="align", image_format="raw")


def generate(layout, root, frames=5, **kw):
    return synth.generate(layout, root, frames=frames, frame_size=FRAME_SIZE, seed=1, progress=False,
                          **{**TREES[layout], **kw})


def image_path(root, truth, seq, frame):
    return root / seq.image_source / synth._frame_name(int(frame), seq.zero_pad)


def videos_to_image_folders(root):
    """DISFA: the left camera's video frames as Images_LeftCamera/SNxxx/<k>.png (k from 0), the
    videos removed, so that a test can paint on frames."""
    for video in sorted((root / "Videos_LeftCamera").iterdir()):
        folder = root / "Images_LeftCamera" / video.name[len("LeftVideo"):len("LeftVideo") + 5]
        folder.mkdir(parents=True)
        capture = cv2.VideoCapture(str(video))
        k = 0
        while True:
            ok, image = capture.read()
            if not ok:
                break
            cv2.imwrite(str(folder / f"{k}.png"), image)
            k += 1
        capture.release()
    shutil.rmtree(root / "Videos_LeftCamera")


def lossless_frames(root, layout, truth):
    """Every coded frame as a PNG file (the JPEG replaced; DISFA: the video's frames as image
    folders), so that what a test paints on a frame is all that changes in it.
    -> {(sequence, label frame): image file}."""
    if layout == "disfa":
        videos_to_image_folders(root)
    files = {}
    for seq in truth.sequences:
        for frame in seq.frame_no:
            if layout == "disfa":
                files[seq.name, int(frame)] = root / "Images_LeftCamera" / seq.subject / f"{frame - 1}.png"
                continue
            jpeg = image_path(root, truth, seq, frame)
            files[seq.name, int(frame)] = jpeg.with_suffix(".png")
            cv2.imwrite(str(jpeg.with_suffix(".png")), cv2.imread(str(jpeg)))
            jpeg.unlink()
    return files


def true_points(csv_root, truth):
    """{(sequence, frame): the 68 drawn points} from the twin tree written with the old CSV layout."""
    points = {}
    for seq in truth.sequences:
        table = np.loadtxt(csv_root / "Landmarks" / f"{seq.name.replace('/', '_')}.csv", delimiter=",", skiprows=1)
        for row in table:
            points[seq.name, int(row[0])] = row[1:].reshape(NUM_POINTS, 2)
    return points


def change_centroid(with_dots, without):
    """(x, y) of the brightness-weighted centre of what the dots changed."""
    change = np.abs(with_dots.astype(np.float64) - without.astype(np.float64)).sum(-1)
    ys, xs = np.mgrid[0:change.shape[0], 0:change.shape[1]]
    assert change.sum() > 100, "the painted dot did not reach the crop"
    return np.array([(change * xs).sum(), (change * ys).sum()]) / change.sum()


@pytest.mark.parametrize("layout", sorted(TREES))
def test_aligned_crops_put_the_eyes_where_the_template_says(tmp_path, layout):
    """Red dots painted at the drawn eye centres of every coded frame land, in the crops --crop
    align makes from the dataset's own landmark files, where the canonical template puts the eyes:
    the files' points belong to their frames and map into the 68-point scheme the right way."""
    truth = generate(layout, tmp_path / "clean")
    generate(layout, tmp_path / "csv", landmark_files="csv")   # the same faces; all 68 points as truth
    files = lossless_frames(tmp_path / "clean", layout, truth)
    shutil.copytree(tmp_path / "clean", tmp_path / "dotted")
    points = true_points(tmp_path / "csv", truth)
    for key, clean in files.items():
        path = tmp_path / "dotted" / clean.relative_to(tmp_path / "clean")
        image = cv2.imread(str(path))
        for centre in eye_centres(points[key].astype(np.float32)):
            x, y = np.round(centre).astype(int)
            image[y - 1:y + 2, x - 1:x + 2] = (0, 0, 255)
        cv2.imwrite(str(path), image)
    crops = {}
    for tree in ("clean", "dotted"):
        result = convert(layout, tmp_path / tree, tmp_path / f"{tree}.h5", ALIGN, progress=False)
        assert result.skips == [] and result.notes == {}
        with h5py.File(tmp_path / f"{tree}.h5") as f:
            crops[tree] = f["frames/image"][:]
            assert f.attrs["landmarks_source"] == SOURCES[layout] and f.attrs["landmark_scheme"] == "ibug68"
            assert f.attrs["crop"] == "align" and f.attrs["no_face_frames"] == 0
            stored = f["frames/landmarks"][:]
    assert verify(tmp_path / "dotted.h5", progress=False) == []
    assert len(stored) == sum(len(s.frame_no) for s in truth.sequences)
    present = list(DISFA_66 if layout == "disfa" else BP4D_49)
    assert np.isfinite(stored[:, present]).all()
    assert np.isnan(np.delete(stored, present, axis=1)).all()
    want = [np.array(CANONICAL_LEFT_EYE) * SIZE - 0.5, np.array(CANONICAL_RIGHT_EYE) * SIZE - 0.5]
    tolerance = 0.04 * SIZE   # a similarity through eyes and mouth: the mouth takes up the residual
    for centres, canonical in zip(eye_centres(stored), want):
        np.testing.assert_allclose(centres, np.broadcast_to(canonical, centres.shape), atol=tolerance)
    half = SIZE // 2   # the image-left eye's dot in the left half of the crop, the other in the right
    for clean, dotted in zip(crops["clean"], crops["dotted"]):
        for start, canonical in zip((0, half), want):
            part = np.s_[:, start:start + half]
            found = change_centroid(dotted[part], clean[part]) + [start, 0]
            np.testing.assert_allclose(found, canonical, atol=tolerance)


@pytest.fixture
def disfa_tree(tmp_path):
    root = tmp_path / "raw"
    truth = generate("disfa", root, frames=30)
    return root, truth


def lm_file(root, subject, index):
    return root / "Landmark_Points" / subject / "tmp_frame_lm" / f"{subject}_{index:04d}_lm.mat"


def test_disfa_l0_named_files_take_their_offset(disfa_tree, tmp_path, capsys):
    """Some DISFA subjects name their files l0NNNN_lm.mat, with a base public readers disagree on.
    Numbered from 1 here: read as from 0 they disagree with the video, which the conversion says
    in one line naming file and frame; --landmarks-offset SN001=1 reads them right."""
    root, truth = disfa_tree
    reference = tmp_path / "reference.h5"
    convert("disfa", root, reference, ALIGN, progress=False)
    folder = root / "Landmark_Points" / "SN001" / "tmp_frame_lm"
    for k in range(30):
        lm_file(root, "SN001", k).rename(folder / f"l0{k + 1:04d}_lm.mat")
    with pytest.raises(DatasetError) as error:
        convert("disfa", root, tmp_path / "no_offset.h5", ALIGN, progress=False)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{folder / 'l00000_lm.mat'} (frame 1, no such file): ")
    assert "cover frames 2..31, but image frame 1 lies outside them" in message
    assert "--landmarks-offset SN001=N" in message
    out = tmp_path / "offset.h5"
    result = convert("disfa", root, out, ALIGN, landmarks_offset={"SN001": 1}, progress=False)
    assert result.skips == []
    assert any(note.startswith("SN001: landmark files named l0NNNN_lm.mat") for note in result.notes)
    with h5py.File(reference) as a, h5py.File(out) as b:
        np.testing.assert_array_equal(a["frames/landmarks"][:], b["frames/landmarks"][:])
        np.testing.assert_array_equal(a["frames/image"][:], b["frames/image"][:])
    # the command line: NAME=N, and a value that is neither N nor NAME=N
    cli_out = tmp_path / "cli.h5"
    assert main(["convert", "disfa", str(root), str(cli_out), "--crop", "align", "--image-size", "32",
                 "--landmarks-offset", "SN001=1", "--workers", "1", "--quiet"]) == 0
    assert "note: SN001: landmark files named l0NNNN_lm.mat" in capsys.readouterr().out
    assert main(["convert", "disfa", str(root), str(tmp_path / "x.h5"), "--landmarks-offset", "SN001=one"]) == 2
    assert "--landmarks-offset 'SN001=one': expected N or NAME=N" in capsys.readouterr().err
    with pytest.raises(DatasetError, match="--landmarks-offset SN099=...: no sequence or subject of that name"):
        convert("disfa", root, tmp_path / "y.h5", ALIGN, landmarks_offset={"SN099": 1}, progress=False)
    with pytest.raises(DatasetError, match="--landmarks detect with --landmarks-offset"):
        convert("disfa", root, tmp_path / "z.h5", FrameOptions(landmarks="detect"), landmarks_offset={"": 1},
                progress=False)


def bad_frames(root):
    """SN001: frame 10 jumps (its points shrunk into a corner of the frame), frame 20 is empty,
    frame 25 has points outside the frame (its face drawn three times as large about its centre)."""
    def edit(frame, change):
        path = lm_file(root, "SN001", frame - 1)
        scipy.io.savemat(path, {"pts": change(scipy.io.loadmat(path)["pts"])})

    edit(10, lambda p: 0.2 * (p - p.mean(0)) + [8, 8])
    edit(20, lambda p: np.zeros((0, 0)))
    edit(25, lambda p: 3 * (p - p.mean(0)) + p.mean(0))
    return {10: "the face box jumps", 20: "empty landmark entry", 25: "points outside the frame"}


@pytest.mark.parametrize("policy", ["skip", "keep"])
def test_lost_and_flagged_frames_follow_no_face(disfa_tree, tmp_path, policy):
    root, truth = disfa_tree
    bad = bad_frames(root)
    out = tmp_path / "out.h5"
    result = convert("disfa", root, out, FrameOptions(image_size=SIZE, crop="align", no_face=policy),
                     progress=False)
    listed = result.skips if policy == "skip" else result.no_face_kept
    assert [(s.sequence, s.frame_no) for s in listed] == [("SN001", f) for f in bad]
    assert {s.kind for s in listed} == {NO_LANDMARKS if policy == "skip" else NO_LANDMARKS_KEPT}
    for skip, reason in zip(listed, bad.values()):
        assert reason in skip.detail and "SN001_" in skip.detail   # the landmark file, named
    assert result.notes.get("SN001: landmark frames flagged bad: the face box jumps by more than its size "
                            "(treated as frames without landmarks)") == 1
    assert result.notes.get("SN001: landmark frames flagged bad: points outside the frame (treated as frames "
                            "without landmarks)") == 1
    listing = result.skipped_listing.read_text()
    assert all(f"SN001 frame {f}: " in listing for f in bad)
    with h5py.File(out) as f:
        assert f.attrs["no_face_frames"] == 3 and f.attrs["no_face_policy"] == policy
        rows = f["frames/sequence"][:] == [n.decode() for n in f["sequences/name"][:]].index("SN001")
        frame_no, points = f["frames/frame_no"][rows], f["frames/landmarks"][rows]
    lost = np.isin(frame_no, list(bad))
    if policy == "skip":
        assert not lost.any() and len(frame_no) == 27 and result.frames == 3 * 30 - 3
    else:
        assert lost.sum() == 3 and np.isnan(points[lost]).all() and result.frames == 90
        assert result.notes["align: no landmarks for the frame, centre crop used"] == 3
    assert np.isfinite(points[~lost][:, list(DISFA_66)]).all()
    assert verify(out, progress=False) == []


def test_without_a_landmark_crop_such_frames_are_kept_and_listed(disfa_tree, tmp_path):
    root, _ = disfa_tree
    bad = bad_frames(root)
    lm_file(root, "SN003", 4).unlink()                     # a frame without a landmark file
    result = convert("disfa", root, tmp_path / "out.h5", FrameOptions(image_size=32), progress=False)
    assert result.skips == [] and result.frames == 90
    assert [(s.sequence, s.frame_no) for s in result.no_face_kept] == [("SN001", f) for f in bad] + [("SN003", 5)]
    missing = result.no_face_kept[-1].detail
    assert "no landmark entry" in missing and "SN003_0004_lm.mat (frame 5, no such file)" in missing
    with h5py.File(tmp_path / "out.h5") as f:
        assert f.attrs["no_face_policy"] == "keep" and f.attrs["no_face_frames"] == 4


def test_a_lost_bp4d_frame_is_an_empty_reference(tmp_path):
    """BP4D marks a frame its tracker lost with an empty array: through h5py a tiny dataset."""
    truth = generate("bp4d", tmp_path / "raw")
    seq = truth.sequences[0]
    lost = int(seq.frame_no[2])
    with h5py.File(tmp_path / "raw" / "2DFeatures" / f"{seq.subject}_{seq.task}.mat", "r+") as f:
        pred = f["fit/pred"]
        pred[lost - 1, 0] = pred[0, 0]   # fit(1) is empty: no image before the coded frames' margin
    result = convert("bp4d", tmp_path / "raw", tmp_path / "out.h5", ALIGN, progress=False)
    assert [(s.sequence, s.frame_no, s.kind) for s in result.skips] == [(seq.name, lost, NO_LANDMARKS)]
    assert "empty landmark entry (the tracker lost the face)" in result.skips[0].detail
    assert f"frame {lost} (fit({lost}))" in result.skips[0].detail


# ---- malformed files ------------------------------------------------------------------------------

def test_a_file_without_fit_is_named_or_skipped(tmp_path):
    generate("bp4d", tmp_path / "raw", tasks=["T1", "T2"])
    path = tmp_path / "raw" / "2DFeatures" / "F003_T1.mat"
    with h5py.File(path, "r+") as f:
        f.move("fit", "fits")
    with pytest.raises(DatasetError) as error:
        convert("bp4d", tmp_path / "raw", tmp_path / "out.h5", ALIGN, progress=False)
    assert str(error.value) == (f"{path}: no variable 'fit' (the file holds: fits) (use --skip-bad to skip such "
                                f"frames)")
    result = convert("bp4d", tmp_path / "raw", tmp_path / "out.h5", ALIGN, skip_bad=True, progress=False)
    assert [(s.sequence, s.kind) for s in result.skips] == [("F003/T1", BAD_LANDMARKS)] * 5
    assert result.frames == 25 and result.sequences == 5
    assert result.notes["F003/T1: every frame skipped, sequence not stored"] == 1


def test_an_entry_of_another_shape_is_named_with_its_frame(tmp_path):
    truth = generate("bp4d-plus", tmp_path / "raw")
    seq = truth.sequence("F046/T1")
    path = tmp_path / "raw" / "2DFeatures" / "F046_T1.mat"
    fit = scipy.io.loadmat(path)["fit"]
    k = int(np.flatnonzero([int(e["frame"][0, 0]) == seq.frame_no[1] for e in fit[0]])[0])
    fit[0, k]["pts_2d"] = np.zeros((48, 2))
    scipy.io.savemat(path, {"fit": fit})
    with pytest.raises(DatasetError, match=rf"F046_T1\.mat, frame {seq.frame_no[1]} \(fit\({k + 1}\)\): pts_2d is "
                                           rf"48 x 2, expected 49 x 2 \[x y\] or empty \(use --skip-bad"):
        convert("bp4d-plus", tmp_path / "raw", tmp_path / "out.h5", ALIGN, progress=False)
    result = convert("bp4d-plus", tmp_path / "raw", tmp_path / "out.h5", ALIGN, skip_bad=True, progress=False)
    assert [(s.sequence, s.frame_no, s.kind) for s in result.skips] == [("F046/T1", seq.frame_no[1], BAD_LANDMARKS)]


def test_a_disfa_file_without_pts_is_named(disfa_tree, tmp_path, capsys):
    root, _ = disfa_tree
    path = lm_file(root, "SN006", 2)
    scipy.io.savemat(path, {"points": np.zeros((66, 2))})
    assert main(["convert", "disfa", str(root), str(tmp_path / "out.h5"), "--workers", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (f"datasets_tools convert: error: {path} (frame 3): no numeric variable 'pts' (the file holds: "
                   f"points) (use --skip-bad to skip such frames)\n")


def test_fewer_entries_than_images_is_a_disagreement(tmp_path):
    truth = generate("bp4d", tmp_path / "raw")
    seq = truth.sequence("F001/T1")
    path = tmp_path / "raw" / "2DFeatures" / "F001_T1.mat"
    with h5py.File(path, "r+") as f:   # the last two frames' elements gone
        for name in ("pred", "pose"):
            refs = f["fit"][name][:-2]
            del f["fit"][name]
            f["fit"].create_dataset(name, data=refs)
    last = seq.image_frames[1]
    with pytest.raises(DatasetError) as error:
        convert("bp4d", tmp_path / "raw", tmp_path / "out.h5", ALIGN, progress=False)
    assert str(error.value).startswith(f"{path}, frame {last - 1} (no fit element): the landmark entries cover frames "
                                       f"1..{last - 2}, but image frame {last - 1} lies outside them")
    assert "\n" not in str(error.value)


def test_entries_past_the_last_image_are_noted(disfa_tree, tmp_path):
    """Some DISFA subjects have one landmark file more than video frames: noted, not used."""
    root, _ = disfa_tree
    shutil.copy(lm_file(root, "SN003", 29), lm_file(root, "SN003", 30))
    result = convert("disfa", root, tmp_path / "out.h5", ALIGN, progress=False)
    assert result.skips == [] and result.frames == 90
    folder = root / "Landmark_Points" / "SN003" / "tmp_frame_lm"
    assert result.notes == {f"{folder}: landmark entries past the last image (frame 30), not used": 1}


def test_either_fit_form_reads_from_either_matlab_version(tmp_path):
    """The reader goes by what the file holds: BP4D's pred form saved as MATLAB v5, BP4D+'s frame /
    pts_2d form saved as v7.3, and a DISFA pts matrix saved as v7.3."""
    from datasets_tools.bp4d import read_2dfeatures
    from datasets_tools.raw import read_mat_matrix

    rng = np.random.default_rng(0)
    points = [rng.uniform(0, 100, (49, 2)) for _ in range(3)]
    fit = np.empty((1, 3), dtype=[("pred", object)])
    for k, value in enumerate([points[0], np.zeros((0, 0)), points[2]]):
        fit[0, k] = (value,)
    scipy.io.savemat(tmp_path / "v5.mat", {"fit": fit})
    track = read_2dfeatures(tmp_path / "v5.mat")
    assert track.kind == "bp4d-2dfeatures-v5" and track.frames.tolist() == [1, 2, 3]
    assert track.empty.tolist() == [False, True, False]
    np.testing.assert_allclose(track.points[2][list(BP4D_49)], points[2], rtol=1e-6)

    with h5py.File(tmp_path / "v73.mat", "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        frame_refs, point_refs = [], []
        for k, (frame, value) in enumerate(zip((11, 12, 13), points)):
            frame_refs.append(synth._matlab_double(refs, f"f{k}", np.array([[frame]])).ref)
            point_refs.append(synth._matlab_double(refs, f"p{k}", value).ref)
        group = f.create_group("fit")
        synth._matlab_struct(group, ["frame", "pts_2d"])
        group.create_dataset("frame", data=np.array(frame_refs, dtype=h5py.ref_dtype)[:, None])
        group.create_dataset("pts_2d", data=np.array(point_refs, dtype=h5py.ref_dtype)[:, None])
        synth._matlab_double(f, "pts", points[1])
    track = read_2dfeatures(tmp_path / "v73.mat")
    assert track.kind == "bp4d-2dfeatures-v7.3" and track.frames.tolist() == [11, 12, 13] and not track.empty.any()
    np.testing.assert_allclose(track.points[1][list(BP4D_49)], points[1])
    np.testing.assert_allclose(read_mat_matrix(tmp_path / "v73.mat", "pts"), points[1])   # rows x columns
    with pytest.raises(DatasetError, match=r"v73\.mat: no numeric variable 'points' \(the file holds: fit, pts\)"):
        read_mat_matrix(tmp_path / "v73.mat", "points")
