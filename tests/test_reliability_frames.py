"""Reliability of the frames ``datasets_tools convert`` stores: a frame's image is the frame its
label names, or the frame is a bad frame (an error, or a counted skip with ``--skip-bad``).
Damaged DISFA videos (garbage over chunk headers, frame data, the index), JPEG bytes that still
decode after corruption, and image names that cannot be read, on tiny synthetic trees whose
every frame is one flat grey level that names it (``convert_helpers.frame_grey``)."""

from __future__ import annotations

import os
import re
import shutil

import cv2
import numpy as np
import pytest

from convert_helpers import frame_grey, jpeg_bytes, make_disfa_tree, make_occurrence_tree, read_back
from datasets_tools.cli import main
from datasets_tools.convert import FrameOptions, convert, decode
from datasets_tools.errors import DatasetError

FRAMES = 30  # per video; frame_grey tells apart any two of them by 5 grey levels at least
SUBJECTS = ["SN001", "SN002", "SN003", "SN004"]  # four: one may lose every frame
RAW = FrameOptions(image_size=16, image_format="raw")  # no re-encoding: the decoded grey is stored


def frame_chunks(data: bytes) -> list[tuple[int, int]]:
    """(first byte, end) of each frame's chunk, in frame order, in an intact AVI written by OpenCV."""
    pos, end = data.index(b"movi") + 4, data.index(b"idx1")
    chunks = []
    while pos < end:
        length = int.from_bytes(data[pos + 4:pos + 8], "little")
        if data[pos + 2:pos + 4] == b"dc":
            chunks.append((pos, pos + 8 + length))
        pos += 8 + length + (length & 1)
    return chunks


def own_frame(grey: float, frames) -> int:
    """The frame whose grey level is nearest ``grey``."""
    return int(min(frames, key=lambda f: abs(frame_grey(int(f)) - grey)))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("disfa") / "raw"
    truth = make_disfa_tree(root, SUBJECTS, frames=FRAMES, image_size=(64, 48))
    return root, truth


@pytest.fixture
def tree(pristine, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(pristine[0], root)
    video = root / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi"
    return root, video, frame_chunks(video.read_bytes())


def overwrite(video, start: int, length: int, seed: int = 0) -> None:
    data = bytearray(video.read_bytes())
    data[start:start + length] = np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8).tobytes()
    video.write_bytes(bytes(data))


# Where garbage goes: (first byte, length) from the frame chunks of the video.
DAMAGE = {
    # the case: garbage in the middle, over the headers of several frames (OpenCV's reader
    # then loses frames without a failed read and numbers the later ones as the lost ones)
    "several frames": lambda chunks, size: (size * 45 // 100, 1000),
    "one chunk header": lambda chunks, size: (chunks[12][0], 16),
    "inside one frame's data": lambda chunks, size: (chunks[20][0] + 40, 60),
    "the first frames": lambda chunks, size: (chunks[0][0] + 20, 900),
    "the index": lambda chunks, size: (chunks[-1][1] + 8 + 16 * 17 + 8, 24),  # entries of frames 18-19
}


def hit_frames(chunks, start: int, length: int) -> set[int]:
    """Label frames (1-based) whose chunk bytes the garbage overwrote."""
    return {k + 1 for k, (a, b) in enumerate(chunks) if a < start + length and start < b}


@pytest.mark.parametrize("workers,chunk", [(1, None), (2, 4)])
@pytest.mark.parametrize("where", sorted(DAMAGE))
def test_damaged_video_never_stores_a_frame_beside_another_frames_labels(tree, tmp_path, monkeypatch, where, workers,
                                                                        chunk):
    root, video, chunks = tree
    start, length = DAMAGE[where](chunks, video.stat().st_size)
    overwrite(video, start, length)
    if chunk is not None:  # chunks smaller than a video: workers seek into the middle of it
        monkeypatch.setattr("datasets_tools.convert.chunk_size", lambda options: chunk)
    result = convert("disfa", root, tmp_path / "d.h5", RAW, skip_bad=True, workers=workers, progress=False)
    stored = read_back(tmp_path / "d.h5")
    hit = hit_frames(chunks, start, length)
    frames = range(1, FRAMES + 1)
    got = stored.get("SN001", {"frame_no": [], "grey": []})
    for frame, grey in zip(got["frame_no"], got["grey"]):
        # a frame whose own bytes were overwritten may decode to anything; every other stored frame
        # holds its own image
        assert int(frame) in hit or own_frame(grey, frames) == frame, (where, int(frame), own_frame(grey, frames))
    skipped = [s.frame_no for s in result.skips if s.sequence == "SN001"]
    assert sorted(list(got["frame_no"]) + skipped) == list(frames)  # every frame stored or listed, once
    first_hit = min(hit) if where != "the index" else 18
    assert set(range(1, first_hit)) <= set(int(f) for f in got["frame_no"])  # the frames before all kept
    for name in SUBJECTS[1:]:
        np.testing.assert_array_equal(stored[name]["frame_no"], np.arange(1, FRAMES + 1))


@pytest.mark.parametrize("where", ["several frames", "one chunk header", "the first frames", "the index"])
def test_damaged_video_structure_is_an_error_naming_the_video(tree, tmp_path, where):
    root, video, chunks = tree
    overwrite(video, *DAMAGE[where](chunks, video.stat().st_size))
    with pytest.raises(DatasetError, match=rf"{video.name}: the video file is damaged at byte \d+.*only its first \d+ "
                                           rf"of {FRAMES} frames can be placed"):
        convert("disfa", root, tmp_path / "d.h5", RAW, progress=False)


def test_video_reader_places_frames_read_in_any_order(tree):
    _, video, _ = tree
    from datasets_tools.convert import _VideoReader

    reader = _VideoReader(str(video))
    order = [0, 1, 2, 25, 26, 3, 29, 28, 10, 11, 4]  # forward, far ahead (seek), behind (seek)
    for index in order:
        image, error = reader.read(index)
        assert error is None and own_frame(image.mean(), range(1, FRAMES + 1)) == index + 1, index


def test_video_reader_after_a_frame_that_fails_to_decode(tree):
    """A frame whose data is garbage fails; the next is stored only where its timestamp confirms
    where decoding stands (an AVI's timestamps count frames)."""
    _, video, chunks = tree
    start, end = chunks[7]
    overwrite(video, start + 8, end - start - 8)  # frame 8's JPEG data: no longer a JPEG
    from datasets_tools.convert import _VideoReader

    reader = _VideoReader(str(video))
    results = [reader.read(k) for k in range(12)]
    assert results[7][0] is None and "cannot decode video frame 7" in results[7][1]
    for k, (image, error) in enumerate(results):
        if k != 7:
            assert error is None and own_frame(image.mean(), range(1, FRAMES + 1)) == k + 1, (k, error)


def test_video_reader_loses_the_position_when_timestamps_cannot_confirm_it(tree, monkeypatch):
    _, video, chunks = tree
    start, end = chunks[7]
    overwrite(video, start + 8, end - start - 8)
    from datasets_tools.convert import _VideoReader

    reader = _VideoReader(str(video))
    reader.fps = 0.0  # as for a video whose container gives no frame rate: timestamps confirm nothing
    errors = [reader.read(k)[1] for k in range(12)]
    assert all(e is None for e in errors[:7]) and "cannot decode video frame 7" in errors[7]
    assert "cannot be placed" in errors[8] and all("positions are lost from frame 8" in e for e in errors[9:])


# ---- JPEG bytes that still decode after corruption -------------------------------------------

def corrupt_jpeg(path, seed: int = 0) -> None:
    """200 random bytes inside the entropy-coded data of a JPEG (after its headers)."""
    data = bytearray(path.read_bytes())
    start = data.index(b"\xff\xda") + 40
    data[start:start + 200] = np.random.default_rng(seed).integers(0, 256, 200, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def textured_jpeg(seed: int, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (5, 5), 0)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def test_jpeg_with_corrupt_data_is_a_bad_frame(tmp_path):
    path = tmp_path / "frame.jpg"
    opencv_decoded = 0
    for seed in range(12):
        path.write_bytes(textured_jpeg(seed))
        assert decode("files", None, str(path))[1] is None
        corrupt_jpeg(path, seed)
        opencv_decoded += cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR) is not None
        image, error = decode("files", None, str(path))
        assert image is None and error.startswith("corrupt JPEG data (libjpeg: "), (seed, error)
    assert opencv_decoded >= 6  # what was stored before: OpenCV's decoder gives most of them back


def test_corrupt_jpeg_frame_in_a_tree_is_an_error_or_a_counted_skip(tmp_path):
    root = tmp_path / "raw"
    truth = make_occurrence_tree(root, ["F001", "F002", "M001"], tasks=("T1",), frames_per_sequence=4,
                                 image_size=(64, 64))
    frame = int(truth["F002/T1"]["frame_no"][2])
    image = next(p for p in (root / "2D+" / "F002" / "T1").iterdir() if int(p.stem) == frame)
    image.write_bytes(textured_jpeg(3))
    corrupt_jpeg(image, 3)
    assert cv2.imdecode(np.fromfile(image, np.uint8), cv2.IMREAD_COLOR) is not None  # what was stored before
    with pytest.raises(DatasetError, match=rf"{re.escape(str(image))}: corrupt JPEG data \(.+\) \(use --skip-bad"):
        convert("bp4d", root, tmp_path / "o.h5", FrameOptions(image_size=16), progress=False)
    result = convert("bp4d", root, tmp_path / "o.h5", FrameOptions(image_size=16), skip_bad=True, progress=False)
    assert [(s.sequence, s.frame_no, s.kind) for s in result.skips] == [("F002/T1", frame, "bad image")]
    assert result.frames == 11


def test_jpeg_decoding_keeps_what_opencv_gave(tmp_path):
    """Same pixels as OpenCV's decoder for sound JPEGs (colour, grey, progressive); EXIF
    orientation still applied; CMYK (which the strict decoder cannot give as BGR) still read."""
    rng = np.random.default_rng(0)
    colour = cv2.GaussianBlur(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), (5, 5), 0)
    cases = {"colour.jpg": cv2.imencode(".jpg", colour)[1],
             "grey.jpg": cv2.imencode(".jpg", colour[..., 0])[1],
             "progressive.jpg": cv2.imencode(".jpg", colour, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1]}
    from PIL import Image
    Image.fromarray(colour[..., ::-1]).convert("CMYK").save(tmp_path / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(colour[..., ::-1]).save(tmp_path / "rotated.jpg", exif=exif)
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data.tobytes())
    for name in [*cases, "cmyk.jpg", "rotated.jpg"]:
        path = tmp_path / name
        image, error = decode("files", None, str(path))
        assert error is None, (name, error)
        np.testing.assert_array_equal(image, cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR), name)
    assert decode("files", None, str(tmp_path / "rotated.jpg"))[0].shape[:2] == (56, 40)


# ---- image names that cannot be read ---------------------------------------------------------

def test_image_that_is_a_symlink_loop_is_one_line_or_a_counted_skip(tmp_path, capsys):
    root = tmp_path / "raw"
    truth = make_occurrence_tree(root, ["F001", "F002", "M001"], tasks=("T1",), frames_per_sequence=4)
    frame = int(truth["F001/T1"]["frame_no"][1])
    image = next(p for p in (root / "2D+" / "F001" / "T1").iterdir() if int(p.stem) == frame)
    image.unlink()
    os.symlink(image.name, image)  # a link to itself
    args = ["convert", "bp4d", str(root), str(tmp_path / "o.h5"), "--image-size", "8", "--quiet", "--workers", "1"]
    assert main(args) == 2  # an exception here would be a traceback
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(image) in err[0] and "Too many levels of symbolic links" in err[0], err
    assert main(args + ["--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 frame(s)" in out and f"F001/T1 frame {frame}: bad image" in out
    assert len(read_back(tmp_path / "o.h5")["F001/T1"]["frame_no"]) == 3


def test_jpeg_helper_is_sound():
    """The trees' own JPEGs decode without complaint (a check of the strict decoder's false alarms)."""
    for frame in range(1, 40):
        image, error = decode_bytes(jpeg_bytes(frame))
        assert error is None and abs(image.mean() - frame_grey(frame)) < 3


def decode_bytes(data: bytes):
    from datasets_tools.convert import decode_image
    return decode_image(data)
