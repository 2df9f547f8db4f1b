"""Data loading speed: aubench's HDF5 FrameDataset against a folder of JPEG files; and, run as a
script, whether a GPU would be fed (docs/loader.md).

The same 2000 frames (256 x 256, smooth face-like colour fields with fine texture, JPEG quality
95) are stored three ways: an aubench HDF5 file in raw mode, one in JPEG mode (the very bytes of
the .jpg files), and a folder of .jpg files read by the usual `cv2.imread` Dataset. Both
loaders decode with libjpeg-turbo (aubench through simplejpeg, the folder through OpenCV's
build of it), resize with the same function (to the stored size here, so a no-op), convert
with the same function and return the same item dict, so the groups compare storage and
decoder call. Two output modes, both loaders alike:
- "uint8": uint8 (3, H, W) items (normalize=False; the GPU would normalise the batch with
  `normalize_images`), the fast path;
- "float": ImageNet-normalised float32 items (the default).
One round = one full epoch through a DataLoader (batch 64, shuffled, fixed order), with 0 and 2
worker processes. The "frame read" groups time the storage alone (uint8 RGB frames in
channels-last layout, no conversion, no DataLoader).

    python -m pytest benchmarks/bench_loader.py --benchmark-enable
    AUBENCH_BENCH_FRAMES=500 ... for a quicker run

The script (`python benchmarks/bench_loader.py --json benchmarks/results/cpu-loader.json`, about
5 minutes on 2 busy cores) measures, with one thread per process:
- the JPEG decoders the dependencies give (OpenCV, Pillow, torchvision.io.decode_jpeg on the CPU,
  simplejpeg; nvjpeg through torchvision.io.decode_jpeg(device="cuda") when a CUDA device is
  there), on the converter's 256-px frames at quality 95: frames per CPU second and the largest
  pixel difference to OpenCV;
- the engine's training pipelines of the paper presets at 224 px from frames stored at 256 px
  (uint8 items, the preset's augmentation; `pipelines`), for JPEG and raw storage: frames/s
  through a DataLoader of 0, 1 and 2 workers (the first pipeline; the others without workers)
  and frames per CPU second of the process and its workers, the per-core figure;
- beside them, each paper preset's training frames/s on this CPU: the `aubench bench` records
  of benchmarks/results, a method without one measured here (batch 2, its last stage).
Each figure is the median of --rounds epochs. docs/loader_table.py turns the JSON into the
tables of docs/loader.md, CPU cores per GPU included when a gpu-*.json has GPU figures.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from aubench.data import FrameDataset, to_normalized_tensor, to_uint8_tensor
from aubench.data.transforms import resize_images

# The schema-exact test writer builds the HDF5 files (benchmarks need no converted dataset).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures_h5 import encode_jpeg, write_au_h5  # noqa: E402

# OpenCV >= 4.10 decodes straight to RGB; older builds decode BGR and we swap channels.
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)
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


# ------------------------------------------------------------------ the script: decoders, workers, cores
# python benchmarks/bench_loader.py --json benchmarks/results/cpu-loader.json (see main's help)

STORED_SIZE = 256  # datasets_tools convert's default --image-size: paper presets crop or resize from it
RESULTS = Path(__file__).resolve().parent / "results"


def jpeg_decoders() -> dict:
    """{name: decode(bytes, uint8 tensor of the same bytes) -> RGB uint8 image} of the JPEG
    decoders the dependencies give, on the CPU (OpenCV's layout (H, W, 3); torchvision's
    (3, H, W), the layout a batch needs)."""
    import io

    import simplejpeg
    import torchvision.io
    from PIL import Image

    def opencv(data, _):
        return cv2.imdecode(np.frombuffer(data, np.uint8), _IMREAD_RGB) if _IMREAD_RGB is not None else \
            cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    return {"opencv": opencv,
            "pil": lambda data, _: np.asarray(Image.open(io.BytesIO(data)).convert("RGB")),
            "torchvision": lambda _, tensor: torchvision.io.decode_jpeg(tensor, mode=torchvision.io.ImageReadMode.RGB),
            "simplejpeg": lambda data, _: simplejpeg.decode_jpeg(data, colorspace="RGB")}


def timed(fn, rounds: int) -> dict:
    """The median over `rounds` of fn()'s wall seconds and CPU seconds (this process's, plus
    those of the child processes that ended meanwhile: DataLoader workers), and fn()'s value."""
    import resource

    runs = []
    for _ in range(rounds):
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        started, cpu_started = time.perf_counter(), time.process_time()
        value = fn()
        seconds = time.perf_counter() - started
        ended = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (time.process_time() - cpu_started + ended.ru_utime - children.ru_utime
               + ended.ru_stime - children.ru_stime)
        runs.append((seconds, cpu))
    return {"seconds": statistics.median(r[0] for r in runs), "cpu_seconds": statistics.median(r[1] for r in runs),
            "round_seconds": [round(r[0], 3) for r in runs], "value": value}


def compare_decoders(images: np.ndarray, rounds: int) -> dict:
    """Frames per CPU second and per second of each decoder on the JPEG bytes of `images` (the
    converter's quality), one thread; the largest pixel difference to OpenCV's decoding; on a
    CUDA device also nvjpeg (torchvision.io.decode_jpeg(device="cuda"), the whole list at once)."""
    import torchvision.io

    data = [encode_jpeg(image).tobytes() for image in images]
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]
    decoders = jpeg_decoders()
    reference = [decoders["opencv"](d, t) for d, t in zip(data, tensors)]
    out = {"frames": len(data), "size": images.shape[1], "mean_bytes": float(np.mean([len(d) for d in data]))}
    for name, decode in decoders.items():
        run = timed(lambda: [decode(d, t) for d, t in zip(data, tensors)], rounds)
        decoded = [np.asarray(x.permute(1, 2, 0)) if isinstance(x, torch.Tensor) else x for x in run["value"]]
        difference = max(int(np.abs(a.astype(int) - b).max()) for a, b in zip(decoded, reference))
        out[name] = {"frames_per_cpu_s": len(data) / run["cpu_seconds"], "frames_per_s": len(data) / run["seconds"],
                     "max_abs_diff_vs_opencv": difference}
    if torch.cuda.is_available():
        def nvjpeg():
            decoded = torchvision.io.decode_jpeg(tensors, mode=torchvision.io.ImageReadMode.RGB, device="cuda")
            torch.cuda.synchronize()
            return decoded
        nvjpeg()  # warm-up: the first call loads the library
        run = timed(nvjpeg, rounds)
        out["nvjpeg"] = {"frames_per_s": len(data) / run["seconds"], "device": torch.cuda.get_device_name(0)}
    else:
        out["nvjpeg"] = {"skipped": "no CUDA device"}
    return out


def pipelines() -> dict:
    """{name: (what, FrameDataset keyword arguments)}: the engine's training pipelines of the
    paper presets at 224 px, from frames stored at STORED_SIZE (uint8 items, as the engine
    loads them; the default augmentation at the preset's rotation; RRL's two pre-training views)."""
    from aubench.data import ClipAugment, ViewAugment
    from aubench.models import rrl

    views = {**rrl._DEFAULTS, **rrl.RRL.presets["paper"].model}["views"]
    return {
        "resize+rotate": ("resize to 224, flip, rotation, colour jitter (resnet, ks)",
                          dict(augment=ClipAugment(degrees=10.0))),
        "crop": ("random 224 crop of 256, flip, colour jitter (megraphau, maefau)",
                 dict(augment=ClipAugment(degrees=0.0), crop_fraction=224 / 256)),
        "resize": ("resize to 224, flip, colour jitter (rrl probe)", dict(augment=ClipAugment(degrees=0.0))),
        "two-views": ("resize to 224, two BYOL views (rrl pretrain; 2 images per frame)",
                      dict(augment=tuple(ViewAugment(**v) for v in views), views=2)),
    }


# Frames per epoch of a pipeline slower than the others (its Gaussian blur), so that it takes seconds too.
PIPELINE_FRAMES = {"two-views": 2 * BATCH}


PIPELINE_OF = {"resnet": "resize+rotate", "ks": "resize+rotate", "vivit": "resize+rotate",
               "regnet-tf": "resize+rotate", "megraphau": "crop", "maefau": "crop", "rrl": "resize"}


def loader_rates(store: Path, kwargs: dict, workers: int, rounds: int, frames: int | None = None) -> dict:
    """Frames per second and per CPU second (main process and workers) of one epoch of the
    pipeline (over its first `frames` frames, or all) through a DataLoader of `workers` workers
    (batch BATCH, shuffled)."""
    dataset = FrameDataset(store, fold=None, split="all", image_size=224, normalize=False, seed=0, **kwargs)
    if frames is not None:
        dataset = Subset(dataset, range(frames))
    run = timed(lambda: run_epoch(dataset, workers, normalize=False), rounds)
    frames = run["value"]
    return {"frames": frames, "frames_per_s": frames / run["seconds"], "frames_per_cpu_s": frames / run["cpu_seconds"],
            "round_seconds": run["round_seconds"]}


def persistent_epochs(store: Path, kwargs: dict, workers: int, rounds: int, frames: int) -> dict:
    """What persistent workers save (the engine's loader keeps its workers across a stage's
    epochs): through one DataLoader of `workers` persistent workers, the seconds to the first
    batch and of the whole epoch, for its first epoch (the workers start) and its second (they
    are already up); medians over `rounds` loaders, `frames` frames an epoch."""
    dataset = Subset(FrameDataset(store, fold=None, split="all", image_size=224, normalize=False, seed=0, **kwargs),
                     range(frames))
    epochs: list[list[tuple[float, float]]] = [[], []]
    for _ in range(rounds):
        loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0),
                            num_workers=workers, persistent_workers=True)
        for epoch in epochs:
            started = time.perf_counter()
            first = None
            for _batch in loader:
                first = first if first is not None else time.perf_counter() - started
            epoch.append((first, time.perf_counter() - started))
        del loader
    return {"workers": workers, "frames": frames,
            **{f"epoch{i + 1}_{what}": statistics.median(run[j] for run in epoch)
               for i, epoch in enumerate(epochs) for j, what in enumerate(("first_batch_s", "seconds"))}}


def training_rates(measure_missing: bool) -> list[dict]:
    """Paper-preset training frames/s on this CPU: the `aubench bench` records of
    benchmarks/results (a "method", "preset": "paper", "train_frames_per_s" anywhere in a
    file), one per method row and stage, the largest batch where several; a registered method
    without one is measured here with `measure_missing` (batch 2, its last stage)."""
    from aubench.bench import benchmark_method
    from aubench.models import available_methods

    methods = available_methods()

    def base(name: str) -> str | None:
        return name if name in methods else next((m for m in methods if name.startswith(m + "-")), None)

    found: dict[tuple, dict] = {}

    def walk(value, source: str) -> None:
        if isinstance(value, dict):
            if value.get("preset") == "paper" and "train_frames_per_s" in value and base(value.get("method", "")):
                key = (value["method"], value.get("stage"))
                if key not in found or value["batch_size"] > found[key]["batch_size"]:
                    found[key] = {**value, "source": source}
            for child in value.values():
                walk(child, source)
        elif isinstance(value, list):
            for child in value:
                walk(child, source)

    for path in sorted(RESULTS.glob("cpu-*.json")):
        if path.name != "cpu-loader.json":
            walk(json.loads(path.read_text(encoding="utf-8")), f"benchmarks/results/{path.name}")
    have = {base(method) for method, _ in found}
    for method in methods:
        if method not in have and measure_missing:
            record = benchmark_method(method, preset="paper", device="cpu", batch_size=2, warmup=1, iters=3)
            found[(record["method"], record.get("stage"))] = {**record, "source": "measured by this script"}
    keep = ("method", "stage", "batch_size", "frames_per_batch", "image_size", "precision", "device",
            "train_frames_per_s", "source")
    return [{k: found[key].get(k) for k in keep} | {"base_method": base(key[0])} for key in sorted(found)]


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description="Loader frames/s for 0, 1, 2 workers and per core, JPEG and raw storage, 224 px, beside each "
                    "paper preset's training frames/s on this CPU; the JPEG decoders compared.")
    parser.add_argument("--frames", type=int, default=384, help="frames per epoch (a multiple of 64; 384)")
    parser.add_argument("--rounds", type=int, default=3, help="epochs per figure, the median kept (3)")
    parser.add_argument("--json", type=Path, help="write the report here (benchmarks/results/cpu-loader.json)")
    parser.add_argument("--no-measure-missing", action="store_true",
                        help="leave out methods without a paper-preset training figure in benchmarks/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in DataLoader workers; the machine may be shared
    cv2.setNumThreads(1)
    from aubench.bench import cpu_info, cpu_text
    from aubench.engine.run import versions

    load_at_start = os.getloadavg()[0]
    print(f"loader benchmark on {cpu_text()}, load average {load_at_start:.1f}", flush=True)
    images = face_like_images(args.frames, STORED_SIZE)
    decoders = compare_decoders(images[:200], args.rounds)
    rates = ", ".join(f"{k} {v['frames_per_cpu_s']:.0f}" for k, v in decoders.items()
                      if isinstance(v, dict) and "frames_per_cpu_s" in v)
    print(f"decoders (frames per CPU second, 256 px JPEG q95): {rates}", flush=True)
    report = {"benchmark": "bench_loader", "what": main.__doc__ or parser.description, "cpu": cpu_info(),
              "versions": versions(), "cpu_count": os.cpu_count(),
              # the machine may be shared: how busy it was (load average over a minute, against its cores)
              "load_average_at_start": load_at_start,
              "note": (f"measured under load (load average {load_at_start:.1f} on {os.cpu_count()} cores at the start): "
                       if load_at_start > 0.5 * (os.cpu_count() or 1) else "")
              + "wall-clock frames/s depend on the load; frames per CPU second (this process and its DataLoader "
                "workers) are the per-core figures",
              "stored_size": STORED_SIZE, "image_size": 224, "batch": BATCH, "rounds": args.rounds,
              "decoders": decoders, "pipelines": {}, "loader": []}
    with tempfile.TemporaryDirectory() as folder:
        common = dict(num_subjects=4, sequence_lengths=(args.frames // 8,) * 2, num_folds=2,
                      image_size=(STORED_SIZE, STORED_SIZE), images=images)
        stores = {mode: write_au_h5(Path(folder) / f"{mode}.h5", image_format=mode, **common)
                  for mode in ("jpeg", "raw")}
        for name, (what, kwargs) in pipelines().items():
            report["pipelines"][name] = what
            for storage, store in stores.items():
                for workers in ((0, 1, 2) if name == "resize+rotate" else (0,)):
                    record = {"pipeline": name, "storage": storage, "workers": workers,
                              **loader_rates(store, kwargs, workers, args.rounds, PIPELINE_FRAMES.get(name))}
                    report["loader"].append(record)
                    print(f"{name:14s} {storage:4s} workers {workers}: {record['frames_per_s']:6.0f} frames/s, "
                          f"{record['frames_per_cpu_s']:6.0f} per CPU second", flush=True)
        # resize+rotate on JPEG, two batches an epoch: the workers' start-up against an epoch's work
        report["persistent_workers"] = [persistent_epochs(stores["jpeg"], pipelines()["resize+rotate"][1], workers,
                                                          args.rounds, 2 * BATCH) for workers in (1, 2)]
        for r in report["persistent_workers"]:
            print(f"persistent workers {r['workers']}: first batch {r['epoch1_first_batch_s']:.2f} s in epoch 1 "
                  f"(workers start), {r['epoch2_first_batch_s']:.2f} s in epoch 2", flush=True)
    report["training"] = training_rates(not args.no_measure_missing)
    report["pipeline_of_method"] = PIPELINE_OF
    report["load_average"] = os.getloadavg()[0]
    if args.json:
        from aubench.files import write_json_atomic

        write_json_atomic(args.json, report)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
