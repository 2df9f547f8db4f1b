"""Real BP4D and DISFA labels (../shared/data/au_labels) through the converter.

The raw trees are built in the shipped layouts from the real label lists: BP4D occurrence-code
CSVs (with extra AU columns, read by header name) and DISFA per-AU intensity files (intensity
2 for a positive label, 0 otherwise, so intensity >= 2 gives the label back). Images are tiny:
one 8x8 JPEG/PNG per sequence, hard-linked as every frame of that sequence (the converter still
reads, decodes and stores every frame). The converted file must give back every source label
exactly, with the standard folds, and ``stats`` must count 1693 (BP4D) and 102 (DISFA)
distinct AU combinations, the counts the Knowledge-Spreader paper reports: distinct label rows
over all frames.
"""

import gzip
import json
import os
from collections import defaultdict

import cv2
import h5py
import numpy as np
import pytest

from datasets_tools.cli import main
from datasets_tools.convert import FrameOptions, convert
from datasets_tools.folds import BP4D_TEST_FOLDS, DISFA_TEST_FOLDS

BP4D_AUS = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
DISFA_AUS = (1, 2, 4, 6, 9, 12, 25, 26)


def read_lists(folder, prefix):
    """-> {(subject, sequence-or-None, frame): label row} and per-fold subject sets."""
    rows, folds = {}, []
    for k in (1, 2, 3):
        with gzip.open(folder / f"{prefix}_test_img_path_fold{k}.txt.gz", "rt") as f:
            paths = f.read().split()
        labels = np.loadtxt(gzip.open(folder / f"{prefix}_test_label_fold{k}.txt.gz"), dtype=np.int8)
        assert len(paths) == len(labels)
        subjects = set()
        for path, label in zip(paths, labels):
            parts = path.split("/")
            subjects.add(parts[0])
            frame = int(parts[-1].split(".")[0])
            rows[(parts[0], parts[1] if len(parts) == 3 else None, frame)] = label
        folds.append(sorted(subjects))
    return rows, folds


def stored_rows(out):
    with h5py.File(out, "r") as f:
        names = [n.decode() for n in f["sequences/name"][:]]
        sequence, frame_no, label = f["frames/sequence"][:], f["frames/frame_no"][:], f["frames/label"][:]
        folds = [sorted(v.decode() for v in f[f"folds/fold{k}/test_subjects"][:]) for k in (1, 2, 3)]
        split = f["folds"].attrs["split_source"]
    return names, sequence, frame_no, label, folds, split


@pytest.mark.slow
def test_real_bp4d_labels_round_trip(shared_data, tmp_path, capsys):
    rows, folds = read_lists(shared_data / "au_labels" / "bp4d", "BP4D")
    root = tmp_path / "BP4D"
    by_sequence = defaultdict(list)
    for (subject, task, frame), label in rows.items():
        by_sequence[(subject, task)].append((frame, label))
    header = ["0"] + [str(a) for a in (27, *BP4D_AUS[::-1], 5)]  # extra columns, shuffled order
    labels_dir = root / "AUCoding" / "AU_OCC"
    labels_dir.mkdir(parents=True)
    for i, ((subject, task), frames) in enumerate(sorted(by_sequence.items())):
        frames.sort()
        lines = [",".join(header)]
        for frame, label in frames:
            value = dict(zip(BP4D_AUS, label.tolist()))
            lines.append(",".join([str(frame), "0"] + [str(value[a]) for a in BP4D_AUS[::-1]] + ["1"]))
        (labels_dir / f"{subject}_{task}.csv").write_text("\n".join(lines) + "\n")
        folder = root / "2D+" / subject / task
        folder.mkdir(parents=True)
        source = tmp_path / f"seq{i}.jpg"
        cv2.imwrite(str(source), np.full((8, 8, 3), i % 250, np.uint8))
        for frame, _ in frames:
            os.link(source, folder / f"{frame:04d}.jpg")

    out = tmp_path / "bp4d.h5"
    result = convert("bp4d", root, out, FrameOptions(image_size=8, crop="none"), progress=False)
    assert result.frames == len(rows) == 146847 and result.sequences == 328 and result.subjects == 41
    names, sequence, frame_no, label, stored_folds, split = stored_rows(out)
    got = {}
    for s, f, row in zip(sequence, frame_no, label):
        subject, task = names[s].split("/")
        got[(subject, task, int(f))] = row
    assert got.keys() == rows.keys()
    assert all(np.array_equal(got[key], value) for key, value in rows.items())
    assert stored_folds == folds == [sorted(f) for f in BP4D_TEST_FOLDS]
    assert split.startswith("standard BP4D")
    assert main(["stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["distinct_combinations"] == 1693
    assert stats["frames"] == 146847 and stats["subjects"] == 41 and stats["sequences"] == 328


@pytest.mark.slow
def test_real_disfa_labels_round_trip(shared_data, tmp_path, capsys):
    rows, folds = read_lists(shared_data / "au_labels" / "disfa", "DISFA")
    root = tmp_path / "DISFA"
    by_subject = defaultdict(list)
    for (subject, _, index), label in rows.items():
        by_subject[subject].append((index, label))
    for i, (subject, frames) in enumerate(sorted(by_subject.items())):
        frames.sort()
        assert [f for f, _ in frames] == list(range(len(frames)))  # 0-based, no gaps
        intensity = 2 * np.stack([label for _, label in frames])
        folder = root / "ActionUnit_Labels" / subject
        folder.mkdir(parents=True)
        for column, au in enumerate(DISFA_AUS):
            (folder / f"{subject}_au{au}.txt").write_text(
                "".join(f"{k + 1},{v}\n" for k, v in enumerate(intensity[:, column].tolist())))
        images = root / "Images_LeftCamera" / subject
        images.mkdir(parents=True)
        source = tmp_path / f"{subject}.png"
        cv2.imwrite(str(source), np.full((8, 8, 3), 9 * i, np.uint8))
        for index, _ in frames:
            os.link(source, images / f"{index}.png")

    out = tmp_path / "disfa.h5"
    result = convert("disfa", root, out, FrameOptions(image_size=8, crop="none"), progress=False)
    assert result.frames == len(rows) == 130814 and result.subjects == 27
    names, sequence, frame_no, label, stored_folds, split = stored_rows(out)
    got = {(names[s], None, int(f) - 1): row for s, f, row in zip(sequence, frame_no, label)}
    assert got.keys() == rows.keys()
    assert all(np.array_equal(got[key], value) for key, value in rows.items())
    assert stored_folds == folds == [sorted(f) for f in DISFA_TEST_FOLDS]
    assert split.startswith("standard DISFA")
    assert main(["stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["distinct_combinations"] == 102 and stats["frames"] == 130814
