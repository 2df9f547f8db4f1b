"""`aubench demo` (behind `make demo`): the whole pipeline on a small synthetic dataset.

1. datasets_tools.synth writes a BP4D-layout raw tree (rendered faces whose AUs move them), with
   the AU movements drawn at twice their natural amplitude (``expressiveness=2``) so that tiny
   models on 64-px crops can see them; labels are unchanged,
2. datasets_tools.convert turns it into one HDF5 file (landmark crop, 64 px),
3. every registered method is trained and tested with its `tiny` preset on the three folds,
4. the leaderboard is printed and written (Markdown, CSV, JSON, PNG).
Sized to finish in a few minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from aubench.errors import UserError

# Twelve subjects, two tasks each, 16 coded frames per sequence: 384 frames in all. Each fold
# trains on eight identities (with six, the four training faces were too few to generalise from).
DEMO_SUBJECTS = 12
DEMO_TASKS = ("T1", "T2")
DEMO_FRAMES = 16
DEMO_FRAME_SIZE = (160, 200)   # (W, H) of the synthetic camera frames
DEMO_IMAGE_SIZE = 64           # stored face crops
DEMO_EXPRESSIVENESS = 2.0      # AU movements drawn at twice the renderer's natural amplitude


def make_demo_dataset(out: Path, seed: int = 0) -> Path:
    """Synthesise and convert the demo dataset (reused when it already exists)."""
    from datasets_tools.convert import FrameOptions, convert
    from datasets_tools.synth import generate

    h5 = out / "demo_bp4d.h5"
    if h5.is_file():
        return h5
    raw = out / "raw_bp4d"
    generate("bp4d", raw, subjects=DEMO_SUBJECTS, tasks=list(DEMO_TASKS), frames=DEMO_FRAMES,
             frame_size=DEMO_FRAME_SIZE, seed=seed, progress=False, expressiveness=DEMO_EXPRESSIVENESS)
    tmp = out / "demo_bp4d.h5.partial"
    convert("bp4d", raw, tmp, FrameOptions(image_size=DEMO_IMAGE_SIZE, crop="landmarks"),
            landmarks_dir=raw / "Landmarks", progress=False)
    tmp.replace(h5)
    return h5


def run_demo(out: str | Path = "demo_run", methods=("all",), device: str | None = None, seed: int = 0) -> int:
    from aubench import leaderboard
    from aubench.cli import run_evaluate

    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"[demo] synthesising and converting a BP4D-layout dataset into {out} "
          f"(AU movements exaggerated x{DEMO_EXPRESSIVENESS:g} for the tiny models) ...", flush=True)
    try:
        data = make_demo_dataset(out, seed)
    except (ValueError, OSError) as err:
        raise UserError(f"demo dataset could not be made in {out}: {err}") from None
    print(f"[demo] dataset {data} ready after {time.perf_counter() - started:.0f} s", flush=True)
    args = argparse.Namespace(
        methods=list(methods), folds=[1, 2, 3], label_ratios=[1.0], out=str(out / "run"), bench_batch_size=4,
        data=str(data), preset="tiny", epochs=None, batch_size=None, image_size=None, resume=True,
        pretrained=None, device=device, seed=seed, precision="auto", workers=None, checkpoint_every=0,
        no_augment=False, no_progress=True)
    run_evaluate(args)
    rows = leaderboard.build_rows(leaderboard.find_results([out / "run"]), include_reported=False)
    table = leaderboard.to_markdown(rows)
    (out / "leaderboard.md").write_text(table)
    (out / "leaderboard.csv").write_text(leaderboard.to_csv(rows))
    (out / "leaderboard.json").write_text(leaderboard.to_json(rows))
    plots = leaderboard.plot(rows, out / "leaderboard.png")
    print()
    print(table)
    print(f"[demo] finished in {time.perf_counter() - started:.0f} s")
    print(f"[demo] dataset:     {data}")
    print(f"[demo] results:     {out / 'run' / 'results'} (one JSON per method and fold)")
    print(f"[demo] leaderboard: {out / 'leaderboard.md'} .csv .json, plots: {', '.join(map(str, plots))}")
    print(f"[demo] again, with more runs: aubench leaderboard {out / 'run'} --format md --plot out.png")
    return 0
