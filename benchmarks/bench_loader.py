"""Data loading speed: aubench's HDF5 FrameDataset against a folder of JPEG files.

The same 2000 frames (256 x 256, smooth face-like colour fields with fine texture, JPEG quality
95) are stored three ways: an aubench HDF5 file in raw mode, one in JPEG mode (the very bytes of
the .jpg files), and a folder of .jpg files read by the usual `cv2.imread` Dataset. Every
loader decodes to RGB with the same OpenCV build, resizes with the same function (to the stored
size here, so a no-op), converts with the same function and returns the same item dict, so the
groups compare storage only. Two output modes, both loaders alike:
- "uint8": uint8 (3, H, W) items (normalize=False; the GPU would normalise the batch with
  `normalize_images`), the fast path;
- "float": ImageNet-normalised float32 items (the default).
One round = one full epoch through a DataLoader (batch 64, shuffled, fixed order), with 0 and 2
worker processes. The "frame read" groups time the storage alone (uint8 RGB frames in
channels-last layout, no conversion, no DataLoader).

    python -m pytest benchmarks/bench_loader.py --benchmark-enable
    AUBENCH_BENCH_FRAMES=500 ... for a quicker run
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from aubench.data import FrameDataset, to_normalized_tensor, to_uint8_tensor
from aubench.data.h5file import _IMREAD_RGB
from aubench.data.transforms import resize_images

# The schema-exact test writer builds the HDF5 files (benchmarks need no converted dataset).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures_h5 import encode_jpeg, write_au_h5  # noqa: E402

NUM_FRAMES = int(os.environ.get("AUBENCH_BENCH_FRAMES", "2000"))
SIZE = 256
BATCH = 64
ROUNDS = 3


def face_like_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8: smooth skin-toned colour fields plus fine noise, so JPEG
    files have realistic sizes (not flat, not white noise)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    skin = np.array([200.0, 150.0, 120.0], dtype=np.float32)
    for i in range(n):
        coarse = rng.normal(0, 35, (6, 6, 3)).astype(np.float32) + skin
        field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
        field += rng.normal(0, 4, (size, size, 3)).astype(np.float32)
        out[i] = np.clip(field, 0, 255).astype(np.uint8)
    return out


class JpegFolderDataset(Dataset):
    """The baseline: one .jpg file per frame, decoded with cv2.imread, then resized and
    converted exactly like aubench's FrameDataset (uint8 or normalised float32 output)."""

    def __init__(self, paths: list[str], labels: np.ndarray, image_size: tuple[int, int],
                 normalize: bool = True):
        self.paths = paths
        self.labels = labels
        self.image_size = image_size
        self.normalize = normalize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        if _IMREAD_RGB is not None:
            image = cv2.imread(self.paths[index], _IMREAD_RGB)
        else:
            image = cv2.cvtColor(cv2.imread(self.paths[index]), cv2.COLOR_BGR2RGB)
        image = resize_images(image, self.image_size)
        return {
            "image": to_normalized_tensor(image) if self.normalize else to_uint8_tensor(image),
            "label": torch.from_numpy(self.labels[index].astype(np.float32)),
            "index": torch.tensor(index, dtype=torch.int64),
        }


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """{"raw": h5 path, "jpeg": h5 path, "paths": .jpg paths, "labels"} of the same frames."""
    root = tmp_path_factory.mktemp("loader")
    images = face_like_images(NUM_FRAMES, SIZE)
    common = dict(num_subjects=4, sequence_lengths=(NUM_FRAMES // 8,) * 2, num_folds=2,
                  image_size=(SIZE, SIZE), images=images)
    assert 4 * 2 * (NUM_FRAMES // 8) == NUM_FRAMES, "AUBENCH_BENCH_FRAMES must be a multiple of 8"
    raw = write_au_h5(root / "raw.h5", image_format="raw", **common)
    jpeg = write_au_h5(root / "jpeg.h5", image_format="jpeg", **common)
    folder = root / "frames"
    folder.mkdir()
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i:06d}.jpg"
        path.write_bytes(encode_jpeg(image).tobytes())
        paths.append(str(path))
    labels = FrameDataset(raw, fold=None, split="all").file.labels
    return {"raw": raw, "jpeg": jpeg, "paths": paths, "labels": labels}


def run_epoch(dataset: Dataset, workers: int, normalize: bool) -> int:
    order = torch.Generator().manual_seed(0)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, generator=order,
                        num_workers=workers)
    frames = 0
    for batch in loader:
        assert batch["image"].dtype == (torch.float32 if normalize else torch.uint8)
        frames += batch["image"].shape[0]
    return frames


@pytest.fixture
def one_torch_thread():
    """Load in the main process with one torch thread, as DataLoader workers do: on a machine
    whose cores are busy, a multi-threaded collate (same for both loaders) swamps the timings."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("output", ["uint8", "float"])
@pytest.mark.parametrize("mode", ["raw", "jpeg"])
@pytest.mark.parametrize("impl", ["aubench", "jpeg-folder"])
def test_loader_throughput(benchmark, stores, one_torch_thread, mode, output, workers, impl):
    normalize = output == "float"
    if impl == "aubench":
        dataset = FrameDataset(stores[mode], fold=None, split="all", image_size=SIZE,
                               normalize=normalize)
    else:
        dataset = JpegFolderDataset(stores["paths"], stores["labels"], (SIZE, SIZE), normalize)
    benchmark.group = (f"loader {mode} {output} {NUM_FRAMES}x{SIZE}px batch{BATCH} "
                       f"workers{workers}")
    benchmark.extra_info["impl"] = impl
    frames = benchmark.pedantic(run_epoch, args=(dataset, workers, normalize), rounds=ROUNDS,
                                iterations=1)
    assert frames == NUM_FRAMES
    benchmark.extra_info["frames_per_s"] = NUM_FRAMES / benchmark.stats.stats.median


def read_folder_frames(paths: list[str], order: np.ndarray) -> int:
    for i in order:
        image = cv2.imread(paths[i], _IMREAD_RGB) if _IMREAD_RGB is not None else \
            cv2.cvtColor(cv2.imread(paths[i]), cv2.COLOR_BGR2RGB)
        assert image is not None
    return len(order)


def read_h5_frames(dataset: FrameDataset, order: np.ndarray) -> int:
    for start in range(0, len(order), BATCH):
        dataset.file.read_image_list(dataset.rows[order[start:start + BATCH]])
    return len(order)


@pytest.mark.parametrize("mode", ["raw", "jpeg"])
@pytest.mark.parametrize("impl", ["aubench", "jpeg-folder"])
def test_frame_read_uint8(benchmark, stores, mode, impl):
    """Storage alone: RGB uint8 frames in shuffled batches, no normalisation, no DataLoader."""
    order = np.random.default_rng(0).permutation(NUM_FRAMES)
    benchmark.group = f"frame read uint8 {mode} {NUM_FRAMES}x{SIZE}px"
    benchmark.extra_info["impl"] = impl
    if impl == "aubench":
        dataset = FrameDataset(stores[mode], fold=None, split="all")
        frames = benchmark.pedantic(read_h5_frames, args=(dataset, order), rounds=ROUNDS)
    else:
        frames = benchmark.pedantic(read_folder_frames, args=(stores["paths"], order),
                                    rounds=ROUNDS)
    assert frames == NUM_FRAMES
    benchmark.extra_info["frames_per_s"] = NUM_FRAMES / benchmark.stats.stats.median
