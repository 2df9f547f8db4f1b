"""F1 against label ratio: Knowledge-Spreader and the ResNet baseline under the sparse-label protocol.

    python benchmarks/label_ratio_sweep.py --out runs/label_ratio_sweep

Synthesises a BP4D-layout dataset whose sequences are longer than the demo's (so that clips hold
real temporal context and low ratios leave most frames unlabeled), converts it, runs
`aubench evaluate` for every (method, ratio, fold) with the tiny presets (resuming when rerun),
and writes the leaderboard with its F1-versus-label-ratio plot into OUT. The AU movements are
drawn three times as large as the renderer's default, as in `aubench demo`.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def make_dataset(out: Path, subjects: int, tasks: list[str], frames: int, seed: int) -> Path:
    from datasets_tools.convert import FrameOptions, convert
    from datasets_tools.synth import generate

    h5 = out / "sweep_bp4d.h5"
    if h5.is_file():
        return h5
    raw = out / "raw_bp4d"
    generate("bp4d", raw, subjects=subjects, tasks=tasks, frames=frames, frame_size=(160, 200), seed=seed,
             progress=False, expressiveness=3.0, workers=2,
             landmark_files="csv")  # the 68-point CSV layout, as the demo: the data of the recorded sweep
    # convert writes h5.partial and renames it when complete; a killed run resumes it
    convert("bp4d", raw, h5, FrameOptions(image_size=64, crop="landmarks"),
            landmarks_dir=raw / "Landmarks", progress=False)
    return h5


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/label_ratio_sweep")
    parser.add_argument("--methods", default="ks,resnet")
    parser.add_argument("--ratios", default="0.02,0.05,0.2,1.0")
    parser.add_argument("--folds", default="1,2,3")
    parser.add_argument("--subjects", type=int, default=41)
    parser.add_argument("--tasks", default="T1,T2,T3,T4")
    parser.add_argument("--frames", type=int, default=20, help="frames per sequence")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = make_dataset(out, args.subjects, args.tasks.split(","), args.frames, args.seed)
    print(f"[sweep] dataset {data} ready after {time.perf_counter() - started:.0f} s", flush=True)
    aubench = [sys.executable, "-m", "aubench"]
    subprocess.run(aubench + ["evaluate", "--methods", args.methods, "--data", str(data), "--folds", args.folds,
                              "--label-ratios", args.ratios, "--out", str(out / "run"), "--resume",
                              "--quiet", "--seed", str(args.seed)], check=True)
    subprocess.run(aubench + ["leaderboard", str(out / "run"), "--format", "md", "--no-reported",
                              "--plot", str(out / "f1.png"), "--out", str(out / "leaderboard.md")], check=True)
    print((out / "leaderboard.md").read_text())
    print(f"[sweep] finished in {time.perf_counter() - started:.0f} s; plots: {out}/f1*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
