"""AUFile: schema validation, metadata, fold rows, fingerprint, image reads."""
import h5py
import numpy as np
import pytest

from aubench.data import AUFile, decode_jpeg
from fixtures_h5 import AU_NAMES, frame_image, write_au_h5



def test_metadata(raw_file):
    f = AUFile(raw_file)
    assert f.dataset == "BP4D"
    assert f.au_names == list(AU_NAMES)
    assert f.num_aus == len(AU_NAMES)
    assert f.num_frames == 6 * (7 + 12 + 3)
    assert f.image_size == (32, 32)
    assert f.num_folds == 3
    assert f.subjects == [f"S{p:03d}" for p in range(6)]
    assert f.sequences["name"][:2] == ["S000/T1", "S000/T2"]
    np.testing.assert_array_equal(f.sequences["length"][:3], [7, 12, 3])
    np.testing.assert_array_equal(f.sequences["start"][:4], [0, 7, 19, 22])
    with h5py.File(raw_file) as h:
        np.testing.assert_array_equal(f.labels, h["frames/label"][()])
        np.testing.assert_allclose(f.fold_stats(2)["class_weight"], h["folds/fold2/class_weight"][()])
        np.testing.assert_allclose(f.fold_stats(2)["cooccurrence"], h["folds/fold2/cooccurrence"][()])
    assert set(f.fold_stats(1)) == {"au_rate", "class_weight", "cooccurrence"}
    assert f.fold_subjects(1) == (["S001", "S002", "S004", "S005"], ["S000", "S003"])


def test_fold_rows_subject_exclusive(raw_file):
    f = AUFile(raw_file)
    covered = []
    for k in range(1, f.num_folds + 1):
        train, test = f.rows(k, "train"), f.rows(k, "test")
        train_names, test_names = f.fold_subjects(k)
        assert not set(f.frame_subject[train]) & set(f.frame_subject[test])
        assert {f.subjects[s] for s in f.frame_subject[train]} == set(train_names)
        assert {f.subjects[s] for s in f.frame_subject[test]} == set(test_names)
        assert train.size + test.size == f.num_frames
        assert np.all(np.diff(train) > 0)
        covered.append(test)
    # every frame is tested in exactly one fold
    np.testing.assert_array_equal(np.sort(np.concatenate(covered)), np.arange(f.num_frames))
    np.testing.assert_array_equal(f.rows(None, "all"), np.arange(f.num_frames))


def test_read_images_raw_and_jpeg(raw_file, jpeg_file):
    raw, jpeg = AUFile(raw_file), AUFile(jpeg_file)
    rows = [5, 3, 3, 4, 60]
    got = raw.read_images(rows)
    assert got.dtype == np.uint8 and got.shape == (5, 32, 32, 3)
    for image, r in zip(got, rows):
        np.testing.assert_array_equal(image, frame_image(r, 32, 32))
    got = jpeg.read_images(rows)
    assert got.dtype == np.uint8 and got.shape == (5, 32, 32, 3)
    with h5py.File(jpeg_file) as h:
        for image, r in zip(got, rows):
            np.testing.assert_array_equal(image, decode_jpeg(h["frames/image"][r]))
            # JPEG at quality 95 stays close to the original RGB (channel order is right)
            assert np.abs(image.astype(int) - frame_image(r, 32, 32)).mean() < 3


def test_fingerprint_stable_and_label_sensitive(tmp_path):
    a = write_au_h5(tmp_path / "a.h5", seed=3)
    b = write_au_h5(tmp_path / "b.h5", seed=3)  # same content, different creation time
    fa = AUFile(a).fingerprint()
    assert fa == AUFile(a).fingerprint() == AUFile(b).fingerprint()
    assert len(fa) == 64
    labels = AUFile(a).labels.copy()
    labels[0, 0] = 1 - max(labels[0, 0], 0)
    c = write_au_h5(tmp_path / "c.h5", seed=3, label_override=labels)
    assert AUFile(c).fingerprint() != fa


def test_pickle_drops_handle(raw_file):
    import pickle
    f = AUFile(raw_file)
    f.read_image(0)
    assert f._handle is not None
    g = pickle.loads(pickle.dumps(f))
    assert g._handle is None
    np.testing.assert_array_equal(g.read_image(1), f.read_image(1))
    f.close()
    assert f._handle is None


def test_not_hdf5(tmp_path):
    p = tmp_path / "junk.h5"
    p.write_text("hello")
    with pytest.raises(ValueError, match=r"junk\.h5.*not an HDF5 file"):
        AUFile(p)
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        AUFile(tmp_path / "missing.h5")


def test_not_aubench(tmp_path):
    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as h:
        h.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ValueError, match=r"other\.h5.*not an aubench HDF5 file.*'schema_version'"):
        AUFile(p)


@pytest.mark.parametrize("key", ["frames/label", "sequences/start", "folds/fold2/cooccurrence"])
def test_missing_key_is_named(tmp_path, key):
    p = write_au_h5(tmp_path / "cut.h5")
    with h5py.File(p, "a") as h:
        del h[key]
    with pytest.raises(ValueError, match=rf"cut\.h5.*not an aubench HDF5 file.*'{key}'"):
        AUFile(p)


def test_schema_version_mismatch(tmp_path):
    p = write_au_h5(tmp_path / "v3.h5", schema_version=3)
    with pytest.raises(ValueError, match=r"v3\.h5.*schema_version is 3.*versions 1, 2"):
        AUFile(p)


def test_fold_out_of_range(raw_file):
    f = AUFile(raw_file)
    for bad in (0, 4):
        with pytest.raises(ValueError, match=r"fold .* out of range.*1\.\.3"):
            f.rows(bad, "train")
    with pytest.raises(ValueError, match="1..3"):
        f.fold_stats(7)


def test_unknown_split(raw_file):
    with pytest.raises(ValueError, match="unknown split 'val'.*train, test, all"):
        AUFile(raw_file).rows(1, "val")


def test_jpeg_frames_decode_to_opencv_pixels_and_a_corrupt_one_is_named(tmp_path):
    """The stored JPEGs decode (simplejpeg, strict) to the very pixels OpenCV gives; a frame whose
    bytes are cut short is a ValueError naming its row and the file, not a made-up image."""
    import cv2

    p = write_au_h5(tmp_path / "cut.h5", image_format="jpeg", image_size=(48, 40))
    with h5py.File(p, "a") as h:
        for r in (0, 7, 30):
            data = h["frames/image"][r]
            np.testing.assert_array_equal(decode_jpeg(data), cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR),
                                                                          cv2.COLOR_BGR2RGB))
        data = h["frames/image"][7]
        h["frames/image"][7] = data[: int(len(data) * 0.8)]
    f = AUFile(p)
    assert f.read_images([6, 8]).shape == (2, 48, 40, 3)
    with pytest.raises(ValueError, match=rf"could not decode the JPEG image at row 7 of .*cut\.h5 \(libjpeg: .+\)"):
        f.read_images([6, 7, 8])


def test_verify_refuses_the_frames_training_refuses(tmp_path):
    """`datasets_tools verify` decodes with training's strict decoder: a JPEG cut short is a
    problem naming its row and libjpeg's reason."""
    from datasets_tools.verify import verify

    p = write_au_h5(tmp_path / "cut.h5", image_format="jpeg", image_size=(48, 40))
    assert [x for x in verify(p, progress=False) if "frames/image" in x] == []
    with h5py.File(p, "a") as h:
        data = h["frames/image"][7]
        h["frames/image"][7] = data[: int(len(data) * 0.8)]
    problems = verify(p, progress=False)
    assert any(x.startswith("frames/image[7] does not decode (libjpeg:") for x in problems), problems
    assert not any("frames/image[6]" in x or "frames/image[8]" in x for x in problems)
