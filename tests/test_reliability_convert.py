"""Reliability of ``datasets_tools convert`` / ``verify`` under hostile but realistic use: two runs
on one output, kill -9 (of the run and of its worker pool), malformed label rows, truncated
videos, existing outputs, unwritable output paths, damaged files. Kills and concurrency use real
processes on tiny synthetic trees."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import datasets_tools
from convert_helpers import frame_grey, make_disfa_tree, make_occurrence_tree, read_back
from datasets_tools.cli import main
from datasets_tools.convert import FrameOptions, convert
from datasets_tools.errors import DatasetError
from datasets_tools.verify import verify

OPTIONS = FrameOptions(image_size=8)
SUBJECTS = ["F001", "F002", "M001", "M002"]
WAIT_S = 60  # generous bound for a subprocess to reach a point; never a timing assertion

# A real `datasets_tools convert` process that stops before adding the chunk result number AT
# (so AT - 1 sequences of one chunk each are finished) until the file GO exists; READY tells the
# test it got there. Usage: python -c HOLDING READY GO AT convert ARGS...
HOLDING = r"""
import sys, time
from pathlib import Path
import datasets_tools.convert as convert
ready, go, at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
real_add, calls = convert._SequenceBuffer.add, [0]
def add(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == at:
        ready.touch()
        while not go.exists():
            time.sleep(0.05)
    return real_add(self, *args, **kwargs)
convert._SequenceBuffer.add = add
from datasets_tools.cli import main
sys.exit(main(sys.argv[4:]))
"""


def env() -> dict:
    """The environment of a subprocess that imports the datasets_tools this test imported."""
    package_root = str(Path(datasets_tools.__file__).resolve().parents[1])
    return dict(os.environ, PYTHONPATH=package_root + os.pathsep + os.environ.get("PYTHONPATH", ""))


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datasets_tools", *map(str, args)], capture_output=True,
                          text=True, env=env(), timeout=WAIT_S)


def start_holding(tmp_path: Path, args, at: int = 3):
    """-> (process, GO file, its stdout and stderr files); files, not pipes: a killed run's children
    could keep pipes open."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    stdout, stderr = tmp_path / "holding.out", tmp_path / "holding.err"
    with open(stdout, "w") as out, open(stderr, "w") as err:
        process = subprocess.Popen([sys.executable, "-c", HOLDING, str(ready), str(go), str(at), *map(str, args)],
                                   stdout=out, stderr=err, env=env())
    deadline = time.monotonic() + WAIT_S
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError(f"holding conversion did not start: {stderr.read_text()}")
        time.sleep(0.05)
    return process, go, stdout, stderr


def convert_args(root: Path, out: Path, *extra) -> list:
    return ["convert", "bp4d", root, out, "--image-size", "8", "--quiet", "--workers", "1", *extra]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine") / "raw"
    truth = make_occurrence_tree(root, SUBJECTS, tasks=("T1",), frames_per_sequence=5)
    return root, truth


@pytest.fixture(scope="module")
def reference(pristine, tmp_path_factory):
    """The same tree converted once, undisturbed."""
    out = tmp_path_factory.mktemp("reference") / "ref.h5"
    convert("bp4d", pristine[0], out, OPTIONS, progress=False)
    return out


@pytest.fixture
def tree(pristine, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(pristine[0], root)
    return root, pristine[1]


def assert_same_frames(a: Path, b: Path) -> None:
    with h5py.File(a, "r") as x, h5py.File(b, "r") as y:
        for name in ("label", "frame_no", "subject", "sequence"):
            np.testing.assert_array_equal(x[f"frames/{name}"][:], y[f"frames/{name}"][:])
        assert len(x["frames/image"]) == len(y["frames/image"])
        assert all(np.array_equal(i, j) for i, j in zip(x["frames/image"][:], y["frames/image"][:]))
        assert dict(x.attrs).keys() == dict(y.attrs).keys()


# ---- 1. two conversions of one output exclude each other -----------------------------------

def test_second_conversion_of_the_same_output_stops_at_once(pristine, reference, tmp_path):
    root, _ = pristine
    out = tmp_path / "out.h5"
    first, go, stdout, stderr = start_holding(tmp_path, convert_args(root, out))
    try:
        partial = tmp_path / "out.h5.partial"
        inode = partial.stat().st_ino
        second = cli(*convert_args(root, out))
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in second.stderr
        assert str(out) in lines[0] and f"pid {first.pid}" in lines[0] and "another conversion" in lines[0]
        assert partial.stat().st_ino == inode  # the first run's file was left alone
    finally:
        go.touch()
        first.wait(timeout=WAIT_S)
    assert first.returncode == 0, stderr.read_text()
    assert "wrote 20 frames" in stdout.read_text()
    assert_same_frames(reference, out)
    assert verify(out, progress=False) == []
    assert not (tmp_path / "out.h5.lock").exists()


def test_killed_holder_leaves_no_stuck_lock_and_the_next_run_resumes(pristine, reference, tmp_path):
    root, _ = pristine
    out = tmp_path / "out.h5"
    first = start_holding(tmp_path, convert_args(root, out))[0]
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=WAIT_S)
    result = convert("bp4d", root, out, OPTIONS, progress=False)
    assert result.resumed_sequences == 2 and result.frames == 20
    assert_same_frames(reference, out)
    assert not (tmp_path / "out.h5.lock").exists() and not (tmp_path / "out.h5.partial").exists()


def test_a_run_never_renames_a_partial_file_it_did_not_write(pristine, tmp_path, monkeypatch):
    from datasets_tools.hdf5_writer import FrameWriter

    root, _ = pristine
    out = tmp_path / "out.h5"
    partial = tmp_path / "out.h5.partial"
    finish_sequence = FrameWriter.finish_sequence

    def finish_then_lose_the_file(self, *args):
        finish_sequence(self, *args)
        if not partial.read_bytes().startswith(b"impostor"):
            # what a second run that ignores the lock does: remove our file, start its own
            partial.unlink()
            partial.write_bytes(b"impostor: another run's half-written file")

    monkeypatch.setattr(FrameWriter, "finish_sequence", finish_then_lose_the_file)
    with pytest.raises(DatasetError, match=r"out.h5.partial: was replaced or removed by another process"):
        convert("bp4d", root, out, OPTIONS, progress=False)
    assert not out.exists() and partial.read_bytes().startswith(b"impostor")


# ---- 7. kill -9 of convert --workers 2 takes its worker pool with it ------------------------

def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            table[int(entry)] = (int(fields[1]), fields[0])
    return table


def descendants(pid: int) -> set[int]:
    table = process_table()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, (parent, _) in table.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pids) -> set[int]:
    table = process_table()
    return {p for p in pids if p in table and table[p][1] != "Z"}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_workers_exit_when_the_conversion_is_killed(pristine, tmp_path):
    root, _ = pristine
    out = tmp_path / "out.h5"
    args = convert_args(root, out)
    args[args.index("--workers") + 1] = "2"
    parent = start_holding(tmp_path, args)[0]
    children = descendants(parent.pid)  # forkserver, resource tracker, pool workers
    assert len(children) >= 3, children
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=WAIT_S)
    deadline = time.monotonic() + 20
    while running(children) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = running(children)
    for pid in left:  # do not leave them behind for the rest of the test session
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after the conversion was killed: {sorted(left)}"


# ---- 4. an existing output is replaced only with --overwrite, side files together -----------

def test_existing_output_is_refused_without_overwrite(tree, tmp_path):
    root, _ = tree
    out = tmp_path / "out.h5"
    out.write_text("my notes, not an HDF5 file")
    refused = cli(*convert_args(root, out))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"datasets_tools convert: error: {out}: output already exists; pass --overwrite to replace it "
        "(and its .skipped.txt)"]
    assert out.read_text() == "my notes, not an HDF5 file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5", "raw"]  # no work was done
    replaced = cli(*convert_args(root, out, "--overwrite"))
    assert replaced.returncode == 0, replaced.stderr
    assert verify(out, progress=False) == []


def test_overwrite_replaces_the_skipped_listing_with_the_output(tree, tmp_path):
    root, truth = tree
    out = tmp_path / "out.h5"
    listing = tmp_path / "out.h5.skipped.txt"
    folder = root / "2D+" / "F001" / "T1"
    image = next(p for p in folder.iterdir() if int(p.stem) == int(truth["F001/T1"]["frame_no"][2]))
    kept = image.read_bytes()
    image.unlink()
    first = cli(*convert_args(root, out, "--skip-bad"))
    assert first.returncode == 0, first.stderr
    frame = int(truth["F001/T1"]["frame_no"][2])
    assert "skipped 1 frame(s)" in first.stdout
    assert [line.split(":")[0] for line in listing.read_text().splitlines()] == [f"F001/T1 frame {frame}"]
    image.write_bytes(kept)
    second = cli(*convert_args(root, out, "--skip-bad", "--overwrite"))
    assert second.returncode == 0, second.stderr
    assert "skipped 0 frame(s)" in second.stdout
    assert not listing.exists()  # the old listing described the old file
    with h5py.File(out, "r") as f:
        assert len(f["frames/label"]) == 20 and f.attrs["skipped_frames"] == 0


def test_resuming_a_partial_needs_no_overwrite(pristine, reference, tmp_path):
    root, _ = pristine
    out = tmp_path / "out.h5"
    with pytest.raises(RuntimeError, match="injected failure"):
        convert("bp4d", root, out, OPTIONS, progress=False, fail_after_sequences=2)
    resumed = cli(*convert_args(root, out))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed after 2 finished sequence(s)" in resumed.stdout
    assert_same_frames(reference, out)


# ---- a write the file system refuses (ulimit -f): one line; the rerun starts over -------------

def convert_limited(args, limit: int) -> subprocess.CompletedProcess:
    """A real conversion whose files may not grow past `limit` bytes (ulimit -f)."""
    import resource

    return subprocess.run([sys.executable, "-m", "datasets_tools", *map(str, args)], capture_output=True, text=True,
                          env=env(), timeout=WAIT_S,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))


@pytest.mark.parametrize("limit, rerun", [(4000, ()), (16000, ()), (30000, ("--overwrite",))])
def test_file_size_limit_is_one_line_and_a_damaged_partial_is_started_over(pristine, reference, tmp_path, limit,
                                                                           rerun):
    root, _ = pristine
    out = tmp_path / "out.h5"
    partial = tmp_path / "out.h5.partial"
    failed = convert_limited(convert_args(root, out), limit)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr
    assert failed.stderr.strip().splitlines() == [
        f"datasets_tools convert: error: {partial}: cannot write (File too large: is the disk full, or a file-size "
        "limit such as ulimit -f reached?); rerun the same command when there is room: it resumes after the last "
        "finished sequence, or starts over if this file was damaged"]
    assert partial.exists() and not out.exists()
    again = cli(*convert_args(root, out, *rerun))
    assert again.returncode == 0, again.stderr
    assert f"warning: {partial}: cannot resume from it: it is damaged (" in again.stderr
    assert "starting over" in again.stderr and "Traceback" not in again.stderr
    assert_same_frames(reference, out)
    assert not partial.exists()


@pytest.mark.parametrize("command", ["info", "stats", "verify"])
def test_a_folder_where_the_h5_file_belongs_is_named_as_a_folder(tmp_path, capsys, command):
    assert main([command, str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"datasets_tools {command}: error: {tmp_path}: is a folder; expected the .h5 file datasets_tools "
                     "convert writes (a raw dataset folder is converted with: datasets_tools convert LAYOUT FOLDER "
                     "OUT.h5)"]


# ---- 5. unusable output paths: one line, before any work -----------------------------------

def test_unusable_output_paths_fail_before_any_work(tree, tmp_path, capsys):
    root, _ = tree
    folder = tmp_path / "a_folder.h5"
    folder.mkdir()
    (tmp_path / "notes.txt").write_text("a file")
    cases = [(folder, f"{folder}: the output is a folder; name a file in it"),
             (tmp_path / "notes.txt" / "out.h5", f"{tmp_path / 'notes.txt'}: output folder is a file, not a folder"),
             (tmp_path / "no" / "such" / "out.h5", f"{tmp_path / 'no' / 'such'}: output folder does not exist")]
    for out, message in cases:
        assert main([str(a) for a in convert_args(root, out)]) == 2  # an exception here would be a traceback
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_folder.h5", "notes.txt", "raw"]
    assert list(folder.iterdir()) == []


AS_NOBODY = r"""
import os, sys
from datasets_tools.cli import build_parser, main
build_parser()  # imports every module it needs while the interpreter's files are still readable
if os.geteuid() == 0:
    os.setgid(65534)
    os.setuid(65534)
sys.exit(main(sys.argv[1:]))
"""


def test_read_only_output_folder_as_a_normal_user(pristine):
    """What a non-root user sees (the tests run as root, for whom chmod 555 changes nothing)."""
    base = Path(tempfile.mkdtemp(prefix="aubench-readonly-"))
    try:
        base.chmod(0o755)
        root = base / "raw"
        shutil.copytree(pristine[0], root)
        readonly = base / "readonly"
        readonly.mkdir(mode=0o555)
        readonly.chmod(0o555)
        result = subprocess.run([sys.executable, "-c", AS_NOBODY, *map(str, convert_args(root, readonly / "out.h5"))],
                                capture_output=True, text=True, env=env(), timeout=WAIT_S)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().splitlines() == [
            f"datasets_tools convert: error: {readonly}: output folder is not writable (permission denied)"]
        assert list(readonly.iterdir()) == []
    finally:
        shutil.rmtree(base)


# ---- 6. verify on a damaged file: a clear failure, no traceback -----------------------------

def damaged_copy(source: Path, tmp_path: Path, offset: int) -> Path:
    damaged = tmp_path / "damaged.h5"
    shutil.copy(source, damaged)
    with open(damaged, "r+b") as f:
        f.seek(offset)
        f.write(bytes(np.random.default_rng(offset).integers(0, 256, 4096, dtype=np.uint8)))
    return damaged


@pytest.mark.parametrize("workers", ["1", "2"])
def test_verify_reports_unreadable_heap_without_traceback(reference, tmp_path, workers):
    # garbage over the first global heap collection (variable-length data: the JPEG frames)
    damaged = damaged_copy(reference, tmp_path, reference.read_bytes().index(b"GCOL"))
    result = cli("verify", damaged, "--quiet", "--workers", workers)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"{damaged}: ") and "problem(s)" in lines[0]
    assert any("cannot be read" in line for line in lines[1:]), lines


def test_verify_garbage_anywhere_is_never_a_traceback(reference, tmp_path, capsys):
    size = reference.stat().st_size
    for offset in (size // 10, size // 3, size // 2, 2 * size // 3, 9 * size // 10):
        damaged = damaged_copy(reference, tmp_path, offset)
        code = main(["verify", str(damaged), "--quiet", "--workers", "1"])  # an exception fails the test
        out, err = capsys.readouterr()
        # damage in JPEG bytes that still decode is invisible without checksums; the rest is reported
        assert code == 0 and out.strip() == f"{damaged}: OK" or \
            code == 1 and err.startswith(f"{damaged}: ") and "problem(s)" in err, (offset, out, err)


# ---- 2. every CSV row has exactly the header's number of cells ------------------------------

def label_file(root: Path, name: str = "F001_T1") -> Path:
    return root / "AUCoding" / "AU_OCC" / f"{name}.csv"


def edit_lines(path: Path, edit) -> None:
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")


def merge_rows(lines, i=2):
    """Rows i and i + 1 on one line (an export that lost a line break)."""
    lines[i] += "," + lines.pop(i + 1)


def short_then_long(lines, i=2):
    """Row i lost its second cell, row i + 1 gained one in front: the number of cells in the file
    is unchanged, and read as one flat list every value of row i moves one column left."""
    cells = lines[i].split(",")
    lines[i] = ",".join(cells[:1] + cells[2:])
    lines[i + 1] = "1," + lines[i + 1]


def run(root: Path, tmp_path: Path, **kw):
    return convert("bp4d", root, tmp_path / "out.h5", OPTIONS, progress=False, **kw)


def test_merged_label_rows_are_an_error_or_a_counted_skip(tree, tmp_path):
    root, _ = tree
    path = label_file(root)
    edit_lines(path, merge_rows)
    with pytest.raises(DatasetError, match=rf"{path.name}, line 3: too many values \(rows merged onto one line\?\)"):
        run(root, tmp_path)
    result = run(root, tmp_path, skip_bad=True)
    assert [(s.kind, s.sequence) for s in result.skips] == [("bad label row", "F001/T1")]
    assert result.frames == 18  # the merged line held two frames


def test_short_row_then_long_row_never_shifts_labels(tree, tmp_path):
    root, truth = tree
    path = label_file(root)
    edit_lines(path, short_then_long)
    with pytest.raises(DatasetError, match=rf"{path.name}, line 3: truncated row: expected 25 values, found 24"):
        run(root, tmp_path)
    result = run(root, tmp_path, skip_bad=True)
    assert sorted(s.kind for s in result.skips) == ["bad label row"] * 2 and result.frames == 18
    stored = read_back(tmp_path / "out.h5")["F001/T1"]
    expected = truth["F001/T1"]
    keep = [0, 3, 4]
    np.testing.assert_array_equal(stored["frame_no"], expected["frame_no"][keep])
    np.testing.assert_array_equal(stored["label"], expected["label"][keep])


@pytest.mark.parametrize("edit", [merge_rows, short_then_long])
def test_disfa_label_rows_have_two_cells(tmp_path, edit):
    root = tmp_path / "raw"
    make_disfa_tree(root, ["SN001", "SN002", "SN003"], frames=6)
    path = root / "ActionUnit_Labels" / "SN002" / "SN002_au4.txt"
    edit_lines(path, edit)
    with pytest.raises(DatasetError, match=rf"{path.name}, line 3: (too many values|truncated row)"):
        convert("disfa", root, tmp_path / "d.h5", OPTIONS, progress=False)


def test_intensity_rows_have_two_cells(tmp_path):
    root = tmp_path / "raw"
    make_occurrence_tree(root, SUBJECTS, tasks=("T1",), frames_per_sequence=5, intensity=True)
    path = root / "AU Intensity Codes3.0" / "AU06" / "F002_T1_AU06.csv"
    edit_lines(path, short_then_long)
    with pytest.raises(DatasetError, match=rf"{path.name}, line 3: truncated row: expected 2 values, found 1"):
        run(root, tmp_path)


def test_landmark_rows_have_the_header_width(tmp_path):
    root = tmp_path / "raw"
    make_occurrence_tree(root, SUBJECTS, tasks=("T1",), frames_per_sequence=5, landmarks=True)
    path = root / "Landmarks" / "M001_T1.csv"
    edit_lines(path, short_then_long)
    with pytest.raises(DatasetError, match=rf"{path.name}, line 3: truncated row: expected 11 values, found 10"):
        run(root, tmp_path)


def test_unknown_numeric_au_column_is_named(tree, tmp_path):
    root, _ = tree
    path = label_file(root)

    def add_column_150(lines):
        lines[0] += ",150"
        for i in range(1, len(lines)):
            lines[i] += ",0"

    edit_lines(path, add_column_150)
    with pytest.raises(DatasetError, match=rf"{path.name}, line 1: unknown AU column '150' \(header cell 26\)"):
        run(root, tmp_path)


def test_missing_header_row_is_reported_as_missing(tree, tmp_path):
    root, _ = tree
    path = label_file(root, "M002_T1")
    edit_lines(path, lambda lines: lines.pop(0))
    with pytest.raises(DatasetError, match=rf"{path.name}, line 1: no header row"):
        run(root, tmp_path)


@pytest.mark.parametrize("dataset", ["mme", "bp4d-plus"])
def test_bp4d_tree_is_not_converted_as_mme_or_bp4d_plus(tmp_path, dataset):
    root = tmp_path / "raw"
    make_occurrence_tree(root, SUBJECTS, tasks=("T1", "T2", "T3"), frames_per_sequence=3)
    with pytest.raises(DatasetError, match=r"AU_OCC: label files for task\(s\) T2, T3 \(e.g. F001_T2.csv\), which "
                                           r".* does not code .*this looks like a BP4D tree: convert it as bp4d"):
        convert(dataset, root, tmp_path / "out.h5", OPTIONS, progress=False)


# ---- 3. a truncated video: a partly decoded frame is never stored ---------------------------

def truncate_last_frame(video: Path, keep: float = 0.9) -> None:
    """Cut the file inside its last frame's bytes (the index after it goes too), as an
    interrupted copy does."""
    data = video.read_bytes()
    last = data.rfind(b"00dc", 0, data.rfind(b"idx1"))
    size = int.from_bytes(data[last + 4:last + 8], "little")
    video.write_bytes(data[:last + 8 + int(size * keep)])


def test_truncated_disfa_video_is_an_error_or_counted_skips(tmp_path):
    root = tmp_path / "raw"
    truth = make_disfa_tree(root, ["SN001", "SN002", "SN003"], frames=6)
    video = root / "Videos_LeftCamera" / "LeftVideoSN002_comp.avi"
    truncate_last_frame(video)
    with pytest.raises(DatasetError, match=rf"{video.name}: the video file is truncated: only its first 5 of 6 "
                                           r"frames are whole"):
        convert("disfa", root, tmp_path / "d.h5", OPTIONS, progress=False)
    result = convert("disfa", root, tmp_path / "d.h5", OPTIONS, progress=False, skip_bad=True)
    assert [(s.sequence, s.frame_no, s.kind) for s in result.skips] == [("SN002", 6, "truncated video")]
    assert result.frames == 17
    stored = read_back(tmp_path / "d.h5")
    for name, expected in truth.items():
        keep = slice(0, 5) if name == "SN002" else slice(None)
        np.testing.assert_array_equal(stored[name]["frame_no"], expected["frame_no"][keep])
        greys = np.array([frame_grey(int(f)) for f in expected["frame_no"][keep]])
        assert np.abs(stored[name]["grey"] - greys).max() <= 4  # every stored frame is the whole frame


def test_avi_frames_in_place_counts_only_complete_frames(tmp_path):
    from datasets_tools.disfa import avi_frames_in_place

    make_disfa_tree(tmp_path / "raw", ["SN001"], frames=6)
    video = tmp_path / "raw" / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi"
    assert avi_frames_in_place(video) is None  # complete
    data = video.read_bytes()
    video.write_bytes(data[:data.rfind(b"idx1") + 4])  # only the index is cut: every frame is whole
    assert avi_frames_in_place(video) == (6, "truncated")
    video.write_bytes(data)
    truncate_last_frame(video, keep=0.5)
    assert avi_frames_in_place(video) == (5, "truncated")
    (tmp_path / "other.avi").write_bytes(b"not a RIFF file at all")
    assert avi_frames_in_place(tmp_path / "other.avi") is None


@pytest.mark.parametrize("command", ["stats", "info"])
def test_stats_and_info_on_a_damaged_file_are_one_line_errors(reference, tmp_path, command):
    data = reference.read_bytes()
    damaged = damaged_copy(reference, tmp_path, data.rindex(b"GCOL"))  # the strings' heap: names
    result = cli(command, damaged)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert f"{damaged}: cannot read" in result.stderr and "datasets_tools verify" in result.stderr
