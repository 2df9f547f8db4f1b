"""Synthetic AU datasets written in the raw distribution layouts of BP4D, DISFA, BP4D+, MME and
Aff-Wild2 (ABAW).

Faces are drawn by ``face_render`` with every AU of the layout moving the face the way it
moves a real one, so the whole pipeline (convert -> HDF5 -> training -> F1) runs and is tested
without the licensed data. AU sequences come from a temporal model of expression events with
onset-apex-offset dynamics and realistic co-occurrence, or (``labels_from``) from real label
files, in which case every real label comes back exactly after conversion.

Layouts written (``<root>`` = ``out_root``):

BP4D (``bp4d``)
    ``AUCoding/AU_OCC/F001_T1.csv``: header = AU numbers, ``0`` = frame-number column
    (``0,1,2,4,5,6,7,9,10,11,12,13,14,15,16,17,18,19,20,22,23,24,27,28``); values 0/1,
    9 = unknown. Coded frames are one contiguous range starting at an arbitrary offset.
    ``2D+/F001/T1/<frame>.jpg``: images for the coded frames plus a few uncoded frames before and
    after; the zero padding of <frame> differs between sequences (``643.jpg``, ``0643.jpg``).
    ``AU Intensity Codes3.0/AU06/F001_T1_AU06.csv``: ``frame,intensity`` lines (0-5, 9 unknown)
    for AUs 6 10 12 14 17.
    ``2DFeatures/F001_T1.mat``: landmarks as BP4D ships them, a MATLAB v7.3 file (HDF5 with
    MATLAB's 512-byte header, ``#refs#`` group and ``MATLAB_class`` attributes) whose struct
    array ``fit`` has one element per frame from frame 1 to the last image: ``fit(k).pred`` an
    object reference to frame k's 49 x 2 [x y] points (``landmarks.BP4D_49``), ``fit(k).pose``
    to a struct of ``rot`` (3 x 3) and ``angle`` (1 x 3: pitch 0, the drawn head's yaw and roll,
    radians); frames before the first image have empty entries.
DISFA (``disfa``)
    ``ActionUnit_Labels/SN001/SN001_au1.txt``: ``frame,intensity`` lines, frames 1-based,
    intensity 0-5, for AUs 1 2 4 5 6 9 12 15 17 20 25 26.
    ``Videos_LeftCamera/LeftVideoSN001_comp.avi`` and ``Videos_RightCamera/RightVideoSN001_comp.avi``
    (MJPG; video frame k (0-based) is label frame k + 1).
    ``Landmark_Points/SN001/tmp_frame_lm/SN001_0000_lm.mat``: one MATLAB v5 file per left-camera
    video frame k (``SN001_{k:04d}_lm.mat``), the variable ``pts`` its 66 x 2 [x y] points
    (``landmarks.DISFA_66``); no right-camera landmarks, as the dataset ships none.
BP4D+ (``bp4d-plus``) and MME (``mme``)
    ``AUCoding/AU_OCC/F001_T1.csv`` as BP4D, for tasks T1 T6 T7 T8 only; images in
    ``2D+3D/F001.zip`` with members ``F001/T1/<frame>.jpg`` (or the extracted tree
    ``2D+3D/F001/T1/<frame>.jpg``) for more frames than are coded, plus a few images of the
    uncoded tasks; intensities in ``AU_INT/AU06/F001_T1_AU06.csv``.
    ``2DFeatures/F001_T1.mat`` (coded tasks): a MATLAB v5 file whose 1 x N struct ``fit`` has an
    element per image frame: ``frame`` (the image's frame number), ``pts_2d`` (49 x 2 [x y]) and
    ``headPose`` (1 x 3: pitch 0, yaw, roll, radians).
    MME subjects are named F001..F140 and M001..M093 (233 subjects).
Aff-Wild2 (``affwild2``)
    ``Annotations/AU_Detection_Challenge/{Train_Set,Validation_Set}/<video>.txt``: the AU header
    line, then one line per frame (frame i on line i + 1), values 0/1, runs of ``-1`` lines (not
    annotated). About a quarter of the videos are in Validation_Set; every third video shows two
    people, ``<video>_left`` and ``<video>_right``, each with its own file and face folder (both in
    the same set). ``cropped_aligned/<video>/<frame:05d>.jpg``: faces rendered at twice the crop
    size and aligned by ``faces.crop_face(..., "align")`` (eye centres and mouth at fixed places)
    into ``frame_size`` squares (default 112 x 112), as the challenge ships them. Some annotated
    frames have no face image (a missed detection), most ``-1`` frames have none, and a few images
    lie past the last annotated frame (no annotation line). Video lengths vary between half of
    ``frames`` and ``frames``. No landmark files (the challenge ships none); the truth lists the
    frames without an image (``no_image``).
All layouts
    ``synth_truth.json``: what was generated (see ``SynthTruth``).
With ``landmark_files="csv"`` the landmarks are written in the old layout instead of the
datasets' own files: ``Landmarks/<sequence>.csv`` (``F001_T1.csv``, ``SN001.csv``; DISFA's right
camera in ``Landmarks/RightCamera/SN001.csv``), header ``frame,x0,y0,...,x67,y67``, one row per
image frame, all 68 points in ``face_render.LANDMARK_NAMES`` order (the scheme's), (x, y) in
original-frame pixels. Landmark coordinates are the drawn points in every layout (pixel centres
at whole numbers).
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import gzip
import hashlib
import json
import multiprocessing
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import h5py
import numpy as np
import scipy.io
from scipy.signal import lfilter
from tqdm import tqdm

from . import affwild2
from .command_line import OneLineParser, add_out, add_quiet
from .face_render import (AU_INDEX, LANDMARK_NAMES, RENDERED_AUS, FaceRenderer, face_geometry,
                          intensity_to_amount, make_identity)
from .faces import crop_face
from .landmarks import BP4D_49, DISFA_66, alignment_matrix, transform_points

LANDMARK_FILES = ("dataset", "csv")  # generate(landmark_files=...): the datasets' own files, or the old CSV
TRUTH_FILE = "synth_truth.json"
TRUTH_FORMAT = 1

OCC_HEADER_AUS = (1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 22, 23, 24, 27, 28)
BP4D_BENCHMARK_AUS = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
INTENSITY_AUS = (6, 10, 12, 14, 17)
DISFA_AUS = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
DISFA_BENCHMARK_AUS = (1, 2, 4, 6, 9, 12, 25, 26)
DISFA_SUBJECTS = tuple(f"SN{k:03d}" for k in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 17, 18,
                                               21, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32))


def _names(prefix: str, count: int) -> tuple:
    return tuple(f"{prefix}{k:03d}" for k in range(1, count + 1))


# Aff-Wild2 video names in the challenge's style; every third video shows two people (_left / _right).
AFFWILD2_VIDEOS = tuple(f"{k}-30-1280x720" for k in range(1, 61))


def _affwild2_people(video: str) -> tuple:
    """The sequences of one synthetic Aff-Wild2 video: one person, or two (suffixes _left, _right)."""
    return affwild2.PERSON_SUFFIXES if AFFWILD2_VIDEOS.index(video) % 3 == 2 else ("",)


def _affwild2_set(position: int, count: int) -> str:
    """The official set of the video at ``position`` of the ``count`` videos written: every fourth
    from the third is a Validation_Set video (of two videos, the second), the others Train_Set."""
    validation = position % 4 == 2 or (count == 2 and position == 1)
    return affwild2.VALIDATION_SET if validation else affwild2.TRAIN_SET


@dataclass(frozen=True)
class Layout:
    name: str
    dataset: str
    subjects: tuple
    tasks: tuple          # coded tasks ("" for DISFA)
    uncoded_tasks: tuple  # tasks with images but no AU coding
    frame_size: tuple     # (width, height) of the real frames
    fps: int
    coded_aus: tuple      # label columns
    benchmark_aus: tuple
    intensity_aus: tuple
    default_frames: tuple  # (min, max) frames per sequence for the temporal model


LAYOUTS = {
    "bp4d": Layout("bp4d", "BP4D", _names("F", 23) + _names("M", 18), tuple(f"T{k}" for k in range(1, 9)),
                   (), (1040, 1392), 25, OCC_HEADER_AUS, BP4D_BENCHMARK_AUS, INTENSITY_AUS, (300, 760)),
    "disfa": Layout("disfa", "DISFA", DISFA_SUBJECTS, ("",), (), (1024, 768), 20, DISFA_AUS,
                    DISFA_BENCHMARK_AUS, DISFA_AUS, (4845, 4845)),
    "bp4d-plus": Layout("bp4d-plus", "BP4D+", _names("F", 82) + _names("M", 58), ("T1", "T6", "T7", "T8"),
                        ("T2", "T3", "T4", "T5", "T9", "T10"), (1040, 1392), 25, OCC_HEADER_AUS,
                        BP4D_BENCHMARK_AUS, INTENSITY_AUS, (400, 900)),
    "mme": Layout("mme", "MME", _names("F", 140) + _names("M", 93), ("T1", "T6", "T7", "T8"),
                  ("T2", "T3", "T4", "T5", "T9", "T10"), (1040, 1392), 25, OCC_HEADER_AUS,
                  BP4D_BENCHMARK_AUS, INTENSITY_AUS, (400, 900)),
    # subjects are videos; frame_size is the size of the cropped and aligned faces
    "affwild2": Layout("affwild2", affwild2.DATASET, AFFWILD2_VIDEOS, ("",), (),
                       (affwild2.FACE_SIZE, affwild2.FACE_SIZE), 30, affwild2.AFFWILD2_AUS, affwild2.AFFWILD2_AUS,
                       (), (300, 1500)),
}

# ---------------------------------------------------------------------------------------------
# Temporal model: latent expression events drive groups of AUs (member: probability).
EXPRESSIONS = {
    "smile": {6: 0.85, 12: 1.0, 7: 0.45, 10: 0.5, 25: 0.45, 26: 0.15, 14: 0.3},
    "surprise": {1: 1.0, 2: 0.95, 5: 0.75, 25: 0.6, 26: 0.55, 27: 0.08},
    "frown": {4: 1.0, 7: 0.75, 17: 0.45, 23: 0.45, 24: 0.4, 15: 0.2},
    "disgust": {9: 0.9, 10: 0.9, 4: 0.5, 7: 0.4, 17: 0.35, 11: 0.3, 25: 0.3},
    "sadness": {1: 0.8, 4: 0.6, 15: 0.9, 17: 0.65, 11: 0.2},
    "fear": {1: 0.9, 2: 0.6, 4: 0.7, 5: 0.5, 20: 0.9, 25: 0.6, 26: 0.3},
    "pain": {4: 0.9, 6: 0.8, 7: 0.9, 9: 0.35, 10: 0.8, 12: 0.4, 20: 0.3, 25: 0.4},
    "talk": {25: 1.0, 26: 0.6, 10: 0.2, 16: 0.3, 18: 0.15, 22: 0.15, 17: 0.25, 24: 0.1, 14: 0.2, 19: 0.05},
    "press": {24: 1.0, 23: 0.6, 17: 0.55, 14: 0.4, 28: 0.25},
    "embarrass": {12: 0.8, 14: 0.6, 24: 0.5, 6: 0.4, 13: 0.3},
}


@dataclass(frozen=True)
class RateProfile:
    """Fraction of time each expression covers, mean event length (s) and apex intensities."""

    coverage: dict
    independent: dict     # AU -> fraction of time covered by AU-only events
    default_independent: float
    duration_s: float
    apex: tuple           # (low, high) apex intensity
    task_emphasis: dict = field(default_factory=dict)  # task -> {expression: factor}


_BP4D_TASKS = {"T1": {"smile": 1.6}, "T2": {"sadness": 3.0}, "T3": {"surprise": 3.0},
               "T4": {"embarrass": 2.5}, "T5": {"fear": 3.0}, "T6": {"pain": 3.0},
               "T7": {"frown": 2.5}, "T8": {"disgust": 3.0}}
PROFILES = {
    "bp4d": RateProfile(
        {"smile": 0.42, "surprise": 0.1, "frown": 0.07, "disgust": 0.06, "sadness": 0.06, "fear": 0.03,
         "pain": 0.1, "talk": 0.3, "press": 0.06, "embarrass": 0.1},
        {7: 0.3, 10: 0.38, 14: 0.3, 17: 0.12, 6: 0.1, 15: 0.08, 23: 0.08}, 0.03, 4.0, (1.5, 5.0), _BP4D_TASKS),
    "disfa": RateProfile(
        {"smile": 0.12, "surprise": 0.04, "frown": 0.16, "disgust": 0.04, "sadness": 0.03, "fear": 0.03,
         "pain": 0.0, "talk": 0.3, "press": 0.03, "embarrass": 0.03},
        {}, 0.02, 3.0, (1.0, 4.8)),
}
PROFILES["bp4d-plus"] = RateProfile(
    {k: 0.8 * v for k, v in PROFILES["bp4d"].coverage.items()}, PROFILES["bp4d"].independent,
    0.03, 4.0, (1.5, 5.0), _BP4D_TASKS)
PROFILES["mme"] = PROFILES["bp4d-plus"]
# In the wild: much talking (AU25 is the most frequent AU of Aff-Wild2), smiles, few rarer AUs.
PROFILES["affwild2"] = RateProfile(
    {"smile": 0.3, "surprise": 0.06, "frown": 0.08, "disgust": 0.03, "sadness": 0.04, "fear": 0.02,
     "pain": 0.02, "talk": 0.5, "press": 0.04, "embarrass": 0.04},
    {7: 0.15, 25: 0.15, 26: 0.08}, 0.02, 3.0, (1.0, 4.5))


def _seed(*parts) -> int:
    """Stable 63-bit seed from any printable parts (independent of process and worker count)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def _envelope(length: int, rng: np.random.Generator) -> np.ndarray:
    """Onset-apex-offset curve in [0, 1] with smooth ramps."""
    onset, apex = rng.uniform(0.15, 0.35), rng.uniform(0.25, 0.5)
    t = (np.arange(length) + 0.5) / length
    up = np.clip(t / onset, 0, 1)
    down = np.clip((1 - t) / max(1 - onset - apex, 1e-3), 0, 1)
    ramp = np.minimum(up, down)
    return ramp * ramp * (3 - 2 * ramp)


def _add_events(out, column_aus, coverage, mean_len, apex, rng, n):
    """Renewal process of events covering about ``coverage`` of the time; max-combined into out."""
    if coverage <= 0:
        return
    coverage = min(coverage, 0.9)
    mean_gap = mean_len * (1 - coverage) / coverage
    t = -rng.uniform(0, mean_len + mean_gap)
    while t < n:
        length = max(int(mean_len * rng.uniform(0.5, 1.5)), 3)
        start = int(t)
        lo, hi = max(start, 0), min(start + length, n)
        if hi > lo:
            env = _envelope(length, rng)[lo - start:hi - start]
            strength = rng.uniform(*apex)
            for au, p in column_aus.items():
                if au in AU_INDEX and rng.random() < p:
                    peak = np.clip(strength * rng.uniform(0.7, 1.15), 0.6, 5.0)
                    col = out[lo:hi, AU_INDEX[au]]
                    np.maximum(col, peak * env, out=col)
        t = start + length + rng.exponential(mean_gap)


def simulate_intensities(rng: np.random.Generator, n_frames: int, layout: str, task: str = "") -> np.ndarray:
    """Continuous AU intensities (n_frames, len(RENDERED_AUS)) in 0..5 from the event model."""
    prof = PROFILES[layout]
    fps = LAYOUTS[layout].fps
    out = np.zeros((n_frames, len(RENDERED_AUS)))
    emphasis = prof.task_emphasis.get(task, {})
    for name, members in EXPRESSIONS.items():
        cov = prof.coverage.get(name, 0.0) * emphasis.get(name, 1.0)
        mean_len = prof.duration_s * fps * (0.5 if name == "talk" else 1.0)
        _add_events(out, members, cov, mean_len, prof.apex, rng, n_frames)
    for au in RENDERED_AUS:
        cov = prof.independent.get(au, prof.default_independent)
        _add_events(out, {au: 1.0}, cov, 0.6 * prof.duration_s * fps, prof.apex, rng, n_frames)
    return out


def _ar1(rng, n, sigma, rho=0.985) -> np.ndarray:
    """Smooth random walk around zero with stationary standard deviation ``sigma``."""
    x = lfilter([np.sqrt(1 - rho * rho) * sigma], [1, -rho], rng.normal(size=n + 200))
    return x[200:]


def _motion(rng, n, fps) -> dict:
    """Per-frame head pose offsets, gaze and blinks."""
    blink = np.zeros(n)
    t = rng.exponential(3 * fps)
    while t < n:
        length = int(rng.integers(4, 8))
        tri = 1 - np.abs(np.linspace(-1, 1, length))
        lo = int(t)
        seg = blink[lo:lo + length]
        seg[:] = np.maximum(seg, tri[:len(seg)])
        t += length + rng.exponential(3 * fps)
    return {"dx": _ar1(rng, n, 0.03), "dy": _ar1(rng, n, 0.025), "ds": _ar1(rng, n, 0.02),
            "roll": _ar1(rng, n, 0.04), "yaw": _ar1(rng, n, 0.07), "gx": _ar1(rng, n, 0.5, 0.95),
            "gy": _ar1(rng, n, 0.4, 0.95), "blink": blink}


# ---------------------------------------------------------------------------------------------
# Real label files (the ME-GraphAU lists in ../shared/data/au_labels).

def _read_text(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return f.read()


def _fold_files(folder: Path, stem: str, kind: str) -> list:
    files = []
    for k in (1, 2, 3):
        for suffix in (".txt.gz", ".txt"):
            p = folder / f"{stem}_test_{kind}_fold{k}{suffix}"
            if p.exists():
                files.append(p)
                break
    return files


def _read_list_pairs(folder: Path, stem: str, width: int):
    """(paths, labels (n, width) int) over the three test folds of one label folder."""
    path_files, label_files = _fold_files(folder, stem, "img_path"), _fold_files(folder, stem, "label")
    if not path_files or len(path_files) != len(label_files):
        raise FileNotFoundError(f"{folder}: expected {stem}_test_img_path_foldK.txt[.gz] and "
                                f"{stem}_test_label_foldK.txt[.gz] for K = 1, 2, 3")
    paths, labels = [], []
    for pf, lf in zip(path_files, label_files):
        p = _read_text(pf).split()
        try:
            values = np.array(_read_text(lf).split(), dtype=np.int16)
        except ValueError as e:
            raise ValueError(f"{lf}: non-integer label value ({e})") from None
        if values.size != len(p) * width:
            raise ValueError(f"{lf}: expected {len(p)} rows of {width} labels (pairs with {pf.name}), "
                             f"found {values.size} values")
        paths += p
        labels.append(values.reshape(-1, width))
    return paths, np.concatenate(labels)


def _label_folder(labels_from: Path, name: str) -> Path | None:
    for cand in (labels_from / name, labels_from / "au_labels" / name):
        if cand.is_dir():
            return cand
    if labels_from.name.lower() == name:
        return labels_from
    return None


def read_real_bp4d(labels_from) -> dict:
    """{(subject, task): (frame numbers int64 (n,), occurrence int8 (n, 12))}, frames sorted."""
    folder = _label_folder(Path(labels_from), "bp4d")
    if folder is None:
        raise FileNotFoundError(f"{labels_from}: no bp4d/ label folder (BP4D_test_*_foldK.txt.gz)")
    paths, labels = _read_list_pairs(folder, "BP4D", len(BP4D_BENCHMARK_AUS))
    try:
        parts = [p.split("/") for p in paths]
        keys = np.array([f"{q[0]}/{q[1]}" for q in parts])
        frames = np.array([int(q[2].split(".")[0]) for q in parts], np.int64)
    except (IndexError, ValueError):
        raise ValueError(f"{folder}: image paths must look like F001/T1/643.jpg") from None
    order = np.lexsort((frames, keys))
    keys, frames, labels = keys[order], frames[order], labels[order].astype(np.int8)
    names, starts = np.unique(keys, return_index=True)
    ends = np.append(starts[1:], len(keys))
    return {tuple(str(n).split("/")): (frames[a:b], labels[a:b]) for n, a, b in zip(names, starts, ends)}


def read_real_disfa(labels_from) -> dict:
    """{subject: intensity int8 (n, 12) for DISFA_AUS}, row t = frame t + 1.

    Intensities come from ``disfa_intensity/`` where present; the 0/1 labels of ``disfa/``
    (rule intensity >= 2) win where the two disagree (an occurring AU below 2 becomes 2, a
    non-occurring one at 2 or more becomes 1), so thresholding the written intensities at 2
    gives back the ``disfa/`` files exactly. With only ``disfa/``, an occurring AU gets
    intensity 3. The frame count comes from ``disfa/`` when present; frames absent from
    ``disfa_intensity/`` (no face detected there) get intensity 0 for the other four AUs.
    """
    root = Path(labels_from)
    binary_dir, inten_dir = _label_folder(root, "disfa"), _label_folder(root, "disfa_intensity")
    if binary_dir is None and inten_dir is None:
        raise FileNotFoundError(f"{labels_from}: no disfa/ or disfa_intensity/ label folder")

    def load(folder, width):
        paths, labels = _read_list_pairs(folder, "DISFA", width)
        try:
            subject = np.array([p.split("/")[0] for p in paths])
            index = np.array([int(p.rsplit("/", 1)[1].split(".")[0].rsplit("_", 1)[-1]) for p in paths])
        except (IndexError, ValueError):
            raise ValueError(f"{folder}: image paths must look like SN001/12.png or SN001/full_0012.png") from None
        return subject, index, labels

    binary = load(binary_dir, len(DISFA_BENCHMARK_AUS)) if binary_dir is not None else None
    inten = load(inten_dir, len(DISFA_AUS)) if inten_dir is not None else None
    bench_cols = [DISFA_AUS.index(a) for a in DISFA_BENCHMARK_AUS]
    subjects = set(binary[0]) if binary is not None else set(inten[0])
    out = {}
    for s in sorted(subjects):
        if binary is not None:
            m = binary[0] == s
            n = int(binary[1][m].max()) + 1
            b = np.zeros((n, len(bench_cols)), np.int8)
            b[binary[1][m]] = binary[2][m]
        else:
            n = int(inten[1][inten[0] == s].max()) + 1
        values = np.zeros((n, len(DISFA_AUS)), np.int8)
        if inten is not None:
            m = (inten[0] == s) & (inten[1] < n)
            values[inten[1][m]] = np.clip(inten[2][m], 0, 5)
        if binary is not None:
            cur = values[:, bench_cols]
            cur = np.where((b == 1) & (cur < 2), 2 if inten is not None else 3, cur)
            cur = np.where((b == 0) & (cur >= 2), 1, cur)
            values[:, bench_cols] = cur
        out[str(s)] = values
    return out


def _profile_from_occurrence(occ: np.ndarray, rng) -> np.ndarray:
    """Continuous intensity (>= 1 exactly where occ == 1) with onset-apex-offset per run."""
    out = np.zeros(len(occ))
    padded = np.concatenate([[0], (occ == 1).astype(np.int8), [0]])
    starts = np.flatnonzero(np.diff(padded) == 1)
    ends = np.flatnonzero(np.diff(padded) == -1)
    for a, b in zip(starts, ends):
        env = _envelope(b - a, rng) if b - a >= 3 else np.ones(b - a)
        out[a:b] = 1.0 + (rng.uniform(1.5, 4.0)) * env
    return np.clip(out, 0, 5)


# ---------------------------------------------------------------------------------------------
# Planning: what each sequence shows, before anything is drawn.

@dataclass
class SequencePlan:
    name: str                 # "F001/T1" or "SN001"
    subject: str
    task: str
    frame_no: np.ndarray      # coded frame numbers (n,)
    labels: np.ndarray        # int8 (n, A) over layout.coded_aus, -1 unknown
    intensity: np.ndarray     # int8 (n, A), -1 unknown
    image_frames: np.ndarray  # every frame number that gets an image (superset of frame_no)
    render: np.ndarray        # float (len(image_frames), len(RENDERED_AUS)) intensities drawn
    motion: dict
    zero_pad: int
    seed: int
    from_real: bool
    official_set: str = ""    # Aff-Wild2: Train_Set or Validation_Set


def _pick_subjects(layout: Layout, subjects, available=None) -> list:
    pool = list(available) if available is not None else list(layout.subjects)
    if subjects is None:
        return pool
    if isinstance(subjects, (int, np.integer)):
        if subjects < 1:
            raise ValueError(f"subjects={subjects}: must be at least 1")
        # Alternate female and male subjects so small sets hold both.
        f = [s for s in pool if s.startswith("F")]
        m = [s for s in pool if not s.startswith("F")]
        mixed = [x for pair in zip(f, m) for x in pair] + f[len(m):] + m[len(f):]
        return sorted(mixed[:subjects], key=pool.index)
    unknown = [s for s in subjects if s not in pool]
    if unknown:
        raise ValueError(f"unknown subjects for layout {layout.name}: {unknown} (known: {pool[0]}..{pool[-1]})")
    return list(subjects)


def _pick_tasks(layout: Layout, tasks) -> list:
    if layout.name in ("disfa", "affwild2"):
        if tasks is not None:
            unit = "subject" if layout.name == "disfa" else "person of a video"
            raise ValueError(f"tasks=: {layout.dataset} has one sequence per {unit}, no tasks")
        return [""]
    if tasks is None:
        return list(layout.tasks)
    unknown = [t for t in tasks if t not in layout.tasks]
    if unknown:
        raise ValueError(f"tasks {unknown} are not coded in layout {layout.name} (coded: {list(layout.tasks)})")
    return list(tasks)


def _quantise(render: np.ndarray, columns: tuple) -> np.ndarray:
    return np.clip(np.rint(render[:, [AU_INDEX[a] for a in columns]]), 0, 5).astype(np.int8)


def _plan_occurrence_sequence(layout, subject, task, seed, frames, real) -> SequencePlan:
    """BP4D / BP4D+ / MME sequence: coded range plus uncoded image margins."""
    name = f"{subject}/{task}"
    rng = np.random.default_rng(_seed(seed, layout.name, name))
    if real is not None:
        frame_no, occ = real
        if frames is not None:
            frame_no, occ = frame_no[:frames], occ[:frames]
        tail = 2  # extra coded rows after the real range, all benchmark AUs unknown (code 9)
        coded = np.concatenate([frame_no, frame_no[-1] + 1 + np.arange(tail)])
    else:
        lo, hi = layout.default_frames
        n = frames if frames is not None else int(rng.integers(lo, hi + 1))
        start = int(rng.integers(1, 1500))
        coded = start + np.arange(n)
    before = min(int(rng.integers(1, 4)), int(coded[0]))
    after = int(rng.integers(1, 4)) + (20 if layout.name != "bp4d" else 0)
    image_frames = np.arange(coded[0] - before, coded[-1] + after + 1)
    n_img = len(image_frames)
    render = simulate_intensities(rng, n_img, layout.name, task)
    at = np.searchsorted(image_frames, coded)
    if real is not None:
        # Benchmark AUs follow the real labels; margins copy the nearest coded row.
        for j, au in enumerate(BP4D_BENCHMARK_AUS):
            prof = _profile_from_occurrence(occ[:, j], rng)
            col = np.empty(n_img)
            col[at[:len(prof)]] = prof
            col[:at[0]] = prof[0]
            col[at[len(prof) - 1]:] = prof[-1]
            render[:, AU_INDEX[au]] = col
    intensity = _quantise(render[at], layout.coded_aus)
    labels = (intensity >= 1).astype(np.int8)
    unknown = np.zeros(labels.shape, bool)
    bench_cols = [layout.coded_aus.index(a) for a in layout.benchmark_aus]
    if real is not None:
        labels[:len(occ)][:, bench_cols] = occ  # exact copy (profile guarantees agreement)
        unknown[len(occ):, bench_cols] = True
    else:
        # A few short runs of unknown codes (9), as in the real files.
        for _ in range(max(1, len(coded) // 150)):
            a = int(rng.integers(0, len(coded)))
            cols = rng.random(len(layout.coded_aus)) < 0.3
            unknown[a:a + int(rng.integers(1, 6)), cols] = True
    labels[unknown] = -1
    intensity[unknown] = -1
    return SequencePlan(name, subject, task, coded, labels, intensity, image_frames, render,
                        _motion(rng, n_img, layout.fps), int(rng.choice([0, 3, 4])),
                        _seed(seed, layout.name, name), real is not None)


def _plan_disfa_sequence(layout, subject, seed, frames, real) -> SequencePlan:
    rng = np.random.default_rng(_seed(seed, layout.name, subject))
    if real is not None:
        values = real[:frames] if frames is not None else real
        n = len(values)
        render = simulate_intensities(rng, n, layout.name)  # AUs DISFA does not code
        for j, au in enumerate(DISFA_AUS):
            render[:, AU_INDEX[au]] = values[:, j]
        intensity = values.astype(np.int8)
    else:
        n = frames if frames is not None else layout.default_frames[0]
        render = simulate_intensities(rng, n, layout.name)
        intensity = _quantise(render, DISFA_AUS)
    labels = (intensity >= 2).astype(np.int8)
    frame_no = np.arange(1, n + 1)
    return SequencePlan(subject, subject, "", frame_no, labels, intensity, frame_no, render,
                        _motion(rng, n, layout.fps), 0, _seed(seed, layout.name, subject), real is not None)


def _plan_affwild2_video(layout, video, official_set, seed, frames) -> list:
    """The sequences (one per person) of one Aff-Wild2 video: annotation lines for frames 1..n with
    runs of -1 lines, and the frames that have a face image: not every annotated one (a missed
    detection), few of the -1 ones, and a few past the last annotation line."""
    rng = np.random.default_rng(_seed(seed, layout.name, video))
    lo, hi = layout.default_frames if frames is None else (max(1, (frames + 1) // 2), frames)
    n = int(rng.integers(lo, hi + 1))  # both people of a video: the video's length
    plans = []
    for person in _affwild2_people(video):
        name = video + person
        rng = np.random.default_rng(_seed(seed, layout.name, name))
        total = n + int(rng.integers(1, 4))  # frames n + 1.. have an image but no annotation line
        render = simulate_intensities(rng, total, layout.name)
        intensity = _quantise(render[:n], layout.coded_aus)
        labels = (intensity >= 1).astype(np.int8)
        unknown = np.zeros(n, dtype=bool)
        for _ in range(max(1, n // 100)):
            start = int(rng.integers(0, n))
            unknown[start:start + int(rng.integers(1, max(2, n // 10) + 1))] = True
        labels[unknown] = -1
        intensity[unknown] = -1
        has_image = np.ones(total, dtype=bool)
        annotated = has_image[:n]  # a view: writes go to has_image
        annotated[unknown] = rng.random(int(unknown.sum())) < 0.3
        labelled = np.flatnonzero(~unknown)
        missed = labelled[rng.random(len(labelled)) < 0.04]
        if len(missed) == 0 and len(labelled) >= 2:  # every person has a missed face ...
            missed = rng.choice(labelled, 1)
        if len(missed) == len(labelled) and len(labelled):  # ... and keeps an annotated one
            missed = missed[1:]
        annotated[missed] = False
        motion = {key: value[has_image] for key, value in _motion(rng, total, layout.fps).items()}
        plans.append(SequencePlan(name, video, "", np.arange(1, n + 1), labels, intensity,
                                  np.flatnonzero(has_image) + 1, render[has_image], motion, 5,
                                  _seed(seed, layout.name, name), False, official_set))
    return plans


# ---------------------------------------------------------------------------------------------
# Rendering jobs (run in worker processes; everything they need travels in the job).

def _identity(seed, layout_name, subject):
    rng = np.random.default_rng(_seed(seed, layout_name, "identity", subject))
    # BP4D-style names say F or M; an Aff-Wild2 person (a sequence) gets a drawn one
    return make_identity(rng, female=None if layout_name == "affwild2" else subject.startswith("F"))


def first_frame(layout: str) -> int:
    """The first frame number a layout has an image for: BP4D counts frames from 1 (its landmark
    files' fit(k) is frame k), so a margin frame 0 of the plan is drawn but not written."""
    return 1 if layout == "bp4d" else 0


def _frame_name(frame: int, pad: int) -> str:
    return f"{frame:0{pad}d}.jpg" if pad else f"{frame}.jpg"


class _Frames:
    """Draws (or only locates, for placeholders) the frames of one sequence and camera."""

    def __init__(self, job, plan: SequencePlan, yaw_offset=0.0):
        w, h = job["frame_size"]
        self.plan, self.images, self.quality = plan, job["images"], job["jpeg_quality"]
        rng = np.random.default_rng(_seed(plan.seed, "render", yaw_offset))
        idn = job["identity"]
        self.renderer = FaceRenderer(idn, w, h, rng)
        self.offset = rng.normal(0, 0.03, 2)  # per-sequence framing change
        self.yaw_offset = yaw_offset
        self.amounts = intensity_to_amount(plan.render) * job.get("expressiveness", 1.0)
        self.noise_pick = rng.integers(0, 3, len(plan.image_frames))
        self._placeholder = None

    def frame(self, i, encode=True):
        """-> (jpeg bytes (None unless encode), BGR image (None for placeholders), landmarks (P, 2),
        box (4,)) of image row i."""
        m = self.plan.motion
        pose = self.renderer.pose(m["dx"][i] + self.offset[0], m["dy"][i] + self.offset[1], m["ds"][i],
                                  m["roll"][i], m["yaw"][i] + self.yaw_offset)
        gaze = (m["gx"][i], m["gy"][i])
        if self.images:
            img, lm, box = self.renderer.render(self.amounts[i], pose, m["blink"][i], gaze,
                                                int(self.noise_pick[i]))
            if not encode:
                return None, img, lm, box
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            return buf.tobytes(), img, lm, box
        g = face_geometry(self.renderer.idn, self.amounts[i], m["blink"][i], gaze)
        lm = pose(g["landmarks"])
        box_pts = np.concatenate([lm, pose(g["face"][:40])])
        return None, None, lm, np.concatenate([box_pts.min(0), box_pts.max(0)])

    def head_pose(self, i) -> np.ndarray:
        """(pitch, yaw, roll) in radians of image row i's drawn head (the renderer has no pitch)."""
        m = self.plan.motion
        return np.array([0.0, m["yaw"][i] + self.yaw_offset, m["roll"][i]])

    def placeholder(self):
        """One uniform grey frame used for every image when images=False."""
        if self._placeholder is None:
            w, h = self.renderer.w, self.renderer.h
            img = np.full((h, w, 3), 128, np.uint8)
            self._placeholder = (img, cv2.imencode(".jpg", img)[1].tobytes())
        return self._placeholder


def _write_landmarks(path: Path, frames: np.ndarray, landmarks: np.ndarray) -> None:
    """The old layout: Landmarks/<sequence>.csv, every 68 points of every image frame."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "frame," + ",".join(f"x{k},y{k}" for k in range(landmarks.shape[1]))
    flat = landmarks.reshape(len(frames), -1)
    lines = [header] + [f"{f}," + ",".join(f"{v:.2f}" for v in row) for f, row in zip(frames, flat)]
    path.write_text("\n".join(lines) + "\n")


# ---- the datasets' own landmark files (MATLAB) ---------------------------------------------------

MAT5_TEXT = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: datasets_tools synth"
MAT73_TEXT = b"MATLAB 7.3 MAT-file, Platform: posix, Created by: datasets_tools synth HDF5 schema 1.00 ."


def _savemat(path: Path, variables: dict) -> None:
    """A MATLAB v5 file (scipy.io.savemat) whose descriptive header text names no date, so the
    same content gives the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, variables, format="5")
    with open(path, "r+b") as f:
        f.write(MAT5_TEXT.ljust(116))


def _rotation(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """3 x 3 rotation: roll about z, after yaw about y, after pitch about x."""
    cx, sx, cy, sy, cz, sz = np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw), np.cos(roll), np.sin(roll)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _matlab_class(node, name: str) -> None:
    node.attrs["MATLAB_class"] = np.bytes_(name)


def _matlab_struct(node, fields) -> None:
    """Mark an HDF5 group as a MATLAB struct with ``fields`` (MATLAB_fields: one char array each)."""
    _matlab_class(node, "struct")
    names = np.empty(len(fields), dtype=object)
    names[:] = [np.frombuffer(name.encode(), dtype="S1") for name in fields]
    node.attrs.create("MATLAB_fields", names, dtype=h5py.vlen_dtype(np.dtype("S1")))


def _matlab_double(group, name: str, matrix: np.ndarray):
    """A MATLAB double matrix (rows x columns) as MATLAB v7.3 stores it: column-major, so the
    HDF5 dataset is its transpose."""
    node = group.create_dataset(name, data=np.asarray(matrix, dtype=np.float64).T)
    _matlab_class(node, "double")
    return node


def _write_2dfeatures_v73(path: Path, frames: np.ndarray, landmarks: np.ndarray, poses: np.ndarray) -> None:
    """BP4D's 2DFeatures file: ``fit``, one struct element per frame 1..frames[-1]; ``pred`` refers
    to the 49 x 2 points of the frames given (their 68-point ``landmarks`` (n, 68, 2)), ``pose``
    to a struct of ``rot`` and ``angle`` (from ``poses`` (n, 3)); earlier frames refer to an
    empty double (a lost frame). Object references into ``#refs#``, as MATLAB writes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = int(frames[-1])
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        names = (f"r{k}" for k in range(2 * len(frames) + 1))
        empty = refs.create_dataset(next(names), data=np.zeros(2, np.uint64))  # MATLAB's [] : its dimensions
        _matlab_class(empty, "double")
        empty.attrs["MATLAB_empty"] = np.uint8(1)
        pred = np.full(count, empty.ref, dtype=h5py.ref_dtype)
        pose = np.full(count, empty.ref, dtype=h5py.ref_dtype)
        for frame, points, angle in zip(frames, landmarks, poses):
            pred[frame - 1] = _matlab_double(refs, next(names), points[list(BP4D_49)]).ref
            head = refs.create_group(next(names))
            _matlab_struct(head, ["rot", "angle"])
            _matlab_double(head, "rot", _rotation(*angle))
            _matlab_double(head, "angle", angle[None, :])
            pose[frame - 1] = head.ref
        fit = f.create_group("fit")
        _matlab_struct(fit, ["pred", "pose"])
        fit.create_dataset("pred", data=pred[:, None])  # a 1 x N struct array: HDF5 (N, 1)
        fit.create_dataset("pose", data=pose[:, None])
    with open(path, "r+b") as f:  # MATLAB's header in the userblock: descriptive text, version 0x0200, 'IM'
        f.write(MAT73_TEXT.ljust(116) + b" " * 8 + b"\x00\x02IM")


def _write_2dfeatures_v5(path: Path, frames: np.ndarray, landmarks: np.ndarray, poses: np.ndarray) -> None:
    """BP4D+'s 2DFeatures file: ``fit``, a 1 x N struct with ``frame``, ``pts_2d`` (49 x 2) and
    ``headPose`` (1 x 3) per image frame."""
    fit = np.empty((1, len(frames)), dtype=[("frame", object), ("pts_2d", object), ("headPose", object)])
    for k, (frame, points, angle) in enumerate(zip(frames, landmarks, poses)):
        fit[0, k] = (np.array([[float(frame)]]), points[list(BP4D_49)].astype(np.float64), angle[None, :])
    _savemat(path, {"fit": fit})


def _write_landmark_points(folder: Path, subject: str, landmarks: np.ndarray) -> None:
    """DISFA's Landmark_Points/<subject>: one file per video frame k (from 0), ``pts`` 66 x 2."""
    for k, points in enumerate(landmarks):
        _savemat(folder / "tmp_frame_lm" / f"{subject}_{k:04d}_lm.mat",
                 {"pts": points[list(DISFA_66)].astype(np.float64)})


def _render_job(job) -> dict:
    """Render and write one job; returns {sequence name: face boxes (n_images, 4)}."""
    cv2.setNumThreads(1)
    root = Path(job["root"])
    boxes = {}
    kind = job["kind"]
    if kind == "video":
        plan = job["plans"][0]
        frames = _Frames(job, plan, job["yaw"])
        path = root / job["video"]
        path.parent.mkdir(parents=True, exist_ok=True)
        w, h = job["frame_size"]
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), LAYOUTS["disfa"].fps, (w, h))
        if not writer.isOpened():
            raise RuntimeError(f"{path}: OpenCV cannot open an MJPG video writer")
        lms, bx = [], []
        for i in range(len(plan.image_frames)):
            _, img, lm, box = frames.frame(i)
            writer.write(img if img is not None else frames.placeholder()[0])
            lms.append(lm)
            bx.append(box)
        writer.release()
        cap = cv2.VideoCapture(str(path))
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        if count != len(plan.image_frames):
            raise RuntimeError(f"{path}: wrote {len(plan.image_frames)} frames but the video reports {count}")
        if job["landmark_files"] == "csv":
            _write_landmarks(root / job["landmarks"], plan.image_frames, np.array(lms))
        elif job["landmarks"] is not None:  # the left camera's
            _write_landmark_points(root / job["landmarks"], plan.subject, np.array(lms))
        boxes[plan.name] = np.array(bx, np.float32)
        return boxes

    if kind == "aligned":
        return _render_aligned(job, root)
    archive = zipfile.ZipFile(root / job["zip"], "w", zipfile.ZIP_STORED) if kind == "zip" else None
    try:
        for plan in job["plans"]:
            frames = _Frames(job, plan)
            subdir = f"{plan.subject}/{plan.task}"
            folder = root / job["image_dir"] / subdir
            if archive is None:
                folder.mkdir(parents=True, exist_ok=True)
            lms, bx, poses, first_file = [], [], [], None
            for i, f in enumerate(plan.image_frames):
                data, _, lm, box = frames.frame(i)  # every row is drawn, so each frame keeps its draws
                poses.append(frames.head_pose(i))
                lms.append(lm)
                bx.append(box)
                name = _frame_name(int(f), plan.zero_pad)
                if f < first_frame(job["layout"]):
                    continue
                if archive is not None:
                    archive.writestr(f"{subdir}/{name}", data if data is not None else frames.placeholder()[1])
                elif data is not None:
                    (folder / name).write_bytes(data)
                elif first_file is None:
                    first_file = folder / name
                    first_file.write_bytes(frames.placeholder()[1])
                else:
                    _link_or_copy(first_file, folder / name)
            if plan.frame_no.size:  # uncoded tasks have no landmarks file and no truth
                stem = f"{plan.subject}_{plan.task}"
                written = plan.image_frames >= first_frame(job["layout"])
                image_frames, lms, poses = plan.image_frames[written], np.array(lms)[written], np.array(poses)[written]
                if job["landmark_files"] == "csv":
                    _write_landmarks(root / "Landmarks" / f"{stem}.csv", image_frames, lms)
                else:
                    write = _write_2dfeatures_v73 if job["layout"] == "bp4d" else _write_2dfeatures_v5
                    write(root / "2DFeatures" / f"{stem}.mat", image_frames, lms, poses)
            boxes[plan.name] = np.array(bx, np.float32)
    finally:
        if archive is not None:
            archive.close()
    return boxes


def _render_aligned(job, root: Path) -> dict:
    """Aff-Wild2: each face rendered at twice the crop size, then aligned and cut to the crop size by
    the converter's own --crop align (eye centres and mouth at fixed places), as the challenge's
    cropped_aligned faces are; -> {sequence name: face boxes (n_images, 4) in crop pixels}."""
    plan = job["plans"][0]
    frames, size = _Frames(job, plan), job["crop_size"]
    folder = root / affwild2.FACES_DIR / plan.name
    folder.mkdir(parents=True, exist_ok=True)
    placeholder = cv2.imencode(".jpg", np.full((size, size, 3), 128, np.uint8))[1].tobytes()
    boxes = []
    for i, frame in enumerate(plan.image_frames):
        _, image, points, _ = frames.frame(i, encode=False)
        if image is None:  # images=False: a grey placeholder, the landmarks aligned all the same
            data, points = placeholder, transform_points(points, alignment_matrix(points, size))
        else:
            face, points, _ = crop_face(image, "align", size, points)
            data = cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, job["jpeg_quality"]])[1].tobytes()
        (folder / affwild2.face_file(int(frame))).write_bytes(data)
        boxes.append(np.concatenate([points.min(0), points.max(0)]))
    return {plan.name: np.array(boxes, np.float32).reshape(-1, 4)}


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        dst.write_bytes(src.read_bytes())


# ---------------------------------------------------------------------------------------------
# Truth

@dataclass
class SynthSequence:
    name: str                 # "F001/T1" or "SN001" (the HDF5 sequence name)
    subject: str
    task: str                 # "" for DISFA
    frame_no: np.ndarray      # int64 (n,) coded frame numbers (DISFA: 1..n)
    labels: np.ndarray        # int8 (n, A) 1/0, -1 unknown (code 9); DISFA: intensity >= 2
    intensity: np.ndarray     # int8 (n, A) 0..5, -1 unknown
    face_box: np.ndarray      # float32 (n, 4) x0, y0, x1, y1 in original-frame pixels (Aff-Wild2: in the
                              # aligned crop; NaN where a frame has no image)
    image_frames: tuple       # (first, last) frame number with an image
    zero_pad: int             # image file name width (0 = no padding)
    label_file: str           # relative to the root
    image_source: str         # folder, "zip:member-prefix" or video, relative to the root
    seed: int
    from_real: bool
    no_image: tuple = ()      # frames in image_frames' range without an image (Aff-Wild2)


@dataclass
class SynthTruth:
    """What ``generate`` wrote; saved as ``<root>/synth_truth.json`` (arrays as nested lists)."""

    layout: str
    dataset: str
    root: str
    seed: int
    frame_size: tuple         # (width, height)
    images: bool              # False: every image is a uniform grey placeholder
    labels_from: str | None
    au_numbers: tuple         # columns of labels / intensity
    benchmark_aus: tuple
    intensity_aus: tuple      # AUs with intensity files
    landmark_names: list
    sequences: list

    def sequence(self, name: str) -> SynthSequence:
        for s in self.sequences:
            if s.name == name:
                return s
        raise KeyError(f"no sequence {name!r} in the synthetic truth of {self.root}")

    def labels(self, aus=None) -> np.ndarray:
        """All coded frames' labels (sequence order) for ``aus`` (default: benchmark AUs)."""
        cols = [self.au_numbers.index(a) for a in (aus or self.benchmark_aus)]
        return np.concatenate([s.labels[:, cols] for s in self.sequences])

    def to_json(self) -> dict:
        seqs = []
        for s in self.sequences:
            seqs.append({
                "name": s.name, "subject": s.subject, "task": s.task,
                "frame_no": s.frame_no.tolist(), "labels": s.labels.tolist(),
                "intensity": s.intensity.tolist(), "face_box": np.round(s.face_box, 2).tolist(),
                "image_frames": list(s.image_frames), "zero_pad": s.zero_pad,
                "label_file": s.label_file, "image_source": s.image_source, "seed": s.seed,
                "from_real": s.from_real, "no_image": list(s.no_image)})
        return {"format": TRUTH_FORMAT, "layout": self.layout, "dataset": self.dataset, "root": self.root,
                "seed": self.seed, "frame_size": list(self.frame_size), "images": self.images,
                "labels_from": self.labels_from, "au_numbers": list(self.au_numbers),
                "benchmark_aus": list(self.benchmark_aus), "intensity_aus": list(self.intensity_aus),
                "landmark_names": self.landmark_names, "sequences": seqs}

    def save(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, separators=(",", ":"))

    @classmethod
    def load(cls, root) -> "SynthTruth":
        path = Path(root)
        if path.is_dir():
            path = path / TRUTH_FILE
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no synthetic truth file (written by datasets_tools synth)") from None
        if d.get("format") != TRUTH_FORMAT:
            raise ValueError(f"{path}: truth format {d.get('format')!r}, expected {TRUTH_FORMAT}")
        width = len(d["au_numbers"])

        def arr(v, dtype, cols):
            return np.array(v, dtype).reshape(-1, cols) if cols else np.array(v, dtype)
        seqs = [SynthSequence(s["name"], s["subject"], s["task"], arr(s["frame_no"], np.int64, 0),
                              arr(s["labels"], np.int8, width), arr(s["intensity"], np.int8, width),
                              arr(s["face_box"], np.float32, 4), tuple(s["image_frames"]), s["zero_pad"],
                              s["label_file"], s["image_source"], s["seed"], s["from_real"],
                              tuple(s.get("no_image", ())))
                for s in d["sequences"]]
        return cls(d["layout"], d["dataset"], d["root"], d["seed"], tuple(d["frame_size"]), d["images"],
                   d["labels_from"], tuple(d["au_numbers"]), tuple(d["benchmark_aus"]),
                   tuple(d["intensity_aus"]), d["landmark_names"], seqs)


# ---------------------------------------------------------------------------------------------
# Label files

def _write_occurrence_csv(path: Path, plan: SequencePlan, aus) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    codes = np.where(plan.labels < 0, 9, plan.labels)
    lines = [",".join(["0"] + [str(a) for a in aus])]
    lines += [f"{f}," + ",".join(map(str, row)) for f, row in zip(plan.frame_no.tolist(), codes.tolist())]
    path.write_text("\n".join(lines) + "\n")


def _write_value_file(path: Path, frames, values) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{f},{v}\n" for f, v in zip(frames.tolist(), values.tolist())))


def parse_frame_size(text) -> tuple:
    """'WxH' (or a (W, H) pair) -> (W, H)."""
    if isinstance(text, str):
        try:
            w, h = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise ValueError(f"frame size {text!r}: expected WIDTHxHEIGHT, e.g. 256x256") from None
    else:
        w, h = (int(v) for v in text)
    if w < 32 or h < 32:
        raise ValueError(f"frame size {w}x{h}: width and height must be at least 32 pixels")
    return w, h


def generate(layout: str, out_root, subjects=None, tasks=None, frames=None, frame_size=None,
             seed: int = 0, labels_from=None, images: bool = True, workers: int = 1,
             zip_images: bool = True, intensity_files: bool = True, jpeg_quality: int = 90,
             uncoded_frames: int = 3, progress: bool = True, expressiveness: float = 1.0,
             landmark_files: str = "dataset") -> SynthTruth:
    """Write a synthetic raw dataset in ``layout``'s distribution layout under ``out_root``.

    subjects: None (all of the layout's subjects), a count (alternating F/M) or a list of names.
    tasks: BP4D / BP4D+ / MME tasks to write (default all coded tasks).
    frames: frames per sequence (default: realistic lengths); with labels_from, a cap (first N).
    frame_size: (W, H) or "WxH"; default the real size (BP4D/BP4D+/MME 1040x1392, DISFA 1024x768).
    labels_from: folder with the real label lists (``bp4d/``, ``disfa/``, ``disfa_intensity/``).
    images: False writes one uniform grey placeholder per frame (hard links where possible) so
        converters still find every frame; labels, landmarks and truth are as with images.
    zip_images: BP4D+ / MME: images in ``2D+3D/<subject>.zip`` (else the extracted tree).
    workers: processes for rendering; results do not depend on it.
    expressiveness: scales how far every AU moves the drawn face (1.0 = the renderer's natural
        amplitudes). Labels, intensities and the event model are unchanged; values above 1
        exaggerate the movements so that small models on small crops see them (``aubench demo``).
    landmark_files: "dataset" writes the landmark files each dataset ships (BP4D 2DFeatures as
        MATLAB v7.3, BP4D+ / MME as MATLAB v5, DISFA Landmark_Points); "csv" the old layout,
        Landmarks/<sequence>.csv with all 68 points (what earlier versions wrote).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {sorted(LAYOUTS)}")
    lay = LAYOUTS[layout]
    size = parse_frame_size(frame_size) if frame_size is not None else lay.frame_size
    if layout == "affwild2" and size[0] != size[1]:
        raise ValueError(f"frame size {size[0]}x{size[1]}: Aff-Wild2's cropped and aligned faces are square "
                         f"(e.g. {affwild2.FACE_SIZE}x{affwild2.FACE_SIZE})")
    if frames is not None and frames < 1:
        raise ValueError(f"frames={frames}: must be at least 1")
    if workers < 1:
        raise ValueError(f"workers={workers}: must be at least 1")
    if not 0 < expressiveness <= 4:
        raise ValueError(f"expressiveness={expressiveness}: must be in (0, 4]")
    if landmark_files not in LANDMARK_FILES:
        raise ValueError(f"landmark_files={landmark_files!r}: expected one of {', '.join(LANDMARK_FILES)}")
    root = Path(out_root)
    root.mkdir(parents=True, exist_ok=True)
    picked_tasks = _pick_tasks(lay, tasks)

    plans: list[SequencePlan] = []
    if layout == "disfa":
        real = read_real_disfa(labels_from) if labels_from is not None else None
        for s in _pick_subjects(lay, subjects, sorted(real) if real else None):
            plans.append(_plan_disfa_sequence(lay, s, seed, frames, real[s] if real else None))
    elif layout == "affwild2":
        if labels_from is not None:
            raise ValueError("labels_from is available for the bp4d and disfa layouts, not affwild2")
        videos = _pick_subjects(lay, subjects)
        for position, video in enumerate(videos):
            plans += _plan_affwild2_video(lay, video, _affwild2_set(position, len(videos)), seed, frames)
    else:
        real = None
        if labels_from is not None:
            if layout != "bp4d":
                raise ValueError(f"labels_from is available for the bp4d and disfa layouts, not {layout} "
                                 "(no real BP4D+/MME label files are public)")
            real = read_real_bp4d(labels_from)
        available = sorted({k[0] for k in real}) if real else None
        for s in _pick_subjects(lay, subjects, available):
            for t in picked_tasks:
                if real is not None and (s, t) not in real:
                    continue
                plans.append(_plan_occurrence_sequence(lay, s, t, seed, frames,
                                                       real[(s, t)] if real else None))

    jobs = _make_jobs(lay, root, plans, size, seed, images, zip_images, jpeg_quality, uncoded_frames,
                      expressiveness, landmark_files)
    boxes = _run_jobs(jobs, workers, progress)
    _write_labels(lay, root, plans, intensity_files)

    sequences = []
    for p in plans:
        # face boxes of the coded frames; NaN where a frame has no image (Aff-Wild2)
        has_image = np.isin(p.frame_no, p.image_frames)
        box = np.full((len(p.frame_no), 4), np.nan, np.float32)
        box[has_image] = boxes[p.name][np.searchsorted(p.image_frames, p.frame_no[has_image])]
        first, last = max(int(p.image_frames[0]), first_frame(layout)), int(p.image_frames[-1])
        no_image = tuple(int(f) for f in np.setdiff1d(np.arange(first, last + 1), p.image_frames))
        if layout == "disfa":
            label_file = f"ActionUnit_Labels/{p.subject}/{p.subject}_au1.txt"
            source = f"Videos_LeftCamera/LeftVideo{p.subject}_comp.avi"
        elif layout == "affwild2":
            label_file = "/".join((*affwild2.ANNOTATION_DIR, p.official_set, f"{p.name}.txt"))
            source = f"{affwild2.FACES_DIR}/{p.name}"
        else:
            label_file = f"AUCoding/AU_OCC/{p.subject}_{p.task}.csv"
            source = (f"2D+/{p.subject}/{p.task}" if layout == "bp4d" else
                      f"2D+3D/{p.subject}.zip:{p.subject}/{p.task}" if zip_images else
                      f"2D+3D/{p.subject}/{p.task}")
        sequences.append(SynthSequence(p.name, p.subject, p.task, p.frame_no.astype(np.int64), p.labels,
                                       p.intensity, box, (first, last), p.zero_pad, label_file, source, p.seed,
                                       p.from_real, no_image))
    truth = SynthTruth(layout, lay.dataset, str(root), seed, tuple(size), bool(images),
                       str(labels_from) if labels_from is not None else None, lay.coded_aus,
                       lay.benchmark_aus, lay.intensity_aus, list(LANDMARK_NAMES), sequences)
    truth.save(root / TRUTH_FILE)
    return truth


def _make_jobs(lay, root, plans, size, seed, images, zip_images, quality, uncoded_frames,
               expressiveness=1.0, landmark_files="dataset") -> list:
    common = {"root": str(root), "frame_size": size, "images": images, "jpeg_quality": quality,
              "expressiveness": expressiveness, "layout": lay.name, "landmark_files": landmark_files}
    jobs = []
    if lay.name == "disfa":
        for p in plans:
            idn = _identity(seed, lay.name, p.subject)
            for cam, yaw in (("Left", 0.12), ("Right", -0.12)):
                if landmark_files == "csv":
                    lm = f"Landmarks/{p.subject}.csv" if cam == "Left" else f"Landmarks/RightCamera/{p.subject}.csv"
                else:  # the left camera's only, as the dataset ships them
                    lm = f"Landmark_Points/{p.subject}" if cam == "Left" else None
                jobs.append(dict(common, kind="video", plans=[p], identity=idn, yaw=yaw, landmarks=lm,
                                 video=f"Videos_{cam}Camera/{cam}Video{p.subject}_comp.avi"))
    elif lay.name == "bp4d":
        for p in plans:
            jobs.append(dict(common, kind="files", plans=[p], identity=_identity(seed, lay.name, p.subject),
                             image_dir="2D+"))
    elif lay.name == "affwild2":  # one person per job, drawn at twice the crop size
        width, height = size
        for p in plans:
            jobs.append(dict(common, kind="aligned", plans=[p], identity=_identity(seed, lay.name, p.name),
                             frame_size=(2 * width, 2 * height), crop_size=width))
    else:
        by_subject: dict = {}
        for p in plans:
            by_subject.setdefault(p.subject, []).append(p)
        (root / "2D+3D").mkdir(parents=True, exist_ok=True)
        for s, ps in by_subject.items():
            extra = []
            for t in lay.uncoded_tasks:
                if uncoded_frames > 0:
                    rng = np.random.default_rng(_seed(seed, lay.name, s, t))
                    n = uncoded_frames
                    extra.append(SequencePlan(f"{s}/{t}", s, t, np.zeros(0, np.int64), np.zeros((0, 0), np.int8),
                                              np.zeros((0, 0), np.int8), np.arange(n),
                                              simulate_intensities(rng, n, lay.name), _motion(rng, n, lay.fps),
                                              int(rng.choice([0, 3, 4])), _seed(seed, lay.name, s, t), False))
            jobs.append(dict(common, kind="zip" if zip_images else "files", plans=ps + extra,
                             identity=_identity(seed, lay.name, s), zip=f"2D+3D/{s}.zip", image_dir="2D+3D"))
    return jobs


def _run_jobs(jobs, workers, progress) -> dict:
    total = sum(len(p.image_frames) for j in jobs for p in j["plans"])
    boxes: dict = {}

    def collect(job, result):
        # The truth holds the left camera's face boxes (DISFA's right camera has its own landmarks).
        if job.get("yaw", 0) >= 0:
            boxes.update(result)
        bar.update(sum(len(p.image_frames) for p in job["plans"]))

    with tqdm(total=total, unit="frame", disable=not progress, desc="synth") as bar:
        if workers == 1:
            for job in jobs:
                collect(job, _render_job(job))
        else:
            # fork starts workers at once and works from any __main__; the jobs never touch torch.
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            ctx = multiprocessing.get_context(method)
            with futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                pending = {pool.submit(_render_job, job): job for job in jobs}
                for fut in futures.as_completed(pending):
                    collect(pending[fut], fut.result())
    return boxes


def _write_labels(lay, root, plans, intensity_files) -> None:
    if lay.name == "affwild2":
        for p in plans:
            path = root.joinpath(*affwild2.ANNOTATION_DIR, p.official_set, f"{p.name}.txt")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(affwild2.annotation_text(p.labels))
        return
    if lay.name == "disfa":
        for p in plans:
            for j, au in enumerate(DISFA_AUS):
                _write_value_file(root / "ActionUnit_Labels" / p.subject / f"{p.subject}_au{au}.txt",
                                  p.frame_no, p.intensity[:, j])
        return
    inten_dir = "AU Intensity Codes3.0" if lay.name == "bp4d" else "AU_INT"
    for p in plans:
        _write_occurrence_csv(root / "AUCoding" / "AU_OCC" / f"{p.subject}_{p.task}.csv", p, lay.coded_aus)
        if intensity_files:
            for au in lay.intensity_aus:
                col = p.intensity[:, lay.coded_aus.index(au)]
                _write_value_file(root / inten_dir / f"AU{au:02d}" / f"{p.subject}_{p.task}_AU{au:02d}.csv",
                                  p.frame_no, np.where(col < 0, 9, col))


# ---------------------------------------------------------------------------------------------
# Command line (wired into ``datasets_tools synth``)

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layout", required=True, choices=sorted(LAYOUTS), help="raw layout to write")
    add_out(parser, "folder to write the raw dataset tree into; a positional argument is read as OUT too",
            positional="out_root", metavar="OUT")
    parser.add_argument("--subjects", type=int, default=None,
                        help="number of subjects (affwild2: videos; default: all)")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks, e.g. T1,T2 (BP4D/BP4D+/MME)")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames per sequence (with --labels-from: keep the first N; affwild2: the longest "
                             "video, lengths vary down to half of it)")
    parser.add_argument("--frame-size", default=None,
                        help="WxH, e.g. 256x256 (default: the real size; affwild2: the aligned faces, 112x112)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (0)")
    parser.add_argument("--labels-from", default=None,
                        help="folder of real label lists (bp4d/, disfa/, disfa_intensity/) to drive the faces")
    parser.add_argument("--no-images", action="store_true",
                        help="write uniform grey placeholder frames (labels, landmarks and truth only)")
    parser.add_argument("--extracted", action="store_true",
                        help="BP4D+/MME: write the extracted 2D+3D/<subject>/<task>/ tree instead of zips")
    parser.add_argument("--no-intensity", action="store_true", help="skip the AU intensity files")
    parser.add_argument("--landmark-files", choices=LANDMARK_FILES, default="dataset",
                        help="dataset: the landmark files each dataset ships (default); csv: the old layout "
                             "Landmarks/<sequence>.csv with all 68 points")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes")
    add_quiet(parser)


def run(args: argparse.Namespace) -> SynthTruth:
    truth = generate(args.layout, args.out, subjects=args.subjects,
                     tasks=args.tasks.split(",") if args.tasks else None, frames=args.frames,
                     frame_size=args.frame_size, seed=args.seed, labels_from=args.labels_from,
                     images=not args.no_images, workers=args.workers, zip_images=not args.extracted,
                     intensity_files=not args.no_intensity, progress=not args.quiet,
                     landmark_files=args.landmark_files)
    n = sum(len(s.frame_no) for s in truth.sequences)
    print(f"wrote {truth.dataset} layout: {len({s.subject for s in truth.sequences})} subjects, "
          f"{len(truth.sequences)} sequences, {n} coded frames -> {args.out}")
    return truth


def main(argv=None) -> int:
    parser = OneLineParser(prog="datasets_tools.synth", description=__doc__.split("\n")[0])
    add_arguments(parser)
    try:
        run(parser.parse_args(argv))
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"error: {e}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
