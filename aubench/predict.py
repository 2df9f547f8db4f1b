"""`aubench predict`: a trained run on real videos and photos, one OpenFace-style CSV per input.

`Predictor.from_run` rebuilds the run's tested network from its recorded method, preset and
final weights (loaded with weights_only=True) and reads the training file's conversion settings.
Each face found in a frame is prepared by the converter's own face preparation for that file
(datasets_tools.face_pipeline: the same crop, size, margin and landmark points), then resized and
cropped to the preset's size as the engine's test datasets do, so the network sees faces as it
saw its test faces.

- Faces: dlib's detector and 68-point shape predictor (the ``faces`` extra, as ``datasets_tools
  convert --landmarks detect``), every face of a frame, largest first (``max_faces`` keeps the
  largest N).
- Tracking: a face keeps its face_id (numbered from 0) from frame to frame while its box overlaps
  its box in the previous frame (IoU >= ``TRACK_IOU``; boxes paired by the Hungarian
  algorithm). With ``detect_every`` K the detector runs on every K-th frame only; in between each
  followed face's landmarks are fitted again inside the box its previous landmarks give, and a
  face whose box leaves the frame is lost. A face the detector misses, or that leaves, ends its
  track's sequence; found again within ``TRACK_MEMORY`` frames where it was last seen (box
  overlap again), it keeps its face_id and starts a new sequence, otherwise it gets a new face_id
  (faces are not recognised). Between detections a new face is not seen, and a face that left
  stays followed until the next detection or until its box leaves the frame.
- Temporal methods (KS clips, vivit / regnet-tf windows) predict each sequence (one face_id's
  consecutive frames) as the test split's sequences are predicted: clips tiling it every
  clip_len frames, one more ending at its end, a frame covered twice getting the mean; a sequence
  shorter than a clip repeats its last frame. Frame methods predict faces in batches.
- Smoothing (``smoothing``, aubench.engine.postprocess.Smoothing) filters each sequence's
  probabilities along its frames, never across face_ids or gaps.

The CSV (`FaceTable.to_csv`, docs/predict.md): one row per face per frame, a frame without a face
one row with success 0 and empty face and AU cells; OpenFace's column names where OpenFace has
the quantity.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from aubench.errors import UserError
from aubench.files import atomic_file, why_unwritable, write_json_atomic

FORMAT = "aubench-predict-1"
TRACK_IOU = 0.3       # a face continues a track whose box it overlaps at least this much
TRACK_MEMORY = 30     # frames a lost face's face_id waits for it to come back
LEFT_FRAME = 0.5      # a followed face whose box has less than this fraction inside the frame is lost
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
STAGES = ("decode", "detect", "landmarks", "crop", "model", "write")
# Frames larger than this (longer side) are shrunk for the face detector. The converter's 640 is
# made for datasets' face-filling frames; photos of several people need more (dlib's smallest
# face is 80 px: at 640 px the faces of a group photo are below it).
DETECT_MAX_SIDE = 1024
# Frames whose shorter side is under this are upsampled once for the detector (the converter:
# under 400). Upsampling makes detection four times slower; a 360p video's faces are rarely under
# the detector's 80 px, a thumbnail's or a small dataset frame's may be.
DETECT_UPSAMPLE_BELOW = 300


# ---- the table ---------------------------------------------------------------------------------

@dataclass
class FaceTable:
    """Predictions for one input, one row per face per frame (R rows, U AUs); a frame without a
    face is one row with success False, face_id -1 and NaN elsewhere."""

    au_names: list[str]
    threshold: float
    frame: np.ndarray          # int64 (R,): from 1
    timestamp: np.ndarray      # float64 (R,): seconds from the video's own timestamps; NaN for images
    face_id: np.ndarray        # int64 (R,): from 0, -1 without a face
    success: np.ndarray        # bool (R,)
    confidence: np.ndarray     # float32 (R,): the detector's score (at the face's last detection)
    box: np.ndarray            # float32 (R, 4): left, top, width, height in the frame's pixels
    probabilities: np.ndarray  # float32 (R, U)
    landmarks: np.ndarray      # float32 (R, 68, 2): in the frame's pixels
    sequence: np.ndarray       # int64 (R,): the face's sequence (a track's consecutive frames), -1 without
    file: list[str] | None = None   # each row's image file (image inputs)

    @property
    def occurrences(self) -> np.ndarray:
        """int8 (R, U): 1 where the probability is at least the threshold, 0 below, -1 without a face."""
        out = (self.probabilities >= self.threshold).astype(np.int8)
        out[~self.success] = -1
        return out

    def __len__(self) -> int:
        return int(self.frame.shape[0])

    def header(self, landmarks: bool = False) -> list[str]:
        from aubench.engine.predictions import csv_au_name

        names = [csv_au_name(name) for name in self.au_names]
        head = (["file"] if self.file is not None else []) + [
            "frame", "timestamp", "face_id", "success", "confidence", "face_x", "face_y", "face_width",
            "face_height"] + [f"{n}_p" for n in names] + [f"{n}_c" for n in names]
        if landmarks:
            head += [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
        return head

    def to_csv(self, path: str | Path, landmarks: bool = False) -> None:
        """Write the table as CSV, atomically (docs/predict.md); `landmarks` adds x_0..x_67,
        y_0..y_67. Probabilities are written as the shortest text that reads back as the same
        float32."""
        def cells(values: np.ndarray, fmt: str) -> np.ndarray:
            text = np.char.mod(fmt, values) if fmt else values.astype(str)
            return np.where(np.isfinite(values), text, "")

        columns = []
        if self.file is not None:
            columns.append(np.asarray(self.file, dtype=object)[:, None])
        columns += [self.frame.astype(str)[:, None], cells(self.timestamp, "%.3f")[:, None],
                    np.where(self.face_id >= 0, self.face_id.astype(str), "")[:, None],
                    self.success.astype(np.uint8).astype(str)[:, None], cells(self.confidence, "%.3f")[:, None],
                    cells(self.box, "%.1f"), cells(self.probabilities, ""),
                    np.where(self.success[:, None], self.occurrences.astype(str), "")]
        if landmarks:
            columns += [cells(self.landmarks[..., 0], "%.2f"), cells(self.landmarks[..., 1], "%.2f")]
        table = np.concatenate([np.asarray(c, dtype=object).reshape(len(self), -1) for c in columns], axis=1)
        try:
            with atomic_file(path) as f:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(self.header(landmarks))
                writer.writerows(table.tolist())
        except OSError as err:
            raise UserError(f"--out: cannot write {path} ({why_unwritable(path, err)})") from None


class _Rows:
    """The rows of a FaceTable as they are made."""

    def __init__(self):
        self.values: dict[str, list] = defaultdict(list)

    def add(self, frame: int, timestamp: float, file: str | None, face=None) -> int:
        v = self.values
        v["frame"].append(frame)
        v["timestamp"].append(timestamp)
        v["file"].append(file)
        if face is None:
            v["face_id"].append(-1)
            v["sequence"].append(-1)
            v["confidence"].append(np.nan)
            v["box"].append(np.full(4, np.nan, np.float32))
            v["landmarks"].append(np.full((68, 2), np.nan, np.float32))
        else:
            left, top, right, bottom = face.box
            v["face_id"].append(face.face_id)
            v["sequence"].append(face.sequence)
            v["confidence"].append(face.score)
            v["box"].append(np.array([left, top, right - left + 1, bottom - top + 1], np.float32))
            v["landmarks"].append(face.points)
        return len(v["frame"]) - 1

    def table(self, au_names: list[str], threshold: float, probabilities: np.ndarray, files: bool) -> FaceTable:
        v = self.values
        count = len(v["frame"])
        return FaceTable(au_names=list(au_names), threshold=threshold,
                         frame=np.asarray(v["frame"], np.int64).reshape(count),
                         timestamp=np.asarray(v["timestamp"], np.float64).reshape(count),
                         face_id=np.asarray(v["face_id"], np.int64).reshape(count),
                         success=np.asarray(v["face_id"], np.int64).reshape(count) >= 0,
                         confidence=np.asarray(v["confidence"], np.float32).reshape(count),
                         box=np.asarray(v["box"], np.float32).reshape(count, 4),
                         probabilities=probabilities.reshape(count, len(au_names)),
                         landmarks=np.asarray(v["landmarks"], np.float32).reshape(count, 68, 2),
                         sequence=np.asarray(v["sequence"], np.int64).reshape(count),
                         file=list(v["file"]) if files else None)


# ---- the run -----------------------------------------------------------------------------------

def _matches(result: dict, method: str | None, fold: int | None) -> bool:
    """A raw result tested on clean faces, of `method` (a leaderboard row name) and `fold` when given."""
    return ("smoothing" not in result and "ensemble" not in result
            and (result.get("occlusion") or {}).get("test", "none") == "none"
            and (method is None or result["method"] == method) and (fold is None or result["fold"] == fold))


def find_result(run: str | Path, method: str | None = None, fold: int | None = None) -> dict:
    """The result record (with "_file") a prediction runs: `run` is a result JSON, a `train --out`
    folder (`method` names a row of a method with several) or an `evaluate --out` folder (with
    `method` and `fold`). UserError naming what is missing or ambiguous."""
    from aubench.engine.results import find_results
    from aubench.engine.run_files import CHECKPOINT_NAME

    run = Path(run)
    if not run.exists():
        raise UserError(f"--run {run}: no such run folder or result file")
    evaluate_folder = run.is_dir() and (run / "results").is_dir()
    if evaluate_folder and (method is None or fold is None):
        raise UserError(f"--run {run} is an `aubench evaluate` folder: pass --method and --fold to pick a run")
    if run.is_dir() and not evaluate_folder and not any(run.glob("result*.json")):
        if (run / CHECKPOINT_NAME).is_file():
            raise UserError(f"--run {run}: the run did not finish (a checkpoint but no result); finish it with "
                            f"`aubench train ... --resume`")
        raise UserError(f"--run {run}: no aubench run here (no result JSON; expected a `train --out` or "
                        f"`evaluate --out` folder)")
    found = find_results([run / "results" if evaluate_folder else run])
    matches = [r for r in found if _matches(r, method, fold)]
    if not matches:
        raws = [r for r in found if _matches(r, None, None)]
        have = ", ".join(sorted({f"{r['method']} fold {r['fold']}" for r in raws})) or "none tested on clean faces"
        asked = " ".join(part for part in (method and f"--method {method}", fold and f"--fold {fold}") if part)
        raise UserError(f"--run {run}: no result of {asked or 'a run'} (it holds: {have})")
    if len(matches) > 1:
        names = ", ".join(Path(r["_file"]).name for r in matches)
        hint = "pass --method with a row name" if len({r["method"] for r in matches}) > 1 else \
            "pass one result JSON as --run"
        raise UserError(f"--run {run}: several results match ({names}); {hint}")
    return matches[0]


def run_folder(result: dict) -> Path:
    """The folder of a result's checkpoints: beside a `train` result, else its `evaluate` run folder."""
    from aubench.engine.run import protocol_name
    from aubench.engine.run_files import CHECKPOINT_NAME
    from aubench.models.base import method_label

    file = Path(result["_file"])
    if (file.parent / CHECKPOINT_NAME).is_file():
        return file.parent
    config = result["config"]
    return (file.parent.parent / "runs" / method_label(config["method"], config.get("variant"))
            / protocol_name(result["label_ratio"], result["occlusion"]["train"]) / f"fold{result['fold']}")


@dataclass
class RunModel:
    """A run's tested network, ready to predict, with what its predictions depend on."""

    result: dict
    method: Any                     # the AUMethod, in eval mode on `device`
    preset: Any                     # the tested stage's Preset
    weights: Path
    weights_sha256: str
    data_path: Path
    fingerprint: str
    au_names: list[str]
    preparation: Any                # datasets_tools.face_pipeline.FacePreparation
    preparation_note: str | None
    device: Any
    precision: str
    channels_last: bool = False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_run(result: dict, device: str | None = None, precision: str = "auto", data: str | Path | None = None
             ) -> RunModel:
    """Rebuild the tested stage's method of a result (find_result) from its final weights, after
    checking that the checkpoint belongs to the result (its run identity) and that the training
    file (`data`, default the path the result records) is the one it was trained on."""
    import torch

    from aubench.data.h5file import AUFile
    from aubench.engine.checkpoint import load_checkpoint
    from aubench.engine.data_access import RunData
    from aubench.engine.device import resolve_precision
    from aubench.engine.distributed import resolve_device
    from aubench.engine.identity import MissingKey, differences_text, identity_differences, result_identity
    from aubench.engine.planning import run_stages
    from aubench.engine.run_files import CHECKPOINT_NAME, stage_file_name
    from aubench.engine.stage_methods import freeze
    from aubench.models.base import Preset, method_class
    from datasets_tools.face_pipeline import preparation_of_file

    where = result["_file"]
    config = result["config"]
    try:
        cls = method_class(config["method"])
    except KeyError as err:
        raise UserError(f"{where}: {err.args[0]}") from None
    try:
        identity = result_identity(result)
    except MissingKey as err:
        raise UserError(f"{where}: incomplete result (no '{err.path}')") from None
    data_path = Path(data if data is not None else result["data"]["path"])
    try:
        file = AUFile(data_path)
    except FileNotFoundError:
        hint = "" if data is not None else "; pass --data with its new path"
        raise UserError(f"{where}: its training file {data_path} is missing{hint}") from None
    except (OSError, ValueError) as err:
        raise UserError(f"--data {data_path}: {err}") from None
    if file.fingerprint() != result["data"]["fingerprint"]:
        raise UserError(f"{data_path}: not the file {where} was trained on (its fingerprint differs)")
    preset = Preset(**result["preset"])
    stages = {stage.name: stage for stage in run_stages(cls, preset)}
    names = list(stages)
    folder = run_folder(result)
    device = resolve_device(device)
    statistics = RunData(data_path, result["fold"], file).train_label_statistics(result["label_ratio"])
    au_names = list(result["au_names"])
    loaded: dict[str, tuple] = {}

    def load(name: str):
        """(method of stage `name` with its trained weights, weights file)."""
        if name in loaded:
            return loaded[name]
        last = name == names[-1]
        path = folder / (CHECKPOINT_NAME if last else stage_file_name(name))
        payload = load_checkpoint(path, map_location="cpu")
        saved_stage = (payload.get("stage") or {}).get("name")
        if saved_stage != name:
            raise UserError(f"{path}: holds stage {saved_stage!r}, not {name!r}: the run did not finish")
        if last and (payload.get("train_state") or {}).get("epoch") != stages[name].preset.epochs:
            raise UserError(f"{path}: the run did not finish (its last stage is not trained to its end)")
        diffs = identity_differences(payload.get("config", {}), identity, "checkpoint",
                                     ignore=("au_names", "dataset", "world_size"))
        if list(payload.get("config", {}).get("au_names", [])) != au_names:
            diffs.append("au_names")
        if diffs:
            raise UserError(f"{path} does not belong to the run of {where} ({differences_text(diffs)})")
        stage = stages[name]
        method = cls(len(au_names), stage.preset, None)
        method.preset = stage.preset
        method.set_training_data(au_names, statistics)
        try:
            method.load_state_dict(payload["model"])
        except (RuntimeError, KeyError) as err:
            raise UserError(f"{path}: its weights do not fit method {cls.name!r} ({str(err).splitlines()[0]})") from None
        method.frozen_inputs = {source: freeze(load(source)[0]) for source in stage.frozen_inputs}
        loaded[name] = method, path
        return loaded[name]

    tested = result.get("tested_stage") or names[-1]
    if tested not in stages:
        raise UserError(f"{where}: tested stage {tested!r} is not one of {cls.name}'s stages ({', '.join(names)})")
    method, weights = load(tested)
    channels_last = bool(config.get("channels_last"))
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    method = method.to(device).eval()
    preparation, note = preparation_of_file(file.attrs)
    return RunModel(result=result, method=method, preset=stages[tested].preset, weights=weights,
                    weights_sha256=_sha256(weights), data_path=data_path, fingerprint=result["data"]["fingerprint"],
                    au_names=au_names, preparation=preparation, preparation_note=note, device=device,
                    precision=resolve_precision(precision, device), channels_last=channels_last)


# ---- faces across frames -----------------------------------------------------------------------

@dataclass
class TrackedFace:
    face_id: int
    sequence: int
    box: tuple[float, float, float, float]   # left, top, right, bottom (inclusive), frame pixels
    score: float                             # the detector's score at the face's last detection
    points: np.ndarray                       # float32 (68, 2)


def _points_box(points: np.ndarray) -> np.ndarray:
    return np.array([*points.min(0), *points.max(0)], np.float64)


def _iou(a, b) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0]) + 1
    height = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@dataclass
class _Track:
    face_id: int
    sequence: int
    box: np.ndarray           # where the face was last seen
    points: np.ndarray
    score: float
    relation: np.ndarray      # the detector's box relative to the landmarks' bounding box
    last_seen: int

    def box_of(self, points: np.ndarray) -> np.ndarray:
        """The box the detector would give a face with these landmarks (as it gave this one)."""
        x0, y0, x1, y1 = _points_box(points)
        width, height = x1 - x0 + 1, y1 - y0 + 1
        cx, cy = (x0 + x1) / 2 + self.relation[0] * width, (y0 + y1) / 2 + self.relation[1] * height
        half_w, half_h = self.relation[2] * width / 2, self.relation[3] * height / 2
        return np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h])


def _relation(box, points: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = _points_box(points)
    width, height = x1 - x0 + 1, y1 - y0 + 1
    return np.array([((box[0] + box[2]) / 2 - (x0 + x1) / 2) / width, ((box[1] + box[3]) / 2 - (y0 + y1) / 2) / height,
                     (box[2] - box[0]) / width, (box[3] - box[1]) / height])


class FaceTracker:
    """The faces of a sequence of frames with their face_ids (see the module docstring): `step`
    once per frame, in order."""

    def __init__(self, detector, detect_every: int = 1, max_faces: int | None = None, timer=None,
                 memory: int | None = None):
        self.detector, self.detect_every, self.max_faces = detector, detect_every, max_faces
        self.memory = TRACK_MEMORY if memory is None else memory
        self.timer = timer or _Timer()
        self.tracks: list[_Track] = []
        self.next_id = 0
        self.next_sequence = 0

    def step(self, rgb: np.ndarray, index: int) -> list[TrackedFace]:
        """The faces of frame `index` (from 0) of an RGB uint8 frame, by face_id."""
        from scipy.optimize import linear_sum_assignment

        live = [t for t in self.tracks if t.last_seen == index - 1]
        if index % self.detect_every == 0:
            with self.timer("detect"):
                faces = self.detector.faces(rgb)[:self.max_faces]
            candidates = [t for t in self.tracks if index - t.last_seen <= self.memory]
            overlap = np.array([[_iou(face.box, t.box_of(t.points) if t in live else t.box) for t in candidates]
                                for face in faces]).reshape(len(faces), len(candidates))
            pairs = dict(zip(*linear_sum_assignment(-overlap))) if overlap.size else {}
            for i, face in enumerate(faces):
                with self.timer("landmarks"):
                    points = self.detector.landmarks(rgb, face.box)
                j = pairs.get(i)
                track = candidates[j] if j is not None and overlap[i, j] >= TRACK_IOU else None
                if track is None:
                    track = _Track(self.next_id, -1, None, None, 0.0, None, -1)
                    self.next_id += 1
                    self.tracks.append(track)
                self._update(track, index, np.asarray(face.box, np.float64), points, face.score,
                             _relation(face.box, points))
        else:
            height, width = rgb.shape[:2]
            for track in live:
                box = track.box_of(track.points)
                inside = _iou(box, (max(box[0], 0), max(box[1], 0), min(box[2], width - 1), min(box[3], height - 1)))
                if inside < LEFT_FRAME:
                    continue
                with self.timer("landmarks"):
                    points = self.detector.landmarks(rgb, tuple(int(round(v)) for v in box))
                self._update(track, index, track.box_of(points), points, track.score, track.relation)
        self.tracks = [t for t in self.tracks if index - t.last_seen <= self.memory]
        seen = sorted((t for t in self.tracks if t.last_seen == index), key=lambda t: t.face_id)
        return [TrackedFace(t.face_id, t.sequence, tuple(float(v) for v in t.box), t.score, t.points) for t in seen]

    def _update(self, track: _Track, index: int, box, points, score, relation) -> None:
        if track.sequence < 0 or track.last_seen != index - 1:  # a new track, or one found again after a gap
            track.sequence = self.next_sequence
            self.next_sequence += 1
        track.box, track.points, track.score, track.relation, track.last_seen = box, points, score, relation, index

    def ended(self, index: int) -> list[int]:
        """The sequences that frame `index` did not continue (their last frame was `index` - 1)."""
        return [t.sequence for t in self.tracks if t.last_seen == index - 1]


# ---- the model ---------------------------------------------------------------------------------

class _Timer:
    """Seconds spent per stage (STAGES)."""

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES, 0.0)

    @contextmanager
    def __call__(self, stage: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - started


class _ModelRunner:
    """Prepared faces in, per-row probabilities out: frame methods in batches of faces, clip
    methods per sequence (clips tiling it as the engine's test clips tile a sequence)."""

    def __init__(self, run: RunModel, batch_size: int, timer: _Timer):
        from aubench.data.transforms import crop_source_size, parse_image_size

        self.run, self.timer = run, timer
        self.clip_len = run.preset.clip_len if run.method.input_kind == "clip" else 1
        self.size = parse_image_size(run.preset.image_size)
        self.resize_size = crop_source_size(self.size, run.preset.crop_fraction)
        self.batch_frames = max(batch_size, self.clip_len)
        self.pending: list[tuple[list[int], list]] = []   # (rows, [(image, points)]) per clip or face
        self.sequences: dict[int, list] = defaultdict(list)
        self.sums: dict[int, np.ndarray] = {}
        self.counts: dict[int, int] = defaultdict(int)

    def face_input(self, face_rgb: np.ndarray, points: np.ndarray | None):
        """A prepared face (and its landmarks) as the engine's test datasets make an item of it:
        resized (and centre-cropped, Preset.crop_fraction) to the preset's size, uint8 (3,H,W)."""
        from aubench.data.transforms import (crop_images, crop_offset, crop_points, resize_images, resize_points,
                                             to_uint8_tensor)

        frames = resize_images(face_rgb[None], self.resize_size)
        moved = None
        if self.run.method.uses_landmarks:
            if points is None:
                raise UserError(f"method {self.run.method.name!r} needs each face's 68 landmarks")
            moved = resize_points(np.asarray(points, np.float32)[None], face_rgb.shape[:2], self.resize_size)
        if self.resize_size != self.size:
            offset = crop_offset(self.resize_size, self.size, random=False)
            frames = crop_images(frames, offset, self.size)
            moved = None if moved is None else crop_points(moved, offset)
        import torch

        return to_uint8_tensor(frames)[0], None if moved is None else torch.from_numpy(moved[0].astype(np.float32))

    def add(self, row: int, sequence: int, face_rgb: np.ndarray, points: np.ndarray | None) -> None:
        item = self.face_input(face_rgb, points)
        if self.clip_len == 1:
            self.pending.append(([row], [item]))
            self._run_full()
        else:
            self.sequences[sequence].append((row, item))

    def end(self, sequence: int) -> None:
        """Sequence `sequence` has all its frames: its clips join the queue."""
        from aubench.data.datasets import clip_offsets, clip_positions

        frames = self.sequences.pop(sequence, None)
        if not frames:
            return
        for first in clip_offsets(len(frames), self.clip_len):
            picked = [frames[i] for i in clip_positions(first, self.clip_len, len(frames))]
            self.pending.append(([row for row, _ in picked], [item for _, item in picked]))
        self._run_full()

    def finish(self) -> None:
        for sequence in list(self.sequences):
            self.end(sequence)
        while self.pending:
            self._run(len(self.pending))

    def _run_full(self) -> None:
        per_batch = max(1, self.batch_frames // self.clip_len)
        while len(self.pending) >= per_batch:
            self._run(per_batch)

    def _run(self, count: int) -> None:
        import torch

        from aubench.engine.device import autocast_context, move_batch

        jobs, self.pending = self.pending[:count], self.pending[count:]
        with self.timer("model"):
            images = torch.stack([torch.stack([image for image, _ in items]) for _, items in jobs])
            batch = {"image": images[:, 0] if self.clip_len == 1 else images}
            if self.run.method.uses_landmarks:
                points = torch.stack([torch.stack([p for _, p in items]) for _, items in jobs])
                batch["landmarks"] = points[:, 0] if self.clip_len == 1 else points
            if self.clip_len > 1:
                batch["key_position"] = torch.full((len(jobs),), self.clip_len // 2, dtype=torch.int64)
            batch = move_batch(batch, self.run.device)
            with torch.no_grad(), autocast_context(self.run.device, self.run.precision):
                probabilities = self.run.method.predict(batch)
            probabilities = probabilities.float().reshape(len(jobs), self.clip_len, -1).cpu().numpy()
        for (rows, _), values in zip(jobs, probabilities):
            for row, value in zip(rows, values.astype(np.float64)):
                self.sums[row] = self.sums.get(row, 0.0) + value
                self.counts[row] += 1

    def probabilities(self, rows: int, num_aus: int) -> np.ndarray:
        """float32 (rows, U): each predicted row's mean over the clips that held it; NaN elsewhere."""
        out = np.full((rows, num_aus), np.nan, np.float32)
        for row, total in self.sums.items():
            out[row] = (total / self.counts[row]).astype(np.float32)
        return out


# ---- the predictor -----------------------------------------------------------------------------

def faces_unavailable_reason() -> str | None:
    """Why faces cannot be detected here (the `faces` extra missing), or None."""
    from datasets_tools.face_detect import unavailable_reason

    reason = unavailable_reason()
    return None if reason is None else reason.replace("--landmarks detect", "aubench predict")


class Predictor:
    """A trained run that predicts AUs on videos, photos and prepared faces (module docstring).

    Options: `detect_every` (run the detector on every K-th frame of a video or image folder,
    following faces in between), `max_faces` (keep the N largest faces of a frame), `smoothing`
    (a Smoothing applied per sequence), `batch_size` (faces, or clip frames, per forward pass),
    `detect_max_side` (frames larger than this, longer side, are shrunk for the detector, as by the
    converter's --detect-max-side; default DETECT_MAX_SIDE), `detect_upsample_below` (frames whose
    shorter side is under this are upsampled once for the detector, which finds faces of 80 px and
    more; default DETECT_UPSAMPLE_BELOW)."""

    def __init__(self, run: RunModel, batch_size: int = 32, detect_every: int = 1, max_faces: int | None = None,
                 smoothing=None, detect_max_side: int | None = None, detect_upsample_below: int | None = None):
        self.run = run
        self.batch_size, self.detect_every, self.max_faces = batch_size, detect_every, max_faces
        self.smoothing = smoothing
        self.detect_max_side = detect_max_side
        self.detect_upsample_below = DETECT_UPSAMPLE_BELOW if detect_upsample_below is None else detect_upsample_below
        self._detector = None
        self.timer = _Timer()

    @classmethod
    def from_run(cls, path: str | Path, method: str | None = None, fold: int | None = None,
                 device: str | None = None, *, precision: str = "auto", data: str | Path | None = None,
                 **options) -> "Predictor":
        """The Predictor of a run: `path` a `train --out` folder, an `evaluate --out` folder with
        `method` and `fold`, or a result JSON; `data` the training file when it has moved; other
        options as the class's."""
        return cls(load_run(find_result(path, method, fold), device, precision, data), **options)

    @property
    def au_names(self) -> list[str]:
        return self.run.au_names

    @property
    def detector(self):
        """dlib's face detector and shape predictor (the faces extra); UserError without it."""
        if self._detector is None:
            from datasets_tools.errors import DatasetError
            from datasets_tools.face_detect import LandmarkDetector

            reason = faces_unavailable_reason()
            if reason:
                raise UserError(reason)
            try:
                self._detector = LandmarkDetector(max_side=self.detect_max_side or DETECT_MAX_SIDE,
                                                  upsample_below=self.detect_upsample_below)
            except DatasetError as err:
                raise UserError(str(err)) from None
        return self._detector

    def detector_identity(self) -> str:
        from datasets_tools.face_detect import detector_identity

        return (f"{detector_identity()}; detect max side {self.detector.max_side}; upsampled below "
                f"{self.detector.upsample_below}")

    # -- inputs ---------------------------------------------------------------------------------
    def predict_faces(self, aligned_uint8: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
        """float32 (N, U) probabilities of N faces already prepared as the training file's faces
        (RGB uint8 (N, H, W, 3): its crop, any size; `landmarks` (N, 68, 2) in their pixels for a
        method that uses them), for callers with their own detector. For a temporal method the
        faces are one face's consecutive frames."""
        faces = np.asarray(aligned_uint8)
        if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[-1] != 3:
            raise UserError(f"predict_faces: expected RGB uint8 faces (N, H, W, 3), got {faces.dtype} {faces.shape}")
        runner = _ModelRunner(self.run, self.batch_size, self.timer)
        for i, face in enumerate(faces):
            runner.add(i, 0, face, None if landmarks is None else landmarks[i])
        runner.finish()
        return runner.probabilities(len(faces), len(self.au_names))

    def predict_video(self, path: str | Path) -> FaceTable:
        """Every frame of a video (whatever OpenCV decodes; read upright when the container says it
        is rotated). After the call, `stopped_early` is set when decoding stopped before the frame
        count the video's header gives: the table holds the frames before."""
        from datasets_tools.errors import DatasetError
        from datasets_tools.videos import VideoFrames

        try:
            video = VideoFrames(path)
        except DatasetError as err:
            raise UserError(str(err)) from None

        def frames():
            iterator = iter(video)
            while True:
                with self.timer("decode"):
                    item = next(iterator, None)
                if item is None:
                    return
                index, timestamp, frame = item
                yield index, timestamp, frame, None

        table = self._predict_sequence(frames(), files=False)
        self.frames_decoded, self.frames_expected = video.decoded, video.expected
        self.stopped_early = video.stopped_early
        return table

    def predict_images(self, paths: Iterable[str | Path], sequence: bool = False) -> FaceTable:
        """Image files (any OpenCV reads: EXIF orientation applied, grayscale and 16-bit made 8-bit
        colour, alpha dropped): independent photos, each face numbered in its image (face_id 0
        the largest); with `sequence`, the frames of one sequence in the given order (a folder:
        faces followed, temporal methods and smoothing along each face's frames). A file that does
        not decode is a row without a face; its path is in `unreadable`."""
        paths = [str(p) for p in paths]
        self.unreadable: list[str] = []

        def frames():
            from datasets_tools.convert import decode

            for index, path in enumerate(paths):
                with self.timer("decode"):
                    image, error = decode("files", None, path)
                if image is None:
                    self.unreadable.append(path)
                yield index, np.nan, image, path

        return self._predict_sequence(frames(), files=True, independent=not sequence)

    def _predict_sequence(self, frames: Iterator, files: bool, independent: bool = False) -> FaceTable:
        from aubench.engine.postprocess import smooth_probabilities
        from aubench.metrics import THRESHOLD

        rows = _Rows()
        runner = _ModelRunner(self.run, self.batch_size, self.timer)
        tracker = FaceTracker(self.detector, self.detect_every, self.max_faces, self.timer)
        for index, timestamp, bgr, file in frames:
            if independent:  # every photo on its own: its faces numbered from 0, one sequence each
                numbered = tracker.next_sequence
                tracker = FaceTracker(self.detector, 1, self.max_faces, self.timer)
                tracker.next_sequence = numbered
            faces = [] if bgr is None else tracker.step(np.ascontiguousarray(bgr[:, :, ::-1]),
                                                        0 if independent else index)
            for sequence in ([] if independent else tracker.ended(index)):
                runner.end(sequence)
            if not faces:
                rows.add(index + 1, timestamp, file)
            for face in faces:
                with self.timer("crop"):
                    prepared, mapped, _ = self.run.preparation.prepare(bgr, face.points)
                    prepared = np.ascontiguousarray(prepared[:, :, ::-1])
                runner.add(rows.add(index + 1, timestamp, file, face), face.sequence, prepared, mapped)
                if independent:
                    runner.end(face.sequence)
        runner.finish()
        count = len(rows.values["frame"])
        probabilities = runner.probabilities(count, len(self.au_names))
        table = rows.table(self.au_names, THRESHOLD, probabilities, files)
        if self.smoothing is not None and table.success.any():
            faces = np.flatnonzero(table.success)
            order = faces[np.lexsort((table.frame[faces], table.sequence[faces]))]
            table.probabilities[order] = smooth_probabilities(table.probabilities[order], table.sequence[order],
                                                              table.frame[order], self.smoothing)
        return table

    # -- the record beside a CSV ------------------------------------------------------------------
    def record(self, table: FaceTable, source: str, kind: str, seconds: float, warnings: list[str],
               counts: dict | None = None) -> dict:
        """The sidecar JSON of one input's CSV (docs/predict.md)."""
        from aubench.bench import cpu_info, device_name
        from aubench.engine.run import versions

        result = self.run.result
        preparation = self.run.preparation
        frames = len(np.unique(table.frame))
        return {
            "format": FORMAT, "input": source, "kind": kind,
            "run": {"result": str(Path(result["_file"]).resolve()), "method": result["method"],
                    "fold": result["fold"], "protocol": result["protocol"], "tested_stage": result.get("tested_stage"),
                    "preset": result["config"]["preset"], "weights": str(self.run.weights.resolve()),
                    "weights_sha256": self.run.weights_sha256},
            "training_file": {"path": str(self.run.data_path.resolve()), "fingerprint": self.run.fingerprint},
            "faces": {"crop": preparation.crop, "image_size": preparation.image_size, "margin": preparation.margin,
                      "points": None if preparation.points is None else list(preparation.points),
                      "note": self.run.preparation_note, "model_image_size": self.run.preset.image_size,
                      "crop_fraction": self.run.preset.crop_fraction},
            "detector": {"identity": self.detector_identity(), "detect_every": self.detect_every,
                         "max_faces": self.max_faces},
            "smoothing": None if self.smoothing is None else self.smoothing.record(),
            "threshold": table.threshold, "au_names": table.au_names,
            "counts": {"frames": frames, "rows": len(table), "faces": int(table.success.sum()),
                       "frames_with_a_face": int(len(np.unique(table.frame[table.success]))),
                       "face_ids": int(len(np.unique(table.face_id[table.success]))),
                       "sequences": int(len(np.unique(table.sequence[table.success]))), **(counts or {})},
            "throughput": {"frames_per_s": frames / seconds if seconds > 0 else None, "seconds": round(seconds, 3),
                           "stage_seconds": {k: round(v, 3) for k, v in self.timer.seconds.items()}},
            "warnings": warnings,
            "device": device_name(self.run.device), "precision": self.run.precision, "cpu": cpu_info(),
            "versions": versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }


# ---- inputs on the command line ----------------------------------------------------------------

def natural_key(name: str) -> list:
    """Sort key: digit runs by value ("frame2" before "frame10")."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


@dataclass
class Input:
    kind: str                    # "video", "folder" or "images"
    name: str                    # the output files' stem
    paths: list[Path]            # the video, the folder's images, or the loose images
    source: str                  # as given (a folder, a video, or the images)
    skipped: list[str] = field(default_factory=list)   # a folder's files that are not images


def plan_inputs(inputs: list[str | Path]) -> list[Input]:
    """Inputs as the command line takes them, checked before any work: videos (by suffix), image
    files (all loose images together: one output) and folders of images (one sequence each, in
    natural order; files that are not images by their suffix skipped and counted, sub-folders not
    read). UserError for a missing path, an empty folder, a file that is neither, a video that
    cannot be opened (not a video, an unknown codec, damaged), or two inputs whose outputs would
    have the same name."""
    from datasets_tools.errors import DatasetError
    from datasets_tools.videos import VIDEO_SUFFIXES, VideoFrames

    planned, loose = [], []
    for text in inputs:
        path = Path(text)
        if not path.exists():
            raise UserError(f"{path}: no such file or folder")
        suffix = path.suffix.lower()
        if path.is_dir():
            files = sorted((p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")),
                           key=lambda p: natural_key(p.name))
            images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
            if not images:
                raise UserError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
            planned.append(Input("folder", path.resolve().name or "images", images, str(path),
                                 [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]))
        elif suffix in VIDEO_SUFFIXES:
            try:
                VideoFrames(path).capture.release()
            except DatasetError as err:
                raise UserError(str(err)) from None
            planned.append(Input("video", path.stem, [path], str(path)))
        elif suffix in IMAGE_SUFFIXES:
            loose.append(path)
        else:
            raise UserError(f"{path}: not a video ({', '.join(VIDEO_SUFFIXES)}) or image "
                            f"({', '.join(IMAGE_SUFFIXES)}) by its suffix")
    if loose:
        planned.append(Input("images", "images", loose, ", ".join(map(str, loose))))
    names: dict[str, str] = {}
    for item in planned:
        if item.name in names:
            raise UserError(f"{names[item.name]} and {item.source} would both write {item.name}.csv; predict "
                            f"them in separate calls (another --out)")
        names[item.name] = item.source
    return planned


@dataclass
class Written:
    csv: Path
    record: dict
    warnings: list[str]
    table: FaceTable


def predict_inputs(predictor: Predictor, inputs: list[Input], out: str | Path, landmarks: bool = False,
                   echo=print) -> list[Written]:
    """Predict every input into OUT: <name>.csv and <name>.json per input, each written
    atomically; `echo` gets one line per input and each warning."""
    out = Path(out)
    written = []
    for item in inputs:
        predictor.timer = _Timer()
        started = time.perf_counter()
        warnings, counts = [], {}
        if item.kind == "video":
            table = predictor.predict_video(item.paths[0])
            counts.update(decoded=predictor.frames_decoded, header_frames=predictor.frames_expected)
            if predictor.stopped_early:
                warnings.append(f"{item.paths[0]}: decoding stopped after frame {predictor.frames_decoded} of the "
                                f"{predictor.frames_expected} its header gives (truncated or damaged); rows up to "
                                f"frame {predictor.frames_decoded}")
        else:
            table = predictor.predict_images(item.paths, sequence=item.kind == "folder")
            table.file = [os.path.relpath(f, item.source) if item.kind == "folder" else f for f in table.file]
            if item.skipped:
                counts["skipped_files"] = item.skipped
                warnings.append(f"{item.source}: {len(item.skipped)} file(s) that are not images skipped "
                                f"({', '.join(item.skipped[:3])}{', ...' if len(item.skipped) > 3 else ''})")
            if predictor.unreadable:
                counts["unreadable_files"] = predictor.unreadable
                warnings.append(f"{len(predictor.unreadable)} image(s) do not decode, rows without a face: "
                                f"{', '.join(predictor.unreadable[:3])}{', ...' if len(predictor.unreadable) > 3 else ''}")
        if predictor.run.preparation_note:
            warnings.insert(0, predictor.run.preparation_note)
        csv_path, json_path = out / f"{item.name}.csv", out / f"{item.name}.json"
        with predictor.timer("write"):
            table.to_csv(csv_path, landmarks=landmarks)
        seconds = time.perf_counter() - started
        record = predictor.record(table, item.source, item.kind, seconds, warnings, counts)
        try:
            write_json_atomic(json_path, record)
        except OSError as err:
            raise UserError(f"--out: cannot write {json_path} ({why_unwritable(json_path, err)})") from None
        counted = record["counts"]
        echo(f"{item.source}: {counted['frames']} frame(s), {counted['faces']} face(s) in "
             f"{counted['frames_with_a_face']} frame(s), {counted['face_ids']} face_id(s), "
             f"{record['throughput']['frames_per_s'] or 0:.1f} frames/s -> {csv_path}")
        written.append(Written(csv_path, record, warnings, table))
    return written


def check_out(out: str | Path) -> None:
    """--out is a folder that exists or can be made."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {out}: cannot make the folder ({why_unwritable(out / 'x', err)})") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"--out {out}: not writable")


def print_rows(path: str | Path, count: int = 5, stream=None) -> None:
    """Print the header and the first `count` rows of a prediction CSV, its columns up to the AU
    probabilities (to `stream`, default stdout)."""
    stream = stream or sys.stdout
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[:count + 1]
    if not rows:
        return
    last = max(i for i, name in enumerate(rows[0]) if name.endswith("_p")) + 1
    for row in rows:
        stream.write(",".join(row[:last]) + "\n")


def plot_probabilities(table: FaceTable, path: str | Path, title: str = "") -> Path:
    """A PNG of each AU's probability over time (seconds, or frames without timestamps), one line
    per face_id, one panel per AU, the threshold dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    count = len(table.au_names)
    columns = 4
    rows = (count + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.0 * rows), sharex=True, sharey=True,
                                squeeze=False)
    timed = np.isfinite(table.timestamp).any()
    x = table.timestamp if timed else table.frame.astype(np.float64)
    for k, name in enumerate(table.au_names):
        axis = axes[k // columns][k % columns]
        for face_id in np.unique(table.face_id[table.success]):
            mine = table.face_id == face_id
            values = np.where(mine, table.probabilities[:, k], np.nan)
            axis.plot(x, values, lw=1.2, label=f"face {face_id}")
        axis.axhline(table.threshold, color="grey", lw=0.8, ls="--")
        axis.set_title(name, fontsize=9)
        axis.set_ylim(0, 1)
    for k in range(count, rows * columns):
        axes[k // columns][k % columns].axis("off")
    for axis in axes[-1]:
        axis.set_xlabel("seconds" if timed else "frame")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    with atomic_file(path, "wb") as f:
        figure.savefig(f, format="png", dpi=90)
    plt.close(figure)
    return path


def sidecar_path(csv_path: str | Path) -> Path:
    return Path(csv_path).with_suffix(".json")


def read_record(csv_path: str | Path) -> dict:
    return json.loads(sidecar_path(csv_path).read_text(encoding="utf-8"))
