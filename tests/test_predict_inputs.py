"""`aubench predict` on the inputs a real user has: photos with EXIF orientation, grayscale,
16-bit and RGBA images; rotated, variable-frame-rate and truncated videos; a video that starts
without a face, a face that leaves and comes back, several faces; missing paths and empty
folders; and faces followed across frames (--detect-every), smoothed per face. Faces are drawn
(datasets_tools.face_render); the run is a one-epoch ResNet on a small file whose crop (none)
cannot be reproduced, so predict aligns and says so."""
from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

import aubench.predict as predict_module
from aubench import Predictor
from aubench.cli import main
from aubench.engine.postprocess import parse_smoothing, smooth_probabilities
from fixtures_h5 import AU_NAMES, write_au_h5
from predict_helpers import blank, face_frames, needs_faces, probabilities, read_rows, train_run
from video_helpers import media_time_scale, set_frame_durations, set_rotation, write_video

pytestmark = needs_faces


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    return train_run(write_au_h5(root / "tiny.h5", num_subjects=3, sequence_lengths=(4,)), root / "run", "resnet")


@pytest.fixture(scope="module")
def predictor(run):
    return Predictor.from_run(run, device="cpu")


def predict_cli(run, out, video, expect: int = 0, **options) -> list[dict[str, str]]:
    """`aubench predict` on one video: the rows of its CSV."""
    args = ["predict", "--run", str(run), "--out", str(out), str(video), "--quiet"]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    assert main(args) == expect
    return read_rows(out / f"{video.stem}.csv")


def test_photos_in_every_pixel_format_give_the_same_face(predictor, tmp_path):
    face = face_frames(1, seed=3)[0]
    paths = {}
    paths["colour"] = tmp_path / "colour.png"
    cv2.imwrite(str(paths["colour"]), face)
    paths["rgba"] = tmp_path / "rgba.png"       # transparent alpha: dropped, the colour kept
    cv2.imwrite(str(paths["rgba"]), np.dstack([face, np.zeros(face.shape[:2], np.uint8)]))
    paths["16-bit"] = tmp_path / "deep.png"     # 16-bit: v * 257 reads back as v
    cv2.imwrite(str(paths["16-bit"]), face.astype(np.uint16) * 257)
    paths["exif"] = tmp_path / "exif.jpg"       # stored sideways, EXIF orientation 6 turns it upright
    sideways = Image.fromarray(np.ascontiguousarray(np.rot90(face[:, :, ::-1])))
    exif = sideways.getexif()
    exif[0x0112] = 6
    sideways.save(paths["exif"], exif=exif.tobytes(), quality=98)
    paths["gray"] = tmp_path / "gray.png"
    cv2.imwrite(str(paths["gray"]), cv2.cvtColor(face, cv2.COLOR_BGR2GRAY))
    table = predictor.predict_images(list(paths.values()))
    assert table.success.all() and list(table.face_id) == [0] * 5 and table.file == list(map(str, paths.values()))
    colour = table.probabilities[0]
    assert np.array_equal(table.probabilities[1], colour) and np.array_equal(table.probabilities[2], colour)
    assert np.abs(table.box[3] - table.box[0]).max() <= 3          # upright: the same box as the original
    assert np.all(table.box[:, 0] + table.box[:, 2] <= face.shape[1] + 20)
    plain = tmp_path / "sideways.jpg"                              # without the tag: no upright face
    sideways.save(plain, quality=98)
    assert not predictor.predict_images([plain]).success.any()


def test_a_rotated_video_is_read_upright(run, tmp_path):
    frames = [np.ascontiguousarray(np.rot90(frame)) for frame in face_frames(4, seed=6)]  # stored 90 deg anticlockwise
    video = write_video(tmp_path / "phone.mp4", frames)
    set_rotation(video, 90)                                                  # the display matrix turns it back
    rows = predict_cli(run, tmp_path / "out", video)
    assert [row["success"] for row in rows] == ["1"] * 4
    assert max(float(row["face_x"]) + float(row["face_width"]) for row in rows) <= 200 + 20   # the upright width


def test_timestamps_come_from_the_container(run, tmp_path):
    video = write_video(tmp_path / "vfr.mp4", face_frames(6, seed=7), fps=25)
    scale = media_time_scale(video)
    durations = [scale // 25, scale // 25, scale // 5, scale // 5, scale // 50, scale // 50]   # 40, 200, 20 ms
    set_frame_durations(video, durations)
    rows = predict_cli(run, tmp_path / "out", video)
    expected = np.concatenate([[0], np.cumsum(durations)[:-1]]) / scale
    assert [float(row["timestamp"]) for row in rows] == pytest.approx(expected, abs=1e-3)
    assert [row["frame"] for row in rows] == ["1", "2", "3", "4", "5", "6"]


def test_a_video_that_starts_without_a_face_and_a_face_that_comes_back(run, tmp_path, monkeypatch):
    faces = face_frames(8, seed=8)
    frames = [blank()] * 3 + faces[:4] + [blank()] * 2 + faces[4:]
    video = write_video(tmp_path / "away.avi", frames, fourcc="MJPG")
    rows = predict_cli(run, tmp_path / "out", video)
    assert "".join(row["success"] for row in rows) == "000" + "1111" + "00" + "1111"
    assert all(row["AU01_p"] == "" and row["face_id"] == "" for row in rows if row["success"] == "0")
    assert {row["face_id"] for row in rows if row["success"] == "1"} == {"0"}   # back where it was: the same face_id
    record = json.loads((tmp_path / "out" / "away.json").read_text())
    assert record["counts"]["sequences"] == 2 and record["counts"]["face_ids"] == 1
    monkeypatch.setattr(predict_module, "TRACK_MEMORY", 1)    # away longer than the tracker waits: a new face_id
    rows = predict_cli(run, tmp_path / "later", video)
    assert [row["face_id"] for row in rows if row["success"] == "1"] == ["0"] * 4 + ["1"] * 4


def test_several_faces_keep_their_face_ids_between_detections(run, tmp_path):
    left, right = face_frames(7, seed=9), face_frames(7, seed=10, still=True)
    video = write_video(tmp_path / "pair.avi", [np.hstack([a, b]) for a, b in zip(left, right)], fourcc="MJPG")
    rows = predict_cli(run, tmp_path / "out", video, detect_every=3, landmarks_out=True)
    assert [row["frame"] for row in rows] == [str(k) for k in range(1, 8) for _ in range(2)]
    ids = {row["face_id"]: [] for row in rows}
    for row in rows:
        ids[row["face_id"]].append(float(row["face_x"]))
    assert sorted(ids) == ["0", "1"] and all(len(x) == 7 for x in ids.values())
    sides = sorted(ids.values(), key=np.mean)
    assert max(sides[0]) < 200 <= min(sides[1])            # each face_id stays on its side
    for row in rows:                                       # landmarks inside the face's box (with its margin)
        x = np.array([float(row[f"x_{i}"]) for i in range(68)])
        left_edge, width = float(row["face_x"]), float(row["face_width"])
        assert left_edge - 0.2 * width < x.min() and x.max() < left_edge + 1.2 * width
    rows = predict_cli(run, tmp_path / "one", video, max_faces=1)
    assert len(rows) == 7 and {row["face_id"] for row in rows} == {"0"}


def test_smoothing_stays_within_each_face(predictor, tmp_path):
    left, right = face_frames(6, seed=11), face_frames(6, seed=12)
    video = write_video(tmp_path / "pair.avi", [np.hstack([a, b]) for a, b in zip(left, right)], fourcc="MJPG")
    raw = predictor.predict_video(video)
    smoothing = parse_smoothing("gaussian:5:2.0")
    predictor.smoothing = smoothing
    try:
        smoothed = predictor.predict_video(video)
    finally:
        predictor.smoothing = None
    for face_id in (0, 1):
        mine = raw.face_id == face_id
        expected = smooth_probabilities(raw.probabilities[mine], np.zeros(mine.sum()), raw.frame[mine], smoothing)
        assert np.allclose(smoothed.probabilities[mine], expected, atol=1e-6)
    assert not np.allclose(smoothed.probabilities, raw.probabilities)


def test_a_truncated_video_keeps_its_decodable_frames_and_says_so(run, tmp_path, capsys):
    video = write_video(tmp_path / "cut.avi", face_frames(10, seed=13), fourcc="MJPG")
    data = video.read_bytes()
    video.write_bytes(data[:int(len(data) * 0.55)])
    rows = predict_cli(run, tmp_path / "out", video, expect=1)
    err = capsys.readouterr().err
    assert 3 <= len(rows) < 10 and f"decoding stopped after frame {len(rows)} of the 10" in err and str(video) in err
    assert (tmp_path / "out" / "cut.json").is_file()


def test_bad_inputs_are_refused_before_any_work(run, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    out = tmp_path / "out"
    garbage = tmp_path / "garbage.mp4"       # a video in name only: refused before any work
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for inputs, message in (([empty], "no images"), ([tmp_path / "nope.mp4"], "no such file or folder"),
                            ([empty / "readme.txt"], "not a video"), ([garbage], "cannot be opened as a video")):
        assert main(["predict", "--run", str(run), "--out", str(out), *map(str, inputs)]) == 2
        assert message in capsys.readouterr().err
    assert not out.exists()
    monkeypatch.setitem(sys.modules, "dlib", None)          # without the faces extra: what to install
    assert main(["predict", "--run", str(run), "--out", str(out), str(empty)]) == 2
    assert "pip install 'aubench[faces]'" in capsys.readouterr().err and not out.exists()


def test_a_failed_write_leaves_no_half_file(run, tmp_path, monkeypatch):
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), face_frames(1, seed=14)[0])

    def broken(self, rows):
        raise OSError(28, "No space left on device")

    import csv

    real_writer = csv.writer

    class Writer:
        def __init__(self, f, **kw):
            self.inner = real_writer(f, **kw)

        def writerow(self, row):
            self.inner.writerow(row)

        writerows = broken

    monkeypatch.setattr(csv, "writer", Writer)
    out = tmp_path / "out"
    assert main(["predict", "--run", str(run), "--out", str(out), str(image)]) == 2
    assert list(out.iterdir()) == []                       # neither the CSV nor a temporary beside it


def test_the_crop_note_is_said_once_and_recorded(run, tmp_path, capsys):
    folder = tmp_path / "seq"
    folder.mkdir()
    for k, frame in enumerate(face_frames(3, seed=15)):
        cv2.imwrite(str(folder / f"{k}.png"), frame)
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), face_frames(1, seed=16)[0])
    assert main(["predict", "--run", str(run), "--out", str(tmp_path / "out"), str(folder), str(image)]) == 0
    err = capsys.readouterr().err
    assert err.count("cannot be reproduced") == 1 and "--crop none" in err
    record = json.loads((tmp_path / "out" / "seq.json").read_text())
    assert record["faces"]["crop"] == "align" and "cannot be reproduced" in record["faces"]["note"]
    rows = read_rows(tmp_path / "out" / "seq.csv")
    assert probabilities(rows, list(AU_NAMES)).shape == (3, len(AU_NAMES))
