"""Tiny raw dataset trees in the shipped layouts, for converter tests.

Every frame image is one flat grey level that encodes its frame number (``frame_grey``), so a
test can check that each stored image came from the right source frame.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import cv2
import h5py
import numpy as np

BP4D_AUS = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
EXTRA_AUS = (5, 9, 11, 13, 16, 18, 19, 20, 22, 25, 26, 27)  # coded columns the converter must ignore
DISFA_CODED = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
DISFA_AUS = (1, 2, 4, 6, 9, 12, 25, 26)


def frame_grey(frame: int) -> int:
    return 30 + (frame * 37) % 190


def grey_image(frame: int, width: int, height: int) -> np.ndarray:
    return np.full((height, width, 3), frame_grey(frame), dtype=np.uint8)


def jpeg_bytes(frame: int, width: int = 24, height: int = 32) -> bytes:
    return cv2.imencode(".jpg", grey_image(frame, width, height))[1].tobytes()


def write_occurrence_csv(path: Path, frames, labels, aus=BP4D_AUS, extra=EXTRA_AUS, rng=None) -> None:
    """Occurrence-code file with the AU columns shuffled among extra AUs (read by header name)."""
    rng = rng or np.random.default_rng(0)
    columns = list(aus) + list(extra)
    order = rng.permutation(len(columns))
    header = ["0"] + [str(columns[i]) for i in order]
    lines = [",".join(header)]
    for frame, row in zip(frames, labels):
        values = {au: (9 if v == -1 else int(v)) for au, v in zip(aus, row)}
        values.update({au: int(rng.integers(0, 2)) for au in extra})
        lines.append(",".join([str(frame)] + [str(values[columns[i]]) for i in order]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def make_occurrence_tree(root: Path, subjects, tasks=("T1", "T2"), frames_per_sequence=6, layout="bp4d",
                         seed=0, image_size=(24, 32), intensity=False, landmarks=False) -> dict:
    """A BP4D (``layout="bp4d"``: 2D+/<subject>/<task>/<frame>.jpg, padding varying per sequence)
    or BP4D+ (``"bp4d+"``: 2D+3D/<subject>.zip) tree. -> truth {"F001/T1": {"frame_no", "label",
    "intensity", "landmarks"}}."""
    rng = np.random.default_rng(seed)
    width, height = image_size
    truth = {}
    for s_index, subject in enumerate(subjects):
        archive = None
        if layout == "bp4d+":
            (root / "2D+3D").mkdir(parents=True, exist_ok=True)
            archive = zipfile.ZipFile(root / "2D+3D" / f"{subject}.zip", "w")
        for t_index, task in enumerate(tasks):
            first = int(rng.integers(1, 500))
            frames = np.arange(first, first + frames_per_sequence, dtype=np.int32)
            label = rng.integers(0, 2, size=(len(frames), len(BP4D_AUS))).astype(np.int8)
            label[rng.random(label.shape) < 0.05] = -1
            write_occurrence_csv(root / "AUCoding" / "AU_OCC" / f"{subject}_{task}.csv", frames, label, rng=rng)
            pad = (s_index + t_index) % 4  # zero padding varies between sequences
            for frame in frames:
                name = f"{frame:0{pad}d}.jpg" if pad else f"{frame}.jpg"
                if archive is not None:
                    archive.writestr(f"{subject}/{task}/{name}", jpeg_bytes(int(frame), width, height))
                else:
                    path = root / "2D+" / subject / task / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(jpeg_bytes(int(frame), width, height))
            entry = {"frame_no": frames, "label": label, "subject": subject}
            if intensity:
                values = np.full(label.shape, -1, dtype=np.int8)
                for column in (3, 5, 6):  # AU6, AU10, AU12 have intensity files
                    au = BP4D_AUS[column]
                    codes = rng.integers(0, 6, size=len(frames))
                    codes[0] = 9
                    folder = root / "AU Intensity Codes3.0" / f"AU{au:02d}"
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / f"{subject}_{task}_AU{au:02d}.csv").write_text(
                        "".join(f"{f},{c}\n" for f, c in zip(frames, codes)))
                    values[:, column] = np.where(codes == 9, -1, codes)
                entry["intensity"] = values
            if landmarks:
                points = np.stack([rng.uniform(4, width - 4, size=(len(frames), 5)),
                                   rng.uniform(4, height - 4, size=(len(frames), 5))], axis=-1).astype(np.float32)
                write_landmarks(root / "Landmarks" / f"{subject}_{task}.csv", frames, points)
                entry["landmarks"] = points
            truth[f"{subject}/{task}"] = entry
        if archive is not None:
            archive.close()
    return truth


def write_landmarks(path: Path, frames, points: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ["frame"] + [f"{axis}{i}" for i in range(points.shape[1]) for axis in "xy"]
    rows = [",".join(header)]
    for frame, p in zip(frames, points):
        rows.append(",".join([str(frame)] + [f"{v:.4f}" for v in p.reshape(-1)]))
    path.write_text("\n".join(rows) + "\n")


def make_disfa_tree(root: Path, subjects, frames=12, source="video", camera="left", seed=0,
                    image_size=(32, 24), zero_based=True) -> dict:
    """DISFA tree: ActionUnit_Labels/SNxxx/SNxxx_auN.txt plus videos (``source="video"``) or
    extracted images (``"images"``, 0- or 1-based names). -> {"SN001": {"frame_no", "intensity"}}."""
    rng = np.random.default_rng(seed)
    width, height = image_size
    truth = {}
    for subject in subjects:
        frame_no = np.arange(1, frames + 1, dtype=np.int32)
        intensity = rng.integers(0, 6, size=(frames, len(DISFA_CODED))).astype(np.int8)
        folder = root / "ActionUnit_Labels" / subject
        folder.mkdir(parents=True, exist_ok=True)
        for column, au in enumerate(DISFA_CODED):
            (folder / f"{subject}_au{au}.txt").write_text(
                "".join(f"{f},{v}\n" for f, v in zip(frame_no, intensity[:, column])))
        if source == "video":
            side = camera.title()
            path = root / f"Videos_{side}Camera" / f"{side}Video{subject}_comp.avi"
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20, (width, height))
            for f in frame_no:
                writer.write(grey_image(int(f), width, height))
            writer.release()
        else:
            images = root / "Images_LeftCamera" / subject
            images.mkdir(parents=True, exist_ok=True)
            for f in frame_no:
                index = f - 1 if zero_based else f
                cv2.imwrite(str(images / f"{index}.png"), grey_image(int(f), width, height))
        columns = [DISFA_CODED.index(a) for a in DISFA_AUS]
        truth[subject] = {"frame_no": frame_no, "intensity": intensity[:, columns], "subject": subject}
    return truth


def read_back(path: Path) -> dict:
    """Per stored sequence name: frame_no, label, intensity, landmarks, mean grey, subject."""
    out = {}
    with h5py.File(path, "r") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f["sequences/name"][:]]
        subjects = [n.decode() if isinstance(n, bytes) else n for n in f["subjects/name"][:]]
        jpeg = f.attrs["image_format"] == "jpeg"
        for s, name in enumerate(names):
            a = int(f["sequences/start"][s])
            b = a + int(f["sequences/length"][s])
            images = f["frames/image"][a:b]
            greys = [float((cv2.imdecode(np.asarray(i), cv2.IMREAD_COLOR) if jpeg else i).mean()) for i in images]
            out[name] = {"frame_no": f["frames/frame_no"][a:b], "label": f["frames/label"][a:b],
                         "intensity": f["frames/intensity"][a:b] if "frames/intensity" in f else None,
                         "landmarks": f["frames/landmarks"][a:b] if "frames/landmarks" in f else None,
                         "grey": np.array(greys), "subject": subjects[int(f["sequences/subject"][s])],
                         "frame_subject": {subjects[i] for i in f["frames/subject"][a:b]}}
    return out


def fold_subjects(path: Path) -> list[tuple[list[str], list[str]]]:
    with h5py.File(path, "r") as f:
        def strings(ds):
            return sorted(v.decode() if isinstance(v, bytes) else v for v in ds[:])
        return [(strings(f[f"folds/fold{k}/train_subjects"]), strings(f[f"folds/fold{k}/test_subjects"]))
                for k in range(1, int(f["folds"].attrs["num_folds"]) + 1)]
