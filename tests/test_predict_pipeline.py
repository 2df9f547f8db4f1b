"""`aubench predict` prepares faces with the converter's own face pipeline: a synthetic raw tree
converted with --landmarks detect --crop align, a tiny run trained on it, and the raw frames of a
test sequence given to predict as a video and as an image folder give back the crops the
converter stored and the probabilities of the run's predictions file. Also: temporal methods
on a sequence as the engine tests it, the sidecar record, the refusals of a run that cannot be
used, and `datasets_tools convert videos`."""
from __future__ import annotations

import json
import shutil

import cv2
import h5py
import numpy as np
import pytest

import aubench.predict as predict_module
from aubench.cli import main
from aubench.data import AUFile
from aubench.engine.predictions import read_predictions
from datasets_tools import synth
from datasets_tools.convert import FrameOptions, convert
from predict_helpers import needs_faces, probabilities, read_rows, train_run
from video_helpers import write_video

pytestmark = needs_faces


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(raw tree, its SynthTruth, the converted file): BP4D layout, detected landmarks, aligned
    64 px faces stored raw (bytes as the converter made them)."""
    root = tmp_path_factory.mktemp("pipeline")
    truth = synth.generate("bp4d", root / "raw", subjects=["F001", "F002", "F003"], tasks=["T1"], frames=6,
                           frame_size="160x200", seed=3, progress=False)
    out = root / "aligned.h5"
    convert("bp4d", root / "raw", out, FrameOptions(image_size=64, crop="align", landmarks="detect",
                                                    image_format="raw"), progress=False)
    return root, truth, out


@pytest.fixture(scope="module")
def trained(converted):
    root, _, data = converted
    return train_run(data, root / "run", "resnet", image_size=32)


def test_video_and_folder_give_the_converters_crops_and_the_runs_probabilities(converted, trained, tmp_path,
                                                                               monkeypatch):
    root, truth, data = converted
    result, stored = read_predictions(trained / "result.json")
    file = AUFile(data)
    name = stored.sequence_names[0]                       # a test sequence of fold 1
    seq = next(s for s in truth.sequences if s.name == name)
    index = file.sequences["name"].index(name)
    start, length = int(file.sequences["start"][index]), int(file.sequences["length"][index])
    rows = np.arange(start, start + length)
    # its raw frames, as the converter read them, in a folder (with a stray file) and in a lossless video
    folder = tmp_path / "frames"
    folder.mkdir()
    frames = []
    for frame_no in file.frame_no[rows]:
        source = root / "raw" / seq.image_source / synth._frame_name(int(frame_no), seq.zero_pad)
        shutil.copy(source, folder / f"frame{frame_no}.jpg")
        frames.append(cv2.imread(str(source)))
    (folder / "notes.txt").write_text("not an image")
    video = write_video(tmp_path / "clip.mkv", frames, fourcc="FFV1")

    seen = []   # the faces predict gives the model, as it gives them
    add = predict_module._ModelRunner.add
    monkeypatch.setattr(predict_module._ModelRunner, "add",
                        lambda self, row, sequence, face, points: seen.append(face.copy()) or add(self, row, sequence,
                                                                                                 face, points))
    expected = stored.probabilities[np.searchsorted(stored.rows, rows)]
    stored_faces = file.read_images(rows)
    for source, stem in ((video, "clip"), (folder, "frames")):
        seen.clear()
        assert main(["predict", "--run", str(trained), "--out", str(tmp_path / "out"), str(source), "--quiet"]) == 0
        table = read_rows(tmp_path / "out" / f"{stem}.csv")
        assert [row["success"] for row in table] == ["1"] * length and {row["face_id"] for row in table} == {"0"}
        assert np.array_equal(np.stack(seen), stored_faces)            # the converter's crops, byte for byte
        assert np.abs(probabilities(table, file.au_names) - expected).max() < 1e-4
    record = json.loads((tmp_path / "out" / "frames.json").read_text())
    assert record["counts"]["skipped_files"] == ["notes.txt"] and record["faces"]["note"] is None
    assert record["faces"]["crop"] == "align" and record["faces"]["image_size"] == 64
    assert [row["file"] for row in table] == [f"frame{n}.jpg" for n in file.frame_no[rows]]


def test_a_temporal_method_predicts_a_sequence_as_the_engine_tests_it(converted, tmp_path, monkeypatch):
    """regnet-tf's 8-frame windows over a 6-frame test sequence: predict_faces on the stored faces
    of the sequence gives the predictions file's probabilities; in a video, a gap without the
    face ends a sequence, and each is predicted on its own."""
    from aubench import Predictor
    from predict_helpers import blank, face_frames

    _, _, data = converted
    run = train_run(data, tmp_path / "regnet", "regnet-tf", image_size=32)
    _, stored = read_predictions(run / "result.json")
    file = AUFile(data)
    predictor = Predictor.from_run(run, device="cpu")
    for k, name in enumerate(stored.sequence_names):
        index = file.sequences["name"].index(name)
        rows = np.arange(file.sequences["start"][index], file.sequences["start"][index] + file.sequences["length"][index])
        got = predictor.predict_faces(file.read_images(rows))
        assert np.abs(got - stored.probabilities[stored.sequence == k]).max() < 1e-4
    faces = face_frames(9, seed=4)
    video = write_video(tmp_path / "gap.avi", faces[:5] + [blank()] * 2 + faces[5:], fourcc="MJPG")
    seen: dict[int, list] = {}
    add = predict_module._ModelRunner.add
    monkeypatch.setattr(predict_module._ModelRunner, "add", lambda self, row, sequence, face, points: seen.setdefault(
        sequence, []).append(face.copy()) or add(self, row, sequence, face, points))
    table = predictor.predict_video(video)
    monkeypatch.undo()
    assert sorted(map(len, seen.values())) == [4, 5] and set(table.face_id[table.success]) == {0}
    for sequence, prepared in seen.items():
        alone = predictor.predict_faces(np.stack(prepared))
        assert np.abs(table.probabilities[table.sequence == sequence] - alone).max() < 1e-5


def test_the_record_names_the_run_the_weights_and_the_training_file(converted, trained, tmp_path):
    import hashlib

    _, _, data = converted
    frames = tmp_path / "one"
    frames.mkdir()
    cv2.imwrite(str(frames / "1.png"), np.full((120, 100, 3), 80, np.uint8))   # no face
    assert main(["predict", "--run", str(trained), "--out", str(tmp_path / "out"), str(frames), "--quiet",
                 "--largest-face", "--smooth", "gaussian:5:1.0"]) == 0
    record = json.loads((tmp_path / "out" / "one.json").read_text())
    assert record["run"]["weights_sha256"] == hashlib.sha256((trained / "last.pt").read_bytes()).hexdigest()
    assert record["training_file"]["fingerprint"] == AUFile(data).fingerprint()
    assert record["detector"]["max_faces"] == 1 and record["smoothing"]["kernel_size"] == 5
    assert record["counts"]["frames"] == 1 and record["counts"]["faces"] == 0
    assert set(record["versions"]) >= {"aubench", "torch"} and record["throughput"]["seconds"] > 0
    (row,) = read_rows(tmp_path / "out" / "one.csv")
    assert row["success"] == "0" and row["face_id"] == "" and row["AU01_p"] == "" and row["AU01_c"] == ""


def test_runs_that_cannot_predict_are_refused_in_one_line(converted, trained, tmp_path, capsys):
    _, _, data = converted
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((50, 50, 3), np.uint8))

    def refused(run, *extra) -> str:
        assert main(["predict", "--run", str(run), "--out", str(tmp_path / "out"), str(image), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        return err

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(trained / "last.pt", unfinished / "last.pt")
    assert "did not finish" in refused(unfinished)
    other = tmp_path / "other"
    shutil.copytree(trained, other)
    record = json.loads((other / "result.json").read_text())
    record["config"]["seed"] = 7           # the result of another run beside this checkpoint
    (other / "result.json").write_text(json.dumps(record))
    error = refused(other)
    assert "does not belong to the run" in error and "config.seed" not in error and "seed" in error
    evaluate = tmp_path / "evaluate"
    (evaluate / "results").mkdir(parents=True)
    assert "pass --method and --fold" in refused(evaluate)
    moved = tmp_path / "moved.h5"
    with h5py.File(moved, "w"):
        pass
    assert "moved.h5" in refused(trained, "--data", str(moved))
    assert "no such file or folder" in refused(trained, str(tmp_path / "missing.mp4"))
    assert not (tmp_path / "out").exists()          # refused before anything is written


def test_convert_videos_makes_one_sequence_per_video_and_needs_no_folds(tmp_path):
    from datasets_tools.cli import main as tools_main
    from predict_helpers import face_frames

    root = tmp_path / "lab"
    (root / "p1").mkdir(parents=True)
    write_video(root / "p1" / "session.avi", face_frames(5, seed=1), fourcc="MJPG")
    write_video(root / "alone.mp4", face_frames(4, seed=2))
    out = tmp_path / "videos.h5"
    assert tools_main(["convert", "videos", str(root), str(out), "--image-size", "32", "--quiet", "--workers", "1"]) == 0
    file = AUFile(out)
    assert file.num_folds == 0 and not file.labeled and file.has_scheme_landmarks
    assert file.sequences["name"] == ["alone.mp4", "p1/session.avi"] and file.subjects == ["alone.mp4", "p1"]
    assert list(file.sequences["length"]) == [4, 5] and list(file.frame_no[:4]) == [1, 2, 3, 4]
    assert file.attrs["crop"] == "align" and file.attrs["landmarks_source"] == "detect"
