"""Bad input: every case gets a clear error naming the file (and line), or with --skip-bad a
counted skip in the report; nothing is dropped silently. The CLI exits non-zero, no traceback."""

import shutil

import h5py
import pytest

from convert_helpers import make_disfa_tree, make_occurrence_tree, write_landmarks
from datasets_tools.cli import main
from datasets_tools.convert import FrameOptions, convert
from datasets_tools.errors import DatasetError
from datasets_tools.faces import haar_unavailable_reason

OPTIONS = FrameOptions(image_size=8)
SUBJECTS = ["F001", "F002", "M001", "M002"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine") / "raw"
    truth = make_occurrence_tree(root, SUBJECTS, tasks=("T1",), frames_per_sequence=5)
    return root, truth


@pytest.fixture
def tree(pristine, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(pristine[0], root)
    return root, pristine[1]


def label_file(root, name="F001_T1"):
    return root / "AUCoding" / "AU_OCC" / f"{name}.csv"


def set_cell(path, line: int, column: int, value: str) -> list[list[str]]:
    """Rewrite the CSV file `path` with cell (line, column) (0-based) set to `value`; its rows' cells."""
    rows = [text.split(",") for text in path.read_text().splitlines()]
    rows[line][column] = value
    path.write_text("\n".join(",".join(cells) for cells in rows) + "\n")
    return rows


def image_path(root, truth, name="F001/T1", index=2):
    frame = int(truth[name]["frame_no"][index])
    folder = root / "2D+" / name
    return next(p for p in folder.iterdir() if int(p.stem) == frame), frame


def run(root, tmp_path, **kw):
    return convert("bp4d", root, tmp_path / "out.h5", OPTIONS, progress=False, **kw)


def test_missing_image(tree, tmp_path):
    root, truth = tree
    path, frame = image_path(root, truth)
    path.unlink()
    message = rf"F001[/\\]T1.*1 labelled frame\(s\) of F001/T1 have no image.*frame {frame}"
    with pytest.raises(DatasetError, match=message):
        run(root, tmp_path)
    result = run(root, tmp_path, skip_bad=True)
    assert result.frames == 19 and len(result.skips) == 1
    assert result.skips[0].kind == "missing image" and result.skips[0].frame_no == frame
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert frame not in f["frames/frame_no"][:5] and f.attrs["skipped_frames"] == 1


def test_corrupt_image(tree, tmp_path):
    root, truth = tree
    path, frame = image_path(root, truth)
    path.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DatasetError, match=rf"{path.name}: corrupt JPEG data"):
        run(root, tmp_path)
    assert not (tmp_path / "out.h5").exists()
    result = run(root, tmp_path, skip_bad=True)
    assert [(s.kind, s.frame_no) for s in result.skips] == [("bad image", frame)]
    assert result.frames == 19


def test_empty_image_file(tree, tmp_path):
    root, truth = tree
    path, _ = image_path(root, truth, index=0)
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match="corrupt image"):
        run(root, tmp_path)


def test_truncated_csv_row(tree, tmp_path):
    root, _ = tree
    path = label_file(root)
    lines = path.read_text().splitlines()
    lines[3] = lines[3][:5]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=rf"{path.name}, line 4: truncated row"):
        run(root, tmp_path)
    result = run(root, tmp_path, skip_bad=True)
    assert [s.kind for s in result.skips] == ["bad label row"] and result.frames == 19


def test_truncated_file_mid_row(tree, tmp_path):
    root, _ = tree
    path = label_file(root)
    text = path.read_text()
    path.write_text(text[: len(text) - 9])  # cut inside the last row
    with pytest.raises(DatasetError, match=rf"{path.name}, line 6: truncated row"):
        run(root, tmp_path)


def test_non_numeric_csv_value(tree, tmp_path):
    root, _ = tree
    path = label_file(root)
    rows = set_cell(path, 2, 1, "x")
    with pytest.raises(DatasetError, match=rf"{path.name}, line 3: non-numeric value 'x': expected an integer "
                                           rf"occurrence code \(0, 1 or 9\) for AU{rows[0][1]}"):
        run(root, tmp_path)
    set_cell(path, 2, 1, "0.5")
    set_cell(path, 2, 0, "1.5")
    with pytest.raises(DatasetError, match=rf"{path.name}, line 3: non-numeric value '1.5': expected an integer "
                                           rf"frame number"):
        run(root, tmp_path)


def test_fractional_occurrence_code_says_what_is_expected(tree, tmp_path):
    root, _ = tree
    path = label_file(root)
    set_cell(path, 2, 2, "0.5")
    with pytest.raises(DatasetError, match=r"non-numeric value '0.5': expected an integer occurrence code "
                                           r"\(0, 1 or 9\)"):
        run(root, tmp_path)


def test_invalid_occurrence_code(tree, tmp_path):
    root, _ = tree
    path = label_file(root)
    set_cell(path, 1, path.read_text().splitlines()[0].split(",").index("4"), "7")
    with pytest.raises(DatasetError, match=rf"{path.name}, line 2: occurrence code 7 is not 0, 1 or 9"):
        run(root, tmp_path)


def test_duplicate_frame_row(tree, tmp_path):
    root, truth = tree
    path = label_file(root)
    lines = path.read_text().splitlines()
    lines.insert(3, lines[1])
    path.write_text("\n".join(lines) + "\n")
    frame = int(truth["F001/T1"]["frame_no"][0])
    with pytest.raises(DatasetError, match=rf"{path.name}, line 4: duplicate frame {frame}"):
        run(root, tmp_path)
    result = run(root, tmp_path, skip_bad=True)
    assert [(s.kind, s.frame_no) for s in result.skips] == [("duplicate frame", frame)]
    assert result.frames == 20


def test_duplicate_image_by_padding(tree, tmp_path):
    root, truth = tree
    path, frame = image_path(root, truth)
    shutil.copy(path, path.with_name(f"{frame:06d}.jpg"))
    with pytest.raises(DatasetError, match=rf"duplicate frame {frame}"):
        run(root, tmp_path)


@pytest.mark.parametrize("cell", ["AU1", "x", "1.5"])
def test_unknown_au_column(tree, tmp_path, cell):
    root, _ = tree
    path = label_file(root)
    set_cell(path, 0, 3, cell)
    with pytest.raises(DatasetError, match=rf"{path.name}, line 1: unknown AU column '{cell}' \(header cell 4\)"):
        run(root, tmp_path)


def test_missing_au_column(tree, tmp_path):
    root, _ = tree
    path = label_file(root)
    rows = [line.split(",") for line in path.read_text().splitlines()]
    drop = rows[0].index("24")
    path.write_text("\n".join(",".join(c for i, c in enumerate(r) if i != drop) for r in rows) + "\n")
    with pytest.raises(DatasetError, match=rf"{path.name}, line 1: missing AU column\(s\) AU24"):
        run(root, tmp_path)


def test_empty_root_and_misnamed_label_folder(tmp_path, tree):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match=rf"{empty}: no occurrence-code folder found"):
        run(empty, tmp_path)
    root, _ = tree
    (root / "AUCoding" / "AU_OCC").rename(root / "AUCoding" / "Codes")
    (root / "AUCoding").rename(root / "Labels")
    with pytest.raises(DatasetError, match="no occurrence-code folder found"):
        run(root, tmp_path)


def test_empty_label_folder(tmp_path):
    root = tmp_path / "raw"
    (root / "AUCoding" / "AU_OCC").mkdir(parents=True)
    (root / "AUCoding" / "AU_OCC" / "notes.txt").write_text("nothing")
    with pytest.raises(DatasetError, match="no occurrence-code folder found"):
        run(root, tmp_path)


def test_missing_or_misnamed_image_folder(tree, tmp_path):
    root, _ = tree
    (root / "2D+" / "F002" / "T1").rename(root / "2D+" / "F002" / "Task1")
    with pytest.raises(DatasetError, match=r"F002_T1.csv: no image folder F002/T1/ found"):
        run(root, tmp_path)
    result = run(root, tmp_path, skip_bad=True)
    assert [s.kind for s in result.skips] == ["missing images"] and result.sequences == 3
    shutil.rmtree(root / "2D+")
    with pytest.raises(DatasetError, match="no image folders found"):
        run(root, tmp_path, overwrite=True)  # out.h5 exists now: without the flag it is refused first


def test_disfa_video_shorter_than_labels(tmp_path):
    root = tmp_path / "raw"
    make_disfa_tree(root, ["SN001", "SN002", "SN003"], frames=6)
    make_disfa_tree(tmp_path / "short", ["SN002"], frames=4)
    video = root / "Videos_LeftCamera" / "LeftVideoSN002_comp.avi"
    shutil.copy(tmp_path / "short" / "Videos_LeftCamera" / "LeftVideoSN002_comp.avi", video)
    with pytest.raises(DatasetError, match=r"SN002_au1.txt: label files of SN002 cover 6 frames .* video has 4"):
        convert("disfa", root, tmp_path / "d.h5", OPTIONS, progress=False)
    result = convert("disfa", root, tmp_path / "d.h5", OPTIONS, progress=False, skip_bad=True)
    assert sorted(s.frame_no for s in result.skips) == [5, 6] and result.frames == 16
    assert any("video has 4 frames" in note for note in result.notes)


def test_disfa_au_files_disagree(tmp_path):
    root = tmp_path / "raw"
    make_disfa_tree(root, ["SN001", "SN002", "SN003"], frames=6)
    path = root / "ActionUnit_Labels" / "SN003" / "SN003_au12.txt"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(DatasetError, match=r"SN003_au1.txt: frame count disagrees with SN003_au1.txt|"
                                           r"SN003_au\d+.txt: frame count disagrees"):
        convert("disfa", root, tmp_path / "d.h5", OPTIONS, progress=False)


def test_disfa_bad_intensity_line(tmp_path):
    root = tmp_path / "raw"
    make_disfa_tree(root, ["SN001", "SN002", "SN003"], frames=6)
    path = root / "ActionUnit_Labels" / "SN001" / "SN001_au4.txt"
    lines = path.read_text().splitlines()
    lines[2] = "3,seven"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"SN001_au4.txt, line 3: non-numeric value"):
        convert("disfa", root, tmp_path / "d.h5", OPTIONS, progress=False)


def test_disfa_missing_au_file_and_missing_videos(tmp_path):
    root = tmp_path / "raw"
    make_disfa_tree(root, ["SN001", "SN002", "SN003"], frames=6)
    (root / "ActionUnit_Labels" / "SN002" / "SN002_au26.txt").unlink()
    with pytest.raises(DatasetError, match=r"SN002: missing label file\(s\) for AU26"):
        convert("disfa", root, tmp_path / "d.h5", OPTIONS, progress=False)
    shutil.rmtree(root / "Videos_LeftCamera")
    with pytest.raises(DatasetError, match="no left-camera videos"):
        convert("disfa", root, tmp_path / "d.h5", OPTIONS, progress=False)


def test_bad_landmarks_file(tree, tmp_path):
    root, truth = tree
    import numpy as np
    frames = truth["F001/T1"]["frame_no"]
    path = root / "Landmarks" / "F001_T1.csv"
    write_landmarks(path, frames, np.ones((len(frames), 3, 2), np.float32))
    lines = path.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"F001_T1.csv, line 3: truncated row: expected 7 values, found 6"):
        run(root, tmp_path)


def test_landmark_crop_needs_landmarks(tree, tmp_path):
    root, _ = tree
    for crop in ("landmarks", "align"):
        with pytest.raises(DatasetError, match=f"--crop {crop} needs landmarks: landmark files.*--landmarks detect"):
            convert("bp4d", root, tmp_path / "o.h5", FrameOptions(image_size=8, crop=crop), progress=False)
    with pytest.raises(DatasetError, match="--crop landmarks needs landmarks"):
        convert("bp4d", root, tmp_path / "o.h5", FrameOptions(image_size=8, crop="landmarks", landmarks="none"),
                progress=False)
    for mode in ("none", "detect"):
        with pytest.raises(DatasetError, match=f"--landmarks {mode} with a landmarks folder"):
            convert("bp4d", root, tmp_path / "o.h5", FrameOptions(image_size=8, landmarks=mode),
                    landmarks_dir=root / "Landmarks", progress=False)
    with pytest.raises(DatasetError, match="--landmarks 'guess': choose one of file, detect, none"):
        convert("bp4d", root, tmp_path / "o.h5", FrameOptions(image_size=8, landmarks="guess"), progress=False)
    with pytest.raises(DatasetError, match="landmarks folder \\(--landmarks-dir\\) not found"):
        run(root, tmp_path, landmarks_dir=tmp_path / "nowhere")


@pytest.mark.skipif(haar_unavailable_reason() is None, reason="OpenCV here has Haar cascades")
def test_haar_crop_without_cascades_is_a_clear_error(tree, tmp_path):
    root, _ = tree
    with pytest.raises(DatasetError, match="--crop haar needs OpenCV's Haar cascade"):
        convert("bp4d", root, tmp_path / "o.h5", FrameOptions(image_size=8, crop="haar"), progress=False)


def test_cli_errors_exit_nonzero_without_traceback(tree, tmp_path, capsys):
    root, _ = tree
    label_file(root).write_text("0,1,2,foo\n1,0,0,0\n")
    assert main(["convert", "bp4d", str(root), str(tmp_path / "o.h5"), "--quiet", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "F001_T1.csv, line 1: unknown AU column 'foo'" in err and "Traceback" not in err
    assert main(["convert", "bp4d", str(tmp_path / "nowhere"), str(tmp_path / "o.h5"), "--quiet"]) == 2
    assert "raw dataset folder not found" in capsys.readouterr().err
    assert main(["convert", "bp4d", str(root), str(tmp_path / "no" / "o.h5"), "--quiet"]) == 2
    assert "output folder does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "bp4d", str(root), str(tmp_path / "o.h5"), "--image-size", "0"])
    assert exit_info.value.code == 2 and "--image-size" in capsys.readouterr().err
    (tmp_path / "junk.h5").write_bytes(b"junk")
    for command in ("verify", "stats", "info"):
        assert main([command, str(tmp_path / "junk.h5")]) == 2
        err = capsys.readouterr().err
        assert "junk.h5: not a readable HDF5 file" in err and "Traceback" not in err
    assert main(["verify", str(tmp_path / "missing.h5")]) == 2
    assert "missing.h5: no such file" in capsys.readouterr().err
