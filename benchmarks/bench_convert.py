"""Conversion speed: ``datasets_tools convert`` against plain decode + crop + resize + encode of
the same frames (the work any converter must do), so the ratio is the converter's overhead:
label parsing, planning, fingerprinting, HDF5 writing, folds and statistics.

The raw tree is a synthetic BP4D tree (rendered faces, JPEG) written once per session. One
round = one full conversion (one process, centre crop to 256 x 256 JPEG) or one pass of the
baseline over every labelled frame.

    python -m pytest benchmarks/bench_convert.py --benchmark-enable
    AUBENCH_BENCH_CONVERT_FRAMES=40 AUBENCH_BENCH_CONVERT_SIZE=1040x1392 ... for other sizes
"""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from datasets_tools import synth
from datasets_tools.bp4d import plan as plan_bp4d
from datasets_tools.convert import FrameOptions, convert, encode
from datasets_tools.errors import Report
from datasets_tools.faces import crop_face

FRAMES = int(os.environ.get("AUBENCH_BENCH_CONVERT_FRAMES", "60"))        # per sequence
FRAME_SIZE = os.environ.get("AUBENCH_BENCH_CONVERT_SIZE", "520x696")      # half BP4D's 1040x1392
SUBJECTS = ["F001", "F004", "F003"]
ROUNDS = 3


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_convert") / "raw"
    synth.generate("bp4d", root, subjects=SUBJECTS, tasks=["T1"], frames=FRAMES, frame_size=FRAME_SIZE, seed=0,
                   progress=False)
    return root


def _group() -> str:
    return f"convert {len(SUBJECTS) * FRAMES} frames {FRAME_SIZE} -> 256"


def test_convert_aubench(benchmark, raw_tree, tmp_path):
    out = tmp_path / "bench.h5"

    def setup():
        if out.exists():
            out.unlink()

    def run():
        return convert("bp4d", raw_tree, out, FrameOptions(image_size=256, crop="center"), workers=1,
                       progress=False)

    benchmark.group = _group()
    benchmark.extra_info["impl"] = "aubench"
    result = benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
    assert result.frames == len(SUBJECTS) * FRAMES


def test_convert_decode_resize_baseline(benchmark, raw_tree):
    paths = [m for seq in plan_bp4d(raw_tree, None, Report()).sequences for m in seq.members]

    def run():
        total = 0
        for path in paths:
            image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
            face, _, _ = crop_face(image, "center", 256)
            total += len(encode(face, "jpeg"))
        return total

    benchmark.group = _group()
    benchmark.extra_info["impl"] = "decode+resize"
    assert benchmark.pedantic(run, rounds=ROUNDS, iterations=1) > 0
