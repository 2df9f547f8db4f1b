"""The conversion driver: plan (parse labels, locate images) -> decode, crop, resize, encode in
chunks (optionally in a process pool) -> append to the HDF5 writer -> folds and statistics."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
import zipfile
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from tqdm import tqdm

from . import affwild2, bp4d, bp4d_plus, disfa, images, videos
from .errors import DatasetError, Report, Skip
from .face_detect import DEFAULT_MAX_SIDE, detector_for, detector_identity, unavailable_reason
from .face_pipeline import FacePreparation
from .faces import CROPS, DEFAULT_MARGIN, haar_unavailable_reason
from .landmark_files import NO_LANDMARKS_KEPT, attach_landmarks, settle_problems
from .landmarks import NUM_POINTS, SCHEME
from .folds import choose_folds
from .hdf5_writer import CONVERTER_VERSION, FrameWriter
from .output import OutputLock, check_output, skipped_path
from .pool import process_pool
from .raw import DatasetPlan, SequencePlan

READERS = {"bp4d": bp4d.plan, "disfa": disfa.plan, "bp4d-plus": bp4d_plus.plan, "mme": bp4d_plus.plan_mme,
           "affwild2": affwild2.plan, "images": images.plan, "videos": videos.plan}
# Command-line defaults of --crop, --image-size and --landmarks, per layout: frames are
# centre-cropped to 256 px with the tree's landmark files, but Aff-Wild2's faces come cropped and
# aligned at 112 px: stored as they are (no re-crop, no upsampling; aubench resizes on reading to
# what a method asks for); a lab's videos have no landmark files: detected and aligned.
DEFAULT_CROP, DEFAULT_IMAGE_SIZE, DEFAULT_LANDMARKS = "center", 256, "file"
LAYOUT_DEFAULTS = {"affwild2": {"crop": "none", "image_size": affwild2.FACE_SIZE}, "videos": videos.DEFAULTS}
JPEG_QUALITY = 95


LANDMARK_MODES = ("file", "detect", "none")
NO_FACE_POLICIES = ("skip", "keep")


@dataclass(frozen=True)
class FrameOptions:
    image_size: int = DEFAULT_IMAGE_SIZE
    image_format: str = "jpeg"
    crop: str = DEFAULT_CROP
    margin: float = DEFAULT_MARGIN
    # Where landmarks come from: "file" (the tree's landmark files, when it has them:
    # datasets_tools.landmark_files), "detect" (dlib on every frame, datasets_tools.face_detect)
    # or "none" (not stored).
    landmarks: str = "file"
    # A frame without a face (detect) or without usable landmarks (file, --crop landmarks|align) is
    # skipped, or kept without landmarks
    no_face: str = "skip"
    predictor: str | None = None    # detect: a 68-point dlib predictor file (default: the packaged one)
    detect_max_side: int = DEFAULT_MAX_SIDE  # detect: frames are shrunk to this longer side for the detector


@dataclass
class ConvertResult:
    frames: int
    sequences: int
    subjects: int
    skips: list
    notes: dict
    resumed_sequences: int
    split_source: str
    skipped_listing: Path | None = None  # OUT.skipped.txt, written when frames were skipped (or kept without a face)
    no_face_kept: list = field(default_factory=list)  # frames stored without landmarks (no face, no usable entry)


# ---- frame processing (runs in worker processes; each keeps its open zip / video) ----------

_open_zip: dict[str, zipfile.ZipFile] = {}
_open_video: dict = {"reader": None}
# How far ahead a video reader decodes its way to the frame asked for; further (or behind) it seeks.
SEEK_AFTER = 64


def _read_zip(container: str, member: str) -> bytes:
    archive = _open_zip.get(container)
    if archive is None:
        archive = _open_zip[container] = zipfile.ZipFile(container)
    return archive.read(member)


class _VideoReader:
    """The frames of one video, by index: frame k is the k-th frame decoded from the first.

    The reader counts the frames it decodes itself; OpenCV's position (CAP_PROP_POS_FRAMES)
    is never trusted, as it goes on counting from wherever a failed read or an inexact seek left
    it. Reading goes forward from the last frame read; where it must start elsewhere it seeks,
    and the frame it gets must then have the container's timestamp of frame k (k / fps) - else
    (the seek landed elsewhere, or a variable frame rate) it decodes its way from the first
    frame. After a frame fails to decode, later frames are stored only while their timestamps
    confirm the count; from the first that does not, every later frame is a bad frame: an image
    is never stored beside another frame's labels. (Damage that makes the AVI reader lose
    frames silently is found in the file's structure before any decoding: disfa.avi_frames_in_place.)"""

    def __init__(self, path: str):
        self.path = path
        self.capture = None
        self._restart()
        self.fps = float(self.capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.size = (int(self.capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        self.lost_at = None  # the first frame whose position could not be confirmed

    def _restart(self) -> None:
        if self.capture is not None:
            self.capture.release()
        self.capture = cv2.VideoCapture(self.path)
        self.next = 0             # the frame the next read gives, by this reader's count
        self.unconfirmed = False  # a frame failed to decode (or a seek) since the count was known

    def _timestamp_is(self, index: int) -> bool:
        """Whether the frame just read has the container's timestamp of frame ``index``."""
        return self.fps > 0 and abs(self.capture.get(cv2.CAP_PROP_POS_MSEC) * self.fps / 1000 - index) < 0.5

    def read(self, index: int):
        """-> (BGR image, None) or (None, error text)."""
        if self.lost_at is not None and index > self.lost_at:
            return None, (f"video frame {index} cannot be placed: the frames' positions are lost from frame "
                          f"{self.lost_at} on, after a frame that failed to decode")
        far = index < self.next or index - self.next > SEEK_AFTER
        for attempt in ("seek", "from the first frame") if far else ("forward",):
            if attempt == "seek":
                self.capture.set(cv2.CAP_PROP_POS_FRAMES, index)
                self.next, self.unconfirmed = index, True
            elif attempt == "from the first frame":
                self._restart()
            while self.next < index:
                if not self.capture.grab():
                    self.unconfirmed = True
                self.next += 1
            ok, image = self.capture.read()
            self.next += 1
            if not ok or image is None:
                self.unconfirmed = True
                return None, f"cannot decode video frame {index}"
            if not self.unconfirmed or self._timestamp_is(index):
                self.unconfirmed = False
                if image.shape[:2] != self.size[::-1]:  # a damaged frame: never stored
                    return None, (f"video frame {index} decodes to {image.shape[1]}x{image.shape[0]}, "
                                  f"the video is {self.size[0]}x{self.size[1]}")
                return image, None
        self.lost_at = index
        return None, (f"video frame {index} cannot be placed: a frame before it failed to decode and the video's "
                      f"timestamps do not say which frame decoding has reached")


def _read_video_frame(container: str, index: int):
    """Frame ``index`` (from 0) of a video -> (BGR image, None) or (None, error text); each worker
    keeps the video it read last open (``_VideoReader``)."""
    reader = _open_video["reader"]
    if reader is None or reader.path != container:
        if reader is not None:
            reader.capture.release()
        reader = _open_video["reader"] = _VideoReader(container)
    return reader.read(index)


def decode(kind: str, container: str | None, member):
    """-> (BGR image, None) or (None, error text)."""
    try:
        if kind == "video":
            return _read_video_frame(container, member)
        data = _read_zip(container, member) if kind == "zip" else np.fromfile(member, dtype=np.uint8)
    except OSError as e:
        return None, f"cannot read image ({e.strerror or e})"
    except (KeyError, zipfile.BadZipFile) as e:
        return None, f"cannot read image ({e})"
    return decode_image(data)


JPEG_START = b"\xff\xd8"
EXIF_SEARCH = 1 << 16  # the EXIF segment (APP1) comes before the image data, near the start


def decode_image(data) -> tuple[np.ndarray | None, str | None]:
    """Encoded image bytes -> (BGR image, None) or (None, error text).

    A JPEG is decoded by libjpeg-turbo through simplejpeg in strict mode: whatever the decoder
    reports, a warning included ("Corrupt JPEG data: premature end of data segment", "... extraneous
    bytes before marker", "Premature end of JPEG file"), makes it a bad image, where OpenCV's
    decoder prints the warning and returns the image with the damaged part made up. The pixels are
    those OpenCV gives (the same library); a JPEG with an EXIF segment is then decoded by OpenCV,
    which turns it upright by its orientation tag. Other formats (PNG, BMP, ...) are OpenCV's."""
    data = bytes(data)
    if not data.startswith(JPEG_START):
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR) if data else None
        return (image, None) if image is not None else (None, "corrupt image (cannot decode)")
    try:
        image = simplejpeg.decode_jpeg(data, colorspace="BGR", strict=True)
    except ValueError as e:
        return None, f"corrupt JPEG data (libjpeg: {e})"
    if b"Exif\0\0" in data[:EXIF_SEARCH]:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            return None, "corrupt image (cannot decode)"
    return image, None


def encode(bgr: np.ndarray, image_format: str) -> np.ndarray:
    if image_format == "raw":
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.reshape(-1)


NO_FACE = "no face"                   # the report's kind of frames skipped because detection found no face
NO_FACE_KEPT = "no face, kept without landmarks"   # ... and of those kept (--no-face keep): stored, listed
KEPT_WITHOUT_LANDMARKS = (NO_FACE_KEPT, NO_LANDMARKS_KEPT)  # listed, never counted as skipped


def process_chunk(job):
    """One chunk of one sequence -> list of (stored image, landmarks, note, error, no_face) per
    frame; no_face: detection found no face (the image is None when such frames are skipped)."""
    kind, container, members, landmarks, options = job
    detect = detector_for(options.predictor, options.detect_max_side) if options.landmarks == "detect" else None
    # the one face preparation of converted files (aubench predict prepares faces with it too)
    prepare = FacePreparation(options.crop, options.image_size, options.margin).prepare
    out = []
    for i, member in enumerate(members):
        image, error = decode(kind, container, member)
        if image is None:
            out.append((None, None, None, error, False))
            continue
        points = None if landmarks is None else landmarks[i]
        no_face = False
        if detect is not None:
            points = detect(image)
            no_face = points is None
            if no_face and options.no_face == "skip":
                out.append((None, None, None, None, True))
                continue
            if no_face:
                points = np.full((NUM_POINTS, 2), np.nan, np.float32)
        face, mapped, note = prepare(image, points)
        out.append((encode(face, options.image_format), mapped, note, None, no_face))
    return out


# ---- driver --------------------------------------------------------------------------------

def fingerprint(plan: DatasetPlan, options: FrameOptions, extras: dict) -> str:
    """Hash of everything the output depends on: options, labels, frame lists and image sources
    (paths with size and modification time), so a resume only happens on unchanged inputs."""
    digest = hashlib.sha256()
    digest.update(json.dumps([CONVERTER_VERSION, plan.dataset, plan.au_names, plan.label_rule,
                              options.__dict__, extras], sort_keys=True, default=str).encode())

    def stamp(path):
        try:
            st = os.stat(path)
            return f"{path}:{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            return f"{path}:missing"

    for seq in plan.sequences:
        digest.update(f"{seq.subject}|{seq.name}|{seq.source_kind}".encode())
        if seq.container:
            digest.update(stamp(seq.container).encode())
        for array in (seq.frame_no, seq.label, seq.intensity, seq.landmarks):
            if array is not None:
                digest.update(np.ascontiguousarray(array).tobytes())
        if seq.source_kind == "files":
            digest.update("\n".join(stamp(m) for m in seq.members).encode())
        else:
            digest.update("\n".join(map(str, seq.members)).encode())
    return digest.hexdigest()


def chunk_size(options: FrameOptions) -> int:
    return 64 if options.image_format == "raw" else 256


def _jobs(plan: DatasetPlan, start_sequence: int, options: FrameOptions):
    size = chunk_size(options)
    for index in range(start_sequence, len(plan.sequences)):
        seq = plan.sequences[index]
        for start in range(0, len(seq), size):
            stop = min(start + size, len(seq))
            landmarks = None if seq.landmarks is None else seq.landmarks[start:stop]
            yield index, start, stop, (seq.source_kind, seq.container, seq.members[start:stop], landmarks, options)


def _worker_setup() -> None:
    cv2.setNumThreads(1)  # the pool provides the parallelism


def _results(jobs, workers: int):
    """(index, start, stop, results) in job order; at most 2 x workers chunks in flight."""
    if workers <= 1:
        for index, start, stop, job in jobs:
            yield index, start, stop, process_chunk(job)
        return
    with process_pool(workers, initializer=_worker_setup) as pool:
        pending: deque = deque()
        for index, start, stop, job in jobs:
            pending.append((index, start, stop, pool.submit(process_chunk, job)))
            if len(pending) >= 2 * workers:
                i, a, b, future = pending.popleft()
                yield i, a, b, future.result()
        while pending:
            i, a, b, future = pending.popleft()
            yield i, a, b, future.result()


def convert(dataset: str, root: Path, out: Path, options: FrameOptions, *, landmarks_dir: Path | None = None,
            landmarks_offset: dict[str, int] | None = None, camera: str = "left", threshold: int = 2,
            workers: int = 1, skip_bad: bool = False, folds_seed: int = 0, progress: bool = True, fail_after_sequences: int | None = None,
            overwrite: bool = False, images_split: str = images.DEFAULT_SPLIT, affwild2_split: str = "official",
            affwild2_folds: int = affwild2.DEFAULT_KFOLDS) -> ConvertResult:
    """Convert a raw dataset tree into one HDF5 file. An existing ``out`` is refused unless
    ``overwrite``; a ``.partial`` of an interrupted run is resumed; one run at a time writes ``out``
    (``output.OutputLock``). ``fail_after_sequences`` raises after that many sequences were written
    in this run (tests use it to simulate a killed conversion). ``images_split`` ("none",
    "folders" or "random") chooses the folds of an unlabeled layout (images, videos), which has
    none by default. ``affwild2_split`` ("official" or
    "kfold") and ``affwild2_folds`` choose Aff-Wild2's folds (``affwild2.py``). ``landmarks_dir``
    and ``landmarks_offset`` ({"": N} for every sequence, {NAME: N} for a subject or sequence) are
    --landmarks file's folder and frame offsets (``landmark_files.py``)."""
    root, out = Path(root), Path(out)
    if dataset not in READERS:
        raise DatasetError(f"unknown dataset {dataset!r}; choose one of {', '.join(READERS)}")
    if options.crop not in CROPS:
        raise DatasetError(f"--crop {options.crop!r}: choose one of {', '.join(CROPS)}")
    if options.crop == "haar" and haar_unavailable_reason():
        raise DatasetError(haar_unavailable_reason())
    if options.image_format not in ("jpeg", "raw"):
        raise DatasetError(f"--image-format {options.image_format!r}: choose jpeg or raw")
    if not 8 <= options.image_size <= 4096:
        raise DatasetError(f"--image-size {options.image_size} must be within 8..4096")
    if camera not in ("left", "right"):
        raise DatasetError(f"--camera {camera!r}: choose left or right")
    if not root.is_dir():
        raise DatasetError("raw dataset folder not found (RAW_ROOT)", str(root))
    if workers < 1:
        raise DatasetError(f"--workers {workers} must be at least 1")
    if options.landmarks not in LANDMARK_MODES:
        raise DatasetError(f"--landmarks {options.landmarks!r}: choose one of {', '.join(LANDMARK_MODES)}")
    if options.no_face not in NO_FACE_POLICIES:
        raise DatasetError(f"--no-face {options.no_face!r}: choose one of {', '.join(NO_FACE_POLICIES)}")
    if options.landmarks != "file" and landmarks_dir is not None:
        raise DatasetError(f"--landmarks {options.landmarks} with a landmarks folder (--landmarks-dir): the "
                           f"folder is read by --landmarks file only; drop one of the two")
    if options.landmarks != "file" and landmarks_offset:
        raise DatasetError(f"--landmarks {options.landmarks} with --landmarks-offset: the offset applies to landmark "
                           f"files (--landmarks file) only; drop one of the two")
    if options.landmarks == "detect":
        reason = unavailable_reason(options.predictor)
        if reason:
            raise DatasetError(reason)

    check_output(out, overwrite)
    with OutputLock(out):
        return _convert_locked(dataset, root, out, options, landmarks_dir=landmarks_dir,
                               landmarks_offset=dict(landmarks_offset or {}), camera=camera,
                               threshold=threshold, workers=workers, skip_bad=skip_bad, folds_seed=folds_seed,
                               progress=progress, fail_after_sequences=fail_after_sequences,
                               images_split=images_split, affwild2_split=affwild2_split,
                               affwild2_folds=affwild2_folds)


def _convert_locked(dataset: str, root: Path, out: Path, options: FrameOptions, *, landmarks_dir,
                    landmarks_offset: dict[str, int], camera: str,
                    threshold: int, workers: int, skip_bad: bool, folds_seed: int, progress: bool,
                    fail_after_sequences: int | None, images_split: str, affwild2_split: str,
                    affwild2_folds: int) -> ConvertResult:
    """The conversion proper, while this run holds the output's lock."""
    if options.landmarks == "detect":
        detector_for(options.predictor, options.detect_max_side)  # a bad predictor file fails here, once
    report = Report(skip_bad=skip_bad)
    settings = {"camera": camera, "threshold": threshold}
    plan = READERS[dataset](root, _Settings(progress=progress, images_split=images_split, folds_seed=folds_seed,
                                            affwild2_split=affwild2_split, affwild2_folds=affwild2_folds,
                                            **settings), report)
    landmarks_source = options.landmarks if options.landmarks == "detect" else None
    if options.landmarks == "file":
        landmarks_source = attach_landmarks(plan, dataset, root, landmarks_dir, camera, landmarks_offset, report)
        if not plan.sequences:
            raise DatasetError("no frame could be planned (every sequence's landmark file was skipped)", str(root))
    if options.landmarks == "detect":
        num_points = NUM_POINTS
    else:
        num_points = plan.sequences[0].landmarks.shape[1] if plan.sequences[0].landmarks is not None else None
    if options.crop in ("landmarks", "align") and not num_points:
        raise DatasetError(f"--crop {options.crop} needs landmarks: landmark files (2DFeatures/ for BP4D, BP4D+ "
                           f"and MME, Landmark_Points/ for DISFA, the old Landmarks/<sequence>.csv, or "
                           f"--landmarks-dir DIR) or --landmarks detect", str(root))
    if options.crop == "align" and num_points != NUM_POINTS:
        raise DatasetError(f"--crop align needs the {NUM_POINTS} points of the {SCHEME} scheme; the landmark "
                           f"files hold {num_points} per frame (use --landmarks detect)", str(root))
    no_landmarks = None  # (frames without usable landmarks, the policy applied), from landmark files
    if options.landmarks == "file" and landmarks_source is not None:
        no_landmarks = settle_problems(plan, options.crop, options.no_face, report)
    planning_skips = list(report.skips)
    report.skips.clear()

    extras = dict(settings) if dataset == "disfa" else {}
    if options.landmarks == "detect":  # another predictor file or dlib gives other landmarks: no resume
        extras["detector"] = detector_identity(options.predictor)
    key = fingerprint(plan, options, extras)
    # an image collection keeps each frame's file (relative to DIR): its frame numbers are only
    # positions in a folder or shard
    source_root = plan.source_root if dataset == "images" else None
    writer = FrameWriter(out, key, len(plan.au_names), options.image_size, options.image_format,
                         plan.sequences[0].intensity is not None, num_points, has_source=source_root is not None)
    if writer.restarted:
        print(f"warning: {writer.path}: {writer.restarted}", file=sys.stderr)
    try:
        resumed = len(writer.done)
        start_sequence = writer.done[-1][0] + 1 if writer.done else 0
        total = sum(len(s) for s in plan.sequences[start_sequence:])
        bar = tqdm(total=total, desc=f"convert {plan.dataset}", unit="frame", disable=not progress,
                   file=sys.stderr, dynamic_ncols=True)
        buffer = _SequenceBuffer(num_points, source_root)
        written_this_run = 0
        for index, start, stop, results in _results(_jobs(plan, start_sequence, options), workers):
            seq = plan.sequences[index]
            buffer.add(seq, start, stop, results, report)
            bar.update(stop - start)
            if stop == len(seq):
                writer.append(len(writer.done), *buffer.frames())
                skips, notes = buffer.take_problems()
                writer.finish_sequence(index, buffer.kept, skips, notes)
                buffer = _SequenceBuffer(num_points, source_root)
                written_this_run += 1
                if fail_after_sequences is not None and written_this_run >= fail_after_sequences:
                    raise RuntimeError(f"injected failure after {written_this_run} sequence(s)")
        bar.close()
        return _finalize(writer, plan, options, report, planning_skips, folds_seed, resumed, landmarks_source,
                         no_landmarks)
    finally:
        writer.close()


class _Settings:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class _SequenceBuffer:
    """Frames of the sequence being converted, until it is complete and can be appended."""

    def __init__(self, num_points: int | None, source_root: str | None = None):
        self.num_points = num_points
        self.source_root = source_root  # set: keep each frame's file path relative to it
        self.parts = []
        self.skips: list = []
        self.notes: Counter = Counter()
        self.kept = 0

    def add(self, seq: SequencePlan, start: int, stop: int, results, report: Report) -> None:
        images, points, keep = [], [], np.zeros(stop - start, dtype=bool)
        for i, (image, mapped, note, error, no_face) in enumerate(results):
            member = seq.members[start + i]
            where = seq.container if seq.source_kind != "files" else member
            if seq.source_kind == "zip":
                where = f"{seq.container}:{member}"
            if no_face:  # expected with detection, never an error: listed as skipped or as kept
                kind = NO_FACE if image is None else NO_FACE_KEPT
                self.skips.append(Skip(seq.name, int(seq.frame_no[start + i]), kind,
                                       f"the face detector found no face [{where}]").to_list())
                if image is None:
                    continue
            if error is not None:
                before = len(report.skips)
                report.problem(error, sequence=seq.name, frame_no=int(seq.frame_no[start + i]), path=where,
                               kind="bad image")
                self.skips.extend(s.to_list() for s in report.skips[before:])
                continue
            if note:
                self.notes[note] += 1
            keep[i] = True
            images.append(image)
            points.append(mapped)
        rows = slice(start, stop)
        sources = None
        if self.source_root is not None:  # the images layout: each frame's file, relative to DIR
            sources = [os.path.relpath(m, self.source_root) for m, k in zip(seq.members[rows], keep) if k]
        self.parts.append((seq.frame_no[rows][keep], seq.label[rows][keep],
                           None if seq.intensity is None else seq.intensity[rows][keep], images,
                           None if self.num_points is None else np.asarray(points, np.float32).reshape(
                               -1, self.num_points, 2), sources))
        self.kept += int(keep.sum())

    def frames(self):
        frame_no = np.concatenate([p[0] for p in self.parts])
        label = np.concatenate([p[1] for p in self.parts])
        intensity = None if self.parts[0][2] is None else np.concatenate([p[2] for p in self.parts])
        images = [image for p in self.parts for image in p[3]]
        landmarks = None if self.parts[0][4] is None else np.concatenate([p[4] for p in self.parts])
        sources = None if self.parts[0][5] is None else [path for p in self.parts for path in p[5]]
        return frame_no, label, intensity, images, landmarks, sources

    def take_problems(self):
        return self.skips, dict(self.notes)


def _finalize(writer: FrameWriter, plan: DatasetPlan, options: FrameOptions, report: Report,
              planning_skips: list, folds_seed: int, resumed: int, landmarks_source: str | None,
              no_landmarks: tuple[int, str] | None) -> ConvertResult:
    kept = [(plan.sequences[i], length) for i, length in writer.done if length > 0]
    emptied = [plan.sequences[i].name for i, length in writer.done if length == 0]
    if not kept:
        raise DatasetError("every frame was skipped; nothing to write", plan.source_root)
    subjects = sorted({seq.subject for seq, _ in kept})
    subject_row = {s: i for i, s in enumerate(subjects)}
    counts = Counter()
    for seq, length in kept:
        counts[seq.subject] += length
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if plan.choose_folds is not None:  # a layout with its own split scheme (Aff-Wild2)
                test_folds, split_source = plan.choose_folds(dict(counts), folds_seed)
            else:
                test_folds, split_source = choose_folds(plan.dataset, dict(counts), folds_seed)
        except ValueError as e:
            raise DatasetError(str(e), plan.source_root) from None
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    # Sequences that lost every frame are not stored: renumber frames/sequence to stored rows.
    if emptied:
        writer.renumber_sequences(np.cumsum([length > 0 for _, length in writer.done]) - 1)
    attrs = {"dataset": plan.dataset, "au_names": list(plan.au_names), "label_rule": plan.label_rule,
             "image_size": np.array([options.image_size, options.image_size], dtype=np.int64),
             "image_format": options.image_format, "crop": options.crop, "source_root": plan.source_root,
             "split_seed": folds_seed, "labeled": True}
    attrs.update(plan.extras)
    listed = list(planning_skips) + [Skip(*s) for s in writer.saved_skips]
    skips = [s for s in listed if s.kind not in KEPT_WITHOUT_LANDMARKS]
    no_face_kept = [s for s in listed if s.kind in KEPT_WITHOUT_LANDMARKS]
    notes = dict(writer.saved_notes)
    notes.update(report.notes)  # planning notes (e.g. a video longer than its labels)
    for name in emptied:
        notes[f"{name}: every frame skipped, sequence not stored"] = 1
    attrs["skipped_frames"] = len(skips)
    attrs["skip_reasons"] = json.dumps(dict(Counter(s.kind for s in skips)))
    attrs["landmarks_source"] = landmarks_source if writer.num_points else "none"
    if writer.num_points:
        attrs["landmark_scheme"] = SCHEME if writer.num_points == NUM_POINTS else f"unknown ({writer.num_points} points)"
    if options.landmarks == "detect":
        attrs["no_face_frames"] = sum(s.kind in (NO_FACE, NO_FACE_KEPT) for s in listed)
        attrs["no_face_policy"] = options.no_face
    elif no_landmarks is not None:
        attrs["no_face_frames"], attrs["no_face_policy"] = no_landmarks
    writer.finalize(attrs, [seq.name for seq, _ in kept], [subject_row[seq.subject] for seq, _ in kept],
                    subjects, [length for _, length in kept], test_folds, split_source,
                    [str(s) for s in skips + no_face_kept])
    return ConvertResult(frames=sum(length for _, length in kept), sequences=len(kept), subjects=len(subjects),
                         skips=skips, notes=notes, resumed_sequences=resumed, split_source=split_source,
                         skipped_listing=skipped_path(writer.out) if skips or no_face_kept else None,
                         no_face_kept=no_face_kept)
