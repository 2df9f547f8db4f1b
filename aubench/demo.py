"""`aubench demo` (behind `make demo`): the whole pipeline on a small synthetic dataset.

1. datasets_tools.synth writes a BP4D-layout raw tree: all 41 subjects, 8 tasks each, 10 coded
   frames per sequence (rendered faces whose AUs move them), with the AU movements drawn at three
   times the renderer's natural amplitude (``expressiveness=3``) so that tiny models on 64-px crops
   see them; labels are unchanged,
2. datasets_tools.convert turns it into one HDF5 file (landmark crop, 64 px),
3. every registered method is trained with its `tiny` preset on folds 1 and 2 of the three
   standard folds (`DEMO_FOLDS`: the third would take the demo past its budget),
   under the sparse-label protocol at ratio 0.2 (one labeled frame in five, the setting
   Knowledge-Spreader is built for; frame methods train on the labeled frames only; ME-GraphAU
   trains both of its stages, 15 epochs each; MAE-FAU its four: MAE, teacher stages 1 and 2,
   student; RRL pre-trains on every training frame with its labels unused, then fits its linear
   probe on the labeled ones), and tested on clean faces and under 50% random patches
   (`DEMO_TEST_OCCLUSIONS`),
4. post-processing without retraining, from the per-frame predictions kept beside every result:
   the RegNetY + ViViT paper's rows: `vivit`'s results smoothed along each sequence with its
   Gaussian filter (`DEMO_SMOOTHING`; a section of its own beside the raw results), and the
   ensemble of `vivit` and `regnet-tf` (`DEMO_ENSEMBLE`, the average of their probabilities) in
   OUT/ensemble,
5. the leaderboard is printed and written (Markdown, CSV, JSON, PNG).
Meant to finish within fifteen minutes on a 2-core CPU (ks, maefau, megraphau, regnet-tf,
resnet, rrl and vivit on two folds, smoothing and ensemble: 10 min 27 s from a fresh clone,
install excluded).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from aubench.errors import UserError

# Identities matter most: with 12 subjects (8 training identities per fold) the tiny models did
# not beat the all-positive baseline on unseen faces; with all 41 (27 per fold) and 8 tasks they
# do. Sequences are short because consecutive frames are alike; the tasks give the variety.
DEMO_SUBJECTS = 41
DEMO_TASKS = ("T1", "T2", "T3", "T4", "T5", "T6", "T7", "T8")
DEMO_FRAMES = 10
DEMO_FRAME_SIZE = (160, 200)   # (W, H) of the synthetic camera frames
DEMO_IMAGE_SIZE = 64           # stored face crops
DEMO_EXPRESSIVENESS = 3.0      # AU movements drawn at three times the renderer's natural amplitude
DEMO_LABEL_RATIO = 0.2         # sparse-label protocol: 2 labeled frames per 10-frame sequence
# Every method is tested on clean faces and on faces with half their cells occluded (the
# occlusion-robust method's setting; it trains under that occlusion, the others train clean).
DEMO_TEST_OCCLUSIONS = ("none", "patches:0.5")
# Two of the three standard folds: with vivit and regnet-tf, a third fold would take the demo past
# fifteen minutes on a 2-core CPU (about 16, from the per-fold times of the three-fold runs).
DEMO_FOLDS = (1, 2)
# Post-processing, as the RegNetY + ViViT paper does it: vivit smoothed, and its ensemble with
# regnet-tf (both evaluated under the same protocol).
DEMO_SMOOTHING = ("vivit", "gaussian:51:3.0")
DEMO_ENSEMBLE = ("vivit+regnet-tf", ("vivit", "regnet-tf"))


def demo_config(seed: int) -> dict:
    return {"subjects": DEMO_SUBJECTS, "tasks": list(DEMO_TASKS), "frames": DEMO_FRAMES,
            "frame_size": list(DEMO_FRAME_SIZE), "image_size": DEMO_IMAGE_SIZE,
            "expressiveness": DEMO_EXPRESSIVENESS, "label_ratio": DEMO_LABEL_RATIO,
            "test_occlusions": list(DEMO_TEST_OCCLUSIONS), "folds": list(DEMO_FOLDS), "seed": seed}


def check_demo_dir(out: Path, seed: int) -> None:
    """A rerun resumes in `out`; refuse to mix in data or results of another demo configuration."""
    stamp = out / "demo_config.json"
    wanted = demo_config(seed)
    if stamp.is_file():
        found = json.loads(stamp.read_text())
        if found != wanted:
            raise UserError(f"{out} holds a demo made with another configuration ({stamp}); "
                            f"remove {out} or pass --out DIR")
    elif (out / "demo_bp4d.h5").exists() or (out / "run").exists():
        raise UserError(f"{out} holds an earlier demo without {stamp.name}; remove {out} or pass --out DIR")
    else:
        stamp.write_text(json.dumps(wanted, indent=2))


def make_demo_dataset(out: Path, seed: int = 0) -> Path:
    """Synthesise and convert the demo dataset (reused when it already exists)."""
    from datasets_tools.convert import FrameOptions, convert
    from datasets_tools.synth import generate

    h5 = out / "demo_bp4d.h5"
    if h5.is_file():
        return h5
    raw = out / "raw_bp4d"
    generate("bp4d", raw, subjects=DEMO_SUBJECTS, tasks=list(DEMO_TASKS), frames=DEMO_FRAMES,
             frame_size=DEMO_FRAME_SIZE, seed=seed, progress=False, expressiveness=DEMO_EXPRESSIVENESS,
             workers=2)
    # convert writes h5.partial and renames it when complete; a killed run resumes it
    convert("bp4d", raw, h5, FrameOptions(image_size=DEMO_IMAGE_SIZE, crop="landmarks"),
            landmarks_dir=raw / "Landmarks", progress=False)
    return h5


def demo_evaluate_request(out: Path, data: Path, methods, device: str | None, seed: int):
    """The evaluation of the demo. resume: a rerun keeps the results already made
    (check_demo_dir has made sure they come from this demo's configuration) and continues a
    killed run; never overwrite."""
    from aubench.engine.evaluate import EvaluateRequest
    from aubench.engine.trainer import RunConfig

    run = RunConfig(method="", data=str(data), preset="tiny", resume=True, device=device, seed=seed,
                    progress=False)
    return EvaluateRequest(methods=list(methods), run=run, out=str(out / "run"), folds=list(DEMO_FOLDS),
                           label_ratios=[DEMO_LABEL_RATIO], test_occlusions=list(DEMO_TEST_OCCLUSIONS),
                           bench_batch_size=4)


def demo_postprocess(out: Path, methods: list[str]) -> list[Path]:
    """Smooth one method's results and fuse two methods' results (those of them evaluated); the
    run directories this adds (the ensemble's)."""
    from aubench.engine.postprocess import make_ensemble, parse_smoothing, raw_results, smooth_results

    smoothed, spec = DEMO_SMOOTHING
    if smoothed in methods:
        print(f"[demo] smoothing {smoothed}'s per-frame predictions along each sequence ({spec}) ...", flush=True)
        smooth_results(raw_results([out / "run"], [smoothed]), parse_smoothing(spec))
    name, members = DEMO_ENSEMBLE
    if not all(m in methods for m in members):
        return []
    print(f"[demo] ensemble {name}: the mean of {' and '.join(members)}'s per-frame probabilities ...", flush=True)
    # overwrite: a rerun of the demo may have retested a member; its ensemble follows
    make_ensemble([str(out / "run")], name, out / "ensemble", methods=list(members), overwrite=True)
    return [out / "ensemble"]


def run_demo(out: str | Path = "demo_run", methods=("all",), device: str | None = None, seed: int = 0) -> int:
    from aubench import leaderboard
    from aubench.engine.evaluate import evaluate_runs, resolve_methods

    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_demo_dir(out, seed)
    print(f"[demo] synthesising and converting a BP4D-layout dataset into {out} "
          f"(AU movements exaggerated x{DEMO_EXPRESSIVENESS:g} for the tiny models) ...", flush=True)
    try:
        data = make_demo_dataset(out, seed)
    except (ValueError, OSError) as err:
        raise UserError(f"demo dataset could not be made in {out}: {err}") from None
    print(f"[demo] dataset {data} ready after {time.perf_counter() - started:.0f} s", flush=True)
    print(f"[demo] training and testing {', '.join(methods)} (tiny presets) on folds "
          f"{', '.join(map(str, DEMO_FOLDS))} at label ratio "
          f"{DEMO_LABEL_RATIO:g}, tested under {' and '.join(DEMO_TEST_OCCLUSIONS)} ...", flush=True)
    evaluate_runs(demo_evaluate_request(out, data, methods, device, seed))
    runs = [out / "run"] + demo_postprocess(out, resolve_methods(list(methods)))
    rows = leaderboard.build_rows(leaderboard.find_results(runs), include_reported=False)
    table = leaderboard.to_markdown(rows)
    (out / "leaderboard.md").write_text(table)
    (out / "leaderboard.csv").write_text(leaderboard.to_csv(rows))
    (out / "leaderboard.json").write_text(leaderboard.to_json(rows))
    plots = leaderboard.plot(rows, out / "leaderboard.png")
    print()
    print(table)
    print(f"[demo] finished in {time.perf_counter() - started:.0f} s")
    print(f"[demo] dataset:     {data}")
    print(f"[demo] results:     {out / 'run' / 'results'} (one JSON per method, fold and test condition, "
          f"each with its per-frame predictions)")
    print(f"[demo] leaderboard: {out / 'leaderboard.md'} .csv .json, plots: {', '.join(map(str, plots))}")
    if len(runs) > 1:
        print(f"[demo] ensemble:    {out / 'ensemble' / 'results'} (aubench ensemble)")
    print(f"[demo] again, with more runs: aubench leaderboard {' '.join(map(str, runs))} --format md --plot out.png")
    return 0
