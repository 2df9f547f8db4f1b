"""Synthetic AU dataset generator: renderer, temporal model, raw layouts, real-label replay,
determinism, CLI and learnability."""

import csv
import hashlib
import zipfile
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import scipy.io

from datasets_tools import face_render as fr
from datasets_tools import synth
from datasets_tools.bp4d import read_2dfeatures
from datasets_tools.disfa import read_landmark_points
from datasets_tools.landmarks import BP4D_49, DISFA_66

SMALL = (64, 80)  # frame size used by the layout tests (W, H)


def amounts(**aus):
    a = np.zeros(len(fr.RENDERED_AUS))
    for name, value in aus.items():
        a[fr.AU_INDEX[int(name[2:])]] = value
    return a


@pytest.fixture(scope="module")
def renderer():
    rng = np.random.default_rng(5)
    return fr.FaceRenderer(fr.make_identity(rng, female=True), 192, 192, rng)


def lm(renderer, **aus):
    _, points, _ = renderer.render(amounts(**aus), renderer.pose())
    return dict(zip(fr.LANDMARK_NAMES, points))


# ------------------------------------------------------------------------------------------
# Renderer

def test_every_au_of_every_layout_changes_the_picture(renderer):
    neutral, _, _ = renderer.render(amounts(), renderer.pose())
    coded = set()
    for layout in synth.LAYOUTS.values():
        coded |= set(layout.coded_aus)
    assert coded <= set(fr.RENDERED_AUS)
    for au in sorted(coded):
        img, _, _ = renderer.render(amounts(**{f"AU{au}": 1.0}), renderer.pose())
        changed = (np.abs(img.astype(int) - neutral.astype(int)).max(2) > 12).sum()
        assert changed > 30, f"AU{au} changes only {changed} pixels"


def test_aus_move_landmarks_the_right_way(renderer):
    base = lm(renderer)

    def dy(name, **aus):
        return lm(renderer, **aus)[name][1] - base[name][1]

    def dx_out(**aus):  # mouth corners moving apart (> 0) or together
        p = lm(renderer, **aus)
        return (p["mouth_right_corner"][0] - p["mouth_left_corner"][0]) - \
            (base["mouth_right_corner"][0] - base["mouth_left_corner"][0])

    assert dy("left_brow_0", AU1=1) < -3 and abs(dy("left_brow_4", AU1=1)) < abs(dy("left_brow_0", AU1=1))
    assert dy("right_brow_4", AU2=1) < -3 and abs(dy("right_brow_0", AU2=1)) < abs(dy("right_brow_4", AU2=1))
    assert dy("left_brow_0", AU4=1) > 3
    assert dy("left_eye_upper_inner", AU5=1) < -1
    assert dy("left_eye_lower_inner", AU6=1) < 0 and dy("left_eye_lower_inner", AU7=1) < 0
    assert dy("nose_left_ala", AU9=1) < -1
    assert dy("upper_lip_inner_1", AU10=1) < -2
    assert dy("mouth_left_corner", AU12=1) < -4 and dx_out(AU12=1) > 4
    assert dx_out(AU14=1) < 0
    assert dy("mouth_right_corner", AU15=1) > 4
    assert dy("lower_lip_inner_1", AU16=1) > 2
    assert dy("jaw_8", AU17=1) < 0
    assert dx_out(AU18=1) < -5 and dx_out(AU20=1) > 5 and dx_out(AU22=1) < -5
    thickness = lambda p: p["lower_lip_outer_2"][1] - p["upper_lip_outer_2"][1]  # noqa: E731
    assert thickness(lm(renderer, AU23=1)) < thickness(base) and thickness(lm(renderer, AU28=1)) < thickness(base)
    assert thickness(lm(renderer, AU24=1)) < thickness(base)
    gap = lambda p: p["lower_lip_inner_1"][1] - p["upper_lip_inner_1"][1]  # noqa: E731
    assert gap(lm(renderer, AU25=1)) > gap(base) + 2
    assert dy("jaw_8", AU26=1) > 5 and dy("jaw_8", AU27=1) > dy("jaw_8", AU26=1)


def test_intensity_controls_the_amount(renderer):
    moves = [lm(renderer, AU12=a)["mouth_right_corner"][1] for a in fr.intensity_to_amount([0, 1, 2, 3, 4, 5])]
    assert np.all(np.diff(moves) < 0)
    assert fr.intensity_to_amount(0) == 0 and fr.intensity_to_amount(5) == 1


def test_landmarks_follow_the_pose(renderer):
    a = amounts()
    _, p0, box0 = renderer.render(a, renderer.pose())
    _, p1, box1 = renderer.render(a, renderer.pose(dx=0.1))
    assert np.allclose(p1[:, 0] - p0[:, 0], 0.1 * renderer.base_scale, atol=0.2)
    assert np.allclose(box1[[0, 2]] - box0[[0, 2]], 0.1 * renderer.base_scale, atol=0.2)
    assert (box0[:2] <= p0.min(0)).all() and (box0[2:] >= p0.max(0)).all()
    assert p0.shape == (fr.NUM_LANDMARKS, 2) == (len(fr.LANDMARK_NAMES), 2)


def test_identities_differ():
    rng = np.random.default_rng(0)
    imgs = []
    for _ in range(2):
        r = fr.FaceRenderer(fr.make_identity(rng), 96, 96, rng)
        imgs.append(r.render(amounts(), r.pose())[0].astype(int))
    assert np.abs(imgs[0] - imgs[1]).mean() > 10


# ------------------------------------------------------------------------------------------
# Temporal model

def test_temporal_model_rates_and_cooccurrence():
    lay = synth.LAYOUTS["bp4d"]
    labels = []
    for subject in lay.subjects[:6]:
        for task in lay.tasks:
            labels.append(synth._plan_occurrence_sequence(lay, subject, task, 0, None, None).labels)
    lab = np.concatenate(labels).astype(float)
    lab[lab < 0] = np.nan
    col = {a: lay.coded_aus.index(a) for a in lay.coded_aus}
    rate = np.nanmean(lab, 0)
    for au in lay.benchmark_aus:  # real BP4D rates are 0.15..0.6
        assert 0.05 < rate[col[au]] < 0.75, (au, rate[col[au]])
    both = lambda a, b: np.nanmean(lab[lab[:, col[a]] == 1, col[b]])  # noqa: E731
    assert both(6, 12) > rate[col[12]] + 0.1      # smiles: 6 with 12
    assert both(1, 2) > rate[col[2]] + 0.1        # surprise: 1 with 2
    assert np.isnan(lab).any()                    # some unknown codes


def test_onset_apex_offset_is_smooth():
    rng = np.random.default_rng(0)
    x = synth.simulate_intensities(rng, 2000, "disfa")
    assert x.max() <= 5 and x.min() >= 0
    step = np.abs(np.diff(x, axis=0))
    assert step.max() < 2.5 and np.quantile(step[step > 0], 0.9) < 0.5   # ramps, not jumps
    assert (x.max(0) > 1).sum() > 8                 # many AUs occur


# ------------------------------------------------------------------------------------------
# Layouts

def read_csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_bp4d_layout(tmp_path):
    truth = synth.generate("bp4d", tmp_path, subjects=2, tasks=["T1", "T2"], frames=12, frame_size=SMALL,
                           seed=3, progress=False)
    assert [s.name for s in truth.sequences] == ["F001/T1", "F001/T2", "M001/T1", "M001/T2"]
    for s in truth.sequences:
        rows = read_csv_rows(tmp_path / "AUCoding" / "AU_OCC" / f"{s.subject}_{s.task}.csv")
        assert rows[0] == ["0"] + [str(a) for a in synth.OCC_HEADER_AUS]
        frames = np.array([int(r[0]) for r in rows[1:]])
        assert (frames == s.frame_no).all() and (np.diff(frames) == 1).all()
        codes = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
        assert set(np.unique(codes)) <= {0, 1, 9}
        assert (np.where(codes == 9, -1, codes) == s.labels).all()
        for au in synth.INTENSITY_AUS:
            lines = (tmp_path / "AU Intensity Codes3.0" / f"AU{au:02d}" / f"{s.subject}_{s.task}_AU{au:02d}.csv").read_text().split()
            inten = np.array([[int(v) for v in ln.split(",")] for ln in lines])
            assert (inten[:, 0] == s.frame_no).all()
            occ = codes[:, synth.OCC_HEADER_AUS.index(au)]
            assert ((inten[:, 1] == 9) == (occ == 9)).all()
            assert ((inten[:, 1] >= 1) == (occ == 1))[occ != 9].all()
        folder = tmp_path / "2D+" / s.subject / s.task
        names = sorted(p.name for p in folder.iterdir())
        numbers = sorted(int(n.split(".")[0]) for n in names)
        assert numbers == list(range(s.image_frames[0], s.image_frames[1] + 1))
        assert numbers[0] < s.frame_no[0] and numbers[-1] > s.frame_no[-1]   # uncoded margins
        img = cv2.imread(str(folder / synth._frame_name(int(s.frame_no[0]), s.zero_pad)))
        assert img.shape == (SMALL[1], SMALL[0], 3)
        # 2DFeatures as BP4D ships them: fit(k) for frames 1..last image, empty before the first image
        track = read_2dfeatures(tmp_path / "2DFeatures" / f"{s.subject}_{s.task}.mat")
        assert track.kind == "bp4d-2dfeatures-v7.3"
        assert track.frames.tolist() == list(range(1, numbers[-1] + 1))
        assert track.frames[~track.empty].tolist() == numbers
        pts = track.points[~track.empty][:, list(BP4D_49)]
        assert np.isfinite(pts).all() and (pts >= -5).all()
        assert (pts[..., 0] <= SMALL[0] + 5).all() and (pts[..., 1] <= SMALL[1] + 5).all()
        assert s.face_box.shape == (len(s.frame_no), 4)
    assert not (tmp_path / "Landmarks").exists()
    # The truth file holds what generate returned.
    loaded = synth.SynthTruth.load(tmp_path)
    assert loaded.au_numbers == truth.au_numbers and len(loaded.sequences) == len(truth.sequences)
    for a, b in zip(loaded.sequences, truth.sequences):
        assert (a.labels == b.labels).all() and (a.intensity == b.intensity).all()
        assert (a.frame_no == b.frame_no).all() and np.allclose(a.face_box, b.face_box, atol=0.01)


def test_bp4d_zero_padding_varies_and_unknown_codes_present(tmp_path):
    truth = synth.generate("bp4d", tmp_path, subjects=4, frames=40, frame_size=SMALL, images=False,
                           progress=False)
    assert len({s.zero_pad for s in truth.sequences}) >= 2
    assert any((s.labels == -1).any() for s in truth.sequences)
    padded = [s for s in truth.sequences if s.zero_pad == 4 and s.frame_no[0] < 1000]
    if padded:  # e.g. 0643.jpg
        s = padded[0]
        assert (tmp_path / "2D+" / s.subject / s.task / f"{s.frame_no[0]:04d}.jpg").exists()


def test_disfa_layout(tmp_path):
    truth = synth.generate("disfa", tmp_path, subjects=2, frames=30, frame_size=SMALL, progress=False)
    assert [s.name for s in truth.sequences] == ["SN001", "SN002"]
    for s in truth.sequences:
        assert (s.frame_no == np.arange(1, 31)).all()
        for j, au in enumerate(synth.DISFA_AUS):
            lines = (tmp_path / "ActionUnit_Labels" / s.subject / f"{s.subject}_au{au}.txt").read_text().split()
            values = np.array([[int(v) for v in ln.split(",")] for ln in lines])
            assert (values[:, 0] == s.frame_no).all() and (values[:, 1] == s.intensity[:, j]).all()
        assert ((s.intensity >= 2) == (s.labels == 1)).all()
        for cam in ("Left", "Right"):
            cap = cv2.VideoCapture(str(tmp_path / f"Videos_{cam}Camera" / f"{cam}Video{s.subject}_comp.avi"))
            n = 0
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                assert frame.shape == (SMALL[1], SMALL[0], 3)
                n += 1
            assert n == 30
        # Landmark_Points as DISFA ships them: one v5 file per left-camera video frame, 0-based names
        folder = tmp_path / "Landmark_Points" / s.subject / "tmp_frame_lm"
        assert sorted(p.name for p in folder.iterdir()) == [f"{s.subject}_{k:04d}_lm.mat" for k in range(30)]
        pts = scipy.io.loadmat(folder / f"{s.subject}_0007_lm.mat")["pts"]
        assert pts.shape == (len(DISFA_66), 2) and pts.dtype == np.float64
        track = read_landmark_points(tmp_path / "Landmark_Points" / s.subject)
        assert track.frames.tolist() == list(range(1, 31)) and not track.empty.any()
        np.testing.assert_array_equal(track.points[7][list(DISFA_66)], pts)
    assert not (tmp_path / "Landmarks").exists()   # no right-camera landmarks: the dataset ships none


@pytest.mark.parametrize("layout", ["bp4d-plus", "mme"])
def test_bp4d_plus_layout_zip_and_extracted(tmp_path, layout):
    truth = synth.generate(layout, tmp_path / "zip", subjects=2, tasks=["T1", "T7"], frames=10,
                           frame_size=SMALL, progress=False)
    seq = truth.sequence("F001/T1")
    with zipfile.ZipFile(tmp_path / "zip" / "2D+3D" / "F001.zip") as z:
        members = set(z.namelist())
        data = z.read(f"F001/T1/{synth._frame_name(int(seq.frame_no[0]), seq.zero_pad)}")
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (SMALL[1], SMALL[0], 3)
    t1 = sorted(int(m.rsplit("/", 1)[1].split(".")[0]) for m in members if m.startswith("F001/T1/"))
    assert len(t1) > len(seq.frame_no) and t1[0] <= seq.frame_no[0] and t1[-1] > seq.frame_no[-1]
    assert any(m.startswith("F001/T2/") for m in members)            # an uncoded task
    # 2DFeatures as BP4D+ ships them: MATLAB v5, fit(k).frame / pts_2d / headPose per image frame
    features = tmp_path / "zip" / "2DFeatures" / "F001_T1.mat"
    assert scipy.io.matlab.matfile_version(features) == (1, 0)
    fit = scipy.io.loadmat(features)["fit"]
    assert fit.shape == (1, len(t1)) and set(fit.dtype.names) == {"frame", "pts_2d", "headPose"}
    assert [int(e["frame"][0, 0]) for e in fit[0]] == t1
    assert fit[0, 0]["pts_2d"].shape == (len(BP4D_49), 2) and fit[0, 0]["headPose"].shape == (1, 3)
    assert read_2dfeatures(features).frames.tolist() == t1
    assert not (tmp_path / "zip" / "2DFeatures" / "F001_T2.mat").exists()
    assert not (tmp_path / "zip" / "AUCoding" / "AU_OCC" / "F001_T2.csv").exists()
    assert (tmp_path / "zip" / "AU_INT" / "AU12" / "F001_T1_AU12.csv").exists()
    extracted = synth.generate(layout, tmp_path / "tree", subjects=2, tasks=["T1", "T7"], frames=10,
                               frame_size=SMALL, progress=False, zip_images=False)
    seq2 = extracted.sequence("F001/T1")
    assert (tmp_path / "tree" / "2D+3D" / "F001" / "T1" / synth._frame_name(int(seq2.frame_no[0]), seq2.zero_pad)).exists()
    # Same seed, same content whether zipped or extracted.
    assert (seq.labels == seq2.labels).all() and (seq.frame_no == seq2.frame_no).all()


def test_subject_lists():
    assert len(synth.LAYOUTS["bp4d"].subjects) == 41
    assert len(synth.LAYOUTS["disfa"].subjects) == 27
    plus = synth.LAYOUTS["bp4d-plus"].subjects
    assert len(plus) == 140 and plus[0] == "F001" and "F082" in plus and "M058" in plus
    mme = synth.LAYOUTS["mme"].subjects
    assert len(mme) == 233 and len(set(mme)) == 233 and "F140" in mme and "M093" in mme
    assert synth._pick_subjects(synth.LAYOUTS["bp4d"], 3) == ["F001", "F002", "M001"]


# ------------------------------------------------------------------------------------------
# Determinism, workers, placeholders, CLI, errors

def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix != ".zip":
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic_and_independent_of_workers(tmp_path):
    kw = dict(subjects=2, tasks=["T1", "T3"], frames=6, frame_size=SMALL, seed=11, progress=False)
    synth.generate("bp4d", tmp_path / "a", workers=1, **kw)
    synth.generate("bp4d", tmp_path / "b", workers=2, **kw)
    for root in ("a", "b"):  # the truth records its own root; compare everything else
        (tmp_path / root / synth.TRUTH_FILE).unlink()
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    other = synth.generate("bp4d", tmp_path / "c", **dict(kw, seed=12))
    assert any(s.frame_no[0] != 0 for s in other.sequences)
    (tmp_path / "c" / synth.TRUTH_FILE).unlink()
    assert tree_digest(tmp_path / "c") != tree_digest(tmp_path / "a")


def test_no_images_writes_placeholders(tmp_path):
    truth = synth.generate("bp4d", tmp_path, subjects=1, tasks=["T1"], frames=5, frame_size=SMALL,
                           images=False, progress=False)
    s = truth.sequences[0]
    files = sorted((tmp_path / "2D+" / "F001" / "T1").iterdir())
    assert len(files) == s.image_frames[1] - s.image_frames[0] + 1
    img = cv2.imread(str(files[0]))
    assert img.shape == (SMALL[1], SMALL[0], 3) and img.std() < 2   # uniform grey
    assert not truth.images and synth.SynthTruth.load(tmp_path).images is False
    assert (tmp_path / "2DFeatures" / "F001_T1.mat").exists()


def test_cli(tmp_path, capsys):
    from datasets_tools.command_line import OneLineParser

    parser = OneLineParser()  # it reads a positional OUT as --out
    synth.add_arguments(parser)
    args = parser.parse_args(["--layout", "disfa", str(tmp_path), "--subjects", "1", "--frames", "4",
                              "--frame-size", "64x48", "--seed", "2", "--no-images", "--quiet"])
    truth = synth.run(args)
    assert truth.frame_size == (64, 48) and truth.seed == 2 and len(truth.sequences) == 1
    assert "1 subjects" in capsys.readouterr().out
    assert synth.main(["--layout", "bp4d", str(tmp_path / "x"), "--frames", "2", "--subjects", "1",
                       "--tasks", "T8", "--frame-size", "48x48", "--quiet"]) == 0
    assert (tmp_path / "x" / "AUCoding" / "AU_OCC" / "F001_T8.csv").exists()


def test_expressiveness_scales_movements_not_labels(tmp_path):
    kw = dict(subjects=1, tasks=["T1"], frames=12, frame_size=SMALL, seed=3, progress=False)
    plain = synth.generate("bp4d", tmp_path / "plain", **kw)
    strong = synth.generate("bp4d", tmp_path / "strong", expressiveness=2.0, **kw)
    assert np.array_equal(plain.sequences[0].labels, strong.sequences[0].labels)
    assert np.array_equal(plain.sequences[0].intensity, strong.sequences[0].intensity)

    def landmarks(root):
        track = read_2dfeatures(root / "2DFeatures" / "F001_T1.mat")
        return track.points[~track.empty][:, list(BP4D_49)]

    # Same pose and identity, so landmarks move only with the AUs, and twice as far from neutral.
    rest = np.abs(landmarks(tmp_path / "plain") - landmarks(tmp_path / "strong")).max()
    assert rest > 0.5
    with pytest.raises(ValueError, match="expressiveness"):
        synth.generate("bp4d", tmp_path / "bad", expressiveness=0, **kw)


def test_bp4d_landmarks_are_a_matlab_v73_struct_array(tmp_path):
    """What MATLAB writes for a 1 x N struct array saved with -v7.3: its 512-byte header, the struct
    group with MATLAB_class and MATLAB_fields, fields of object references into #refs#, a double
    matrix stored transposed, an empty entry as MATLAB's [] (its dimensions, MATLAB_empty)."""
    synth.generate("bp4d", tmp_path, subjects=1, tasks=["T1"], frames=3, frame_size=SMALL, seed=4, progress=False)
    path = tmp_path / "2DFeatures" / "F001_T1.mat"
    head = path.read_bytes()[:128]
    assert head.startswith(b"MATLAB 7.3 MAT-file") and head[124:128] == b"\x00\x02IM"
    assert scipy.io.matlab.matfile_version(path) == (2, 0)   # scipy reads this far, then asks for an HDF5 reader
    with h5py.File(path, "r") as f:
        assert f.userblock_size == 512 and "#refs#" in f
        fit = f["fit"]
        assert fit.attrs["MATLAB_class"] == b"struct"
        assert [b"".join(name).decode() for name in fit.attrs["MATLAB_fields"]] == ["pred", "pose"]
        refs = fit["pred"][:, 0]
        assert fit["pred"].shape == fit["pose"].shape == (len(refs), 1)
        empty, points = f[refs[0]], f[refs[-1]]
        assert empty.attrs["MATLAB_empty"] == 1 and empty[()].tolist() == [0, 0]
        assert points.shape == (2, len(BP4D_49)) and points.attrs["MATLAB_class"] == b"double"
        pose = f[fit["pose"][-1, 0]]
        assert pose.attrs["MATLAB_class"] == b"struct" and pose["rot"].shape == (3, 3) and pose["angle"].shape == (3, 1)
        rotation = pose["rot"][()].T
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)


def test_csv_landmark_files_write_the_old_layout(tmp_path):
    truth = synth.generate("bp4d", tmp_path, subjects=1, tasks=["T1"], frames=4, frame_size=SMALL, seed=3,
                           progress=False, landmark_files="csv")
    s = truth.sequences[0]
    rows = read_csv_rows(tmp_path / "Landmarks" / "F001_T1.csv")
    assert rows[0][:3] == ["frame", "x0", "y0"] and len(rows[0]) == 1 + 2 * fr.NUM_LANDMARKS
    assert [int(r[0]) for r in rows[1:]] == list(range(s.image_frames[0], s.image_frames[1] + 1))
    assert not (tmp_path / "2DFeatures").exists()
    # the same seed draws the same faces whichever files hold their landmarks
    synth.generate("bp4d", tmp_path / "mat", subjects=1, tasks=["T1"], frames=4, frame_size=SMALL, seed=3,
                   progress=False)
    track = read_2dfeatures(tmp_path / "mat" / "2DFeatures" / "F001_T1.mat")
    csv_points = np.array([r[1:] for r in rows[1:]], float).reshape(len(rows) - 1, -1, 2)
    np.testing.assert_allclose(track.points[~track.empty][:, list(BP4D_49)], csv_points[:, list(BP4D_49)],
                               atol=0.006)   # the CSV keeps two decimals
    with pytest.raises(ValueError, match="landmark_files='xml'"):
        synth.generate("bp4d", tmp_path / "bad", landmark_files="xml", frame_size=SMALL)


def test_bad_input_errors(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        synth.generate("ck+", tmp_path)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        synth.generate("bp4d", tmp_path, frame_size="256")
    with pytest.raises(ValueError, match="unknown subjects"):
        synth.generate("bp4d", tmp_path, subjects=["X999"], frame_size=SMALL)
    with pytest.raises(ValueError, match="not coded"):
        synth.generate("bp4d-plus", tmp_path, tasks=["T2"], frame_size=SMALL)
    with pytest.raises(ValueError, match="labels_from"):
        synth.generate("mme", tmp_path, labels_from=tmp_path, frame_size=SMALL)
    with pytest.raises(FileNotFoundError, match="bp4d"):
        synth.generate("bp4d", tmp_path, labels_from=tmp_path, frame_size=SMALL)
    with pytest.raises(FileNotFoundError, match="synthetic truth"):
        synth.SynthTruth.load(tmp_path / "missing")
    with pytest.raises(SystemExit):
        synth.main(["--layout", "bp4d", str(tmp_path), "--frame-size", "axb"])


# ------------------------------------------------------------------------------------------
# Real labels (../shared/data)

def test_labels_from_real_bp4d(tmp_path, shared_data):
    labels_dir = shared_data / "au_labels"
    real = synth.read_real_bp4d(labels_dir)
    assert len(real) == 328 and sum(len(v[0]) for v in real.values()) == 146847
    truth = synth.generate("bp4d", tmp_path, subjects=["F001", "M003"], frames=25, frame_size=SMALL,
                           labels_from=labels_dir, images=False, progress=False)
    assert len(truth.sequences) == 16
    bench = [synth.OCC_HEADER_AUS.index(a) for a in synth.BP4D_BENCHMARK_AUS]
    for s in truth.sequences:
        frames, occ = real[(s.subject, s.task)]
        rows = read_csv_rows(tmp_path / "AUCoding" / "AU_OCC" / f"{s.subject}_{s.task}.csv")[1:]
        codes = np.array([[int(v) for v in r] for r in rows])
        n = min(25, len(frames))
        assert (codes[:n, 0] == frames[:n]).all()
        assert (codes[:n, 1:][:, bench] == occ[:n]).all()                   # real labels, exactly
        assert (codes[n:, 1:][:, bench] == 9).all() and len(codes) == n + 2  # trailing unknown rows
        assert s.from_real and (s.labels[:n][:, bench] == occ[:n]).all()
        i12 = synth.OCC_HEADER_AUS.index(12)
        inten = np.loadtxt(tmp_path / "AU Intensity Codes3.0" / "AU12" / f"{s.subject}_{s.task}_AU12.csv",
                           delimiter=",", dtype=int)
        assert ((inten[:n, 1] >= 1) == (codes[:n, 1 + i12] == 1)).all()


def test_labels_from_real_disfa(tmp_path, shared_data):
    labels_dir = shared_data / "au_labels"
    real = synth.read_real_disfa(labels_dir)
    assert len(real) == 27 and len(real["SN010"]) == 4844 and len(real["SN001"]) == 4845
    truth = synth.generate("disfa", tmp_path, subjects=["SN001"], frames=200, frame_size=SMALL,
                           labels_from=labels_dir, images=False, progress=False)
    s = truth.sequences[0]
    binary = synth._read_list_pairs(labels_dir / "disfa", "DISFA", 8)
    rows = np.array([i for i, p in enumerate(binary[0]) if p.startswith("SN001/")])
    order = np.argsort([int(binary[0][i].split("/")[1].split(".")[0]) for i in rows])
    expected = binary[1][rows[order]][:200]
    assert expected.sum() > 0
    for j, au in enumerate(synth.DISFA_BENCHMARK_AUS):
        values = np.loadtxt(tmp_path / "ActionUnit_Labels" / "SN001" / f"SN001_au{au}.txt", delimiter=",", dtype=int)
        assert (values[:, 0] == np.arange(1, 201)).all()
        assert ((values[:, 1] >= 2) == (expected[:, j] == 1)).all()      # the 0/1 files, exactly
    assert (s.intensity == real["SN001"][:200]).all()


# ------------------------------------------------------------------------------------------
# Learnability

def load_aligned_faces(truth, root, size=40):
    """Face crops aligned on the eye corners and nose root of the written landmark files."""
    cols = [truth.au_numbers.index(a) for a in truth.benchmark_aus]
    anchors = [fr.LANDMARK_NAMES.index(n) for n in ("left_eye_inner", "left_eye_outer", "right_eye_inner",
                                                    "right_eye_outer", "nose_root")]
    target = np.float32([[0.40, 0.36], [0.16, 0.36], [0.60, 0.36], [0.84, 0.36], [0.5, 0.36]]) * size
    images, labels, subjects = [], [], []
    for s in truth.sequences:
        track = read_2dfeatures(Path(root) / "2DFeatures" / f"{s.subject}_{s.task}.mat")
        points = dict(zip(track.frames.tolist(), track.points))
        for f, lab in zip(s.frame_no, s.labels):
            img = cv2.imread(str(Path(root) / s.image_source / synth._frame_name(int(f), s.zero_pad)))
            m, _ = cv2.estimateAffinePartial2D(points[int(f)][anchors], target)
            images.append(cv2.warpAffine(img, m, (size, size)))
            labels.append(lab[cols])
            subjects.append(s.subject)
    return np.array(images), np.array(labels), np.array(subjects)


def test_small_cnn_learns_synthetic_aus(tmp_path):
    """A four-layer CNN trained on 2/3 of the subjects beats the all-positive F1 on the rest."""
    torch = pytest.importorskip("torch")
    from sklearn.metrics import f1_score
    truth = synth.generate("bp4d", tmp_path, subjects=41, tasks=["T1", "T3", "T6", "T8"], frames=6,
                           frame_size=(96, 128), seed=1, progress=False, workers=2)
    x, y, subjects = load_aligned_faces(truth, tmp_path)
    test = np.isin(subjects, sorted(set(subjects))[::3])
    x = torch.tensor(x).permute(0, 3, 1, 2).float() / 255 - 0.5
    y = torch.tensor(y).float()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions run faster single-threaded on a busy machine
    try:
        torch.manual_seed(0)
        gen = np.random.default_rng(0)

        def block(i, o):
            return torch.nn.Sequential(torch.nn.Conv2d(i, o, 3, padding=1), torch.nn.BatchNorm2d(o),
                                       torch.nn.ReLU(), torch.nn.MaxPool2d(2))
        net = torch.nn.Sequential(block(3, 12), block(12, 24), block(24, 32), block(32, 48),
                                  torch.nn.Flatten(), torch.nn.Dropout(0.3), torch.nn.Linear(48 * 2 * 2, 12))
        opt = torch.optim.AdamW(net.parameters(), 3e-3, weight_decay=1e-3)
        pos_weight = torch.full((12,), 3.0)  # favour recall, as F1 rewards it
        xt, yt = x[~test], y[~test]
        for _ in range(20):
            net.train()
            perm = torch.randperm(len(xt))
            for i in range(0, len(perm), 64):
                b = perm[i:i + 64]
                dx, dy = (int(v) for v in gen.integers(-2, 3, 2))
                logits = net(torch.roll(xt[b], (dx, dy), (2, 3)))
                known = (yt[b] >= 0).float()
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits, yt[b].clamp(min=0), reduction="none", pos_weight=pos_weight)
                loss = (loss * known).sum() / known.sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            pred = (net(x[test]) > 0).numpy()
    finally:
        torch.set_num_threads(threads)
    truth_test = y[test].numpy()
    f1, baseline = [], []
    for j in range(truth_test.shape[1]):
        k = truth_test[:, j] >= 0
        if truth_test[k, j].sum() == 0:
            continue
        f1.append(f1_score(truth_test[k, j], pred[k, j], zero_division=0))
        baseline.append(f1_score(truth_test[k, j], np.ones(k.sum()), zero_division=0))
    assert np.mean(f1) > np.mean(baseline) + 0.04, (np.round(f1, 2), np.round(baseline, 2))
