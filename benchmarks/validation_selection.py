"""How optimistic is choosing the checkpoint on the test set? Last epoch against the epoch of the
best validation mean F1 (--select best-val) and the epoch of the best test mean F1
(--select best-test), on the demo's data.

    OMP_NUM_THREADS=1 python benchmarks/validation_selection.py --out runs/validation_selection

The demo's dataset (aubench.demo.make_demo_dataset: synthetic BP4D, 41 subjects, 8 tasks of 10
frames, AU movements x3; reused when OUT holds it, or --data names it) and its protocol (tiny
presets with their own epochs, sparse labels at ratio 0.2). For each method and fold, one
training with --validation 0.2 and --select best-test: after every epoch the tested stage's
method is scored on the validation split (20% of the fold's training subjects, held out; scored
on the labels the protocol keeps) and on the test split (clean faces, threshold 0.5), and that
scoring leaves training unchanged (tests/test_validation.py), so the three selections are read
from the same per-epoch scores: "last" the last epoch's test mean F1, "best-val" the test mean F1
of the epoch with the best validation mean F1, "best-test" the best test mean F1 (the first of
equal epochs, as --select does). The optimism of test-set selection is best-test minus best-val,
in points. Writes benchmarks/results/cpu-validation-selection.json (--json) after every run, with
the CPU (aubench.bench.cpu_info); runs already in it are kept.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from aubench.bench import cpu_info
from aubench.data import AUFile
from aubench.demo import DEMO_LABEL_RATIO, make_demo_dataset
from aubench.engine.config import RunConfig
from aubench.engine.trainer import Trainer
from aubench.files import write_json_atomic
from aubench.models.base import tested_stages

VALIDATION = 0.2
SELECTIONS = ("last", "best-val", "best-test")


def selections(scores: list[dict]) -> dict[str, dict]:
    """Per selection, the chosen epoch and its test and validation mean F1 (in points), from one
    stage's per-epoch scores (the trainer's selection record)."""
    def pick(epoch_score) -> dict:
        return {"epoch": epoch_score["epoch"], "test_mean_f1": 100 * epoch_score["test_mean_f1"],
                "validation_mean_f1": 100 * epoch_score["validation_mean_f1"]}

    return {"last": pick(scores[-1]),
            "best-val": pick(max(scores, key=lambda s: s["validation_mean_f1"])),   # max: the first of equals
            "best-test": pick(max(scores, key=lambda s: s["test_mean_f1"]))}


def run_one(method: str, fold: int, data: Path, out: Path, seed: int) -> dict:
    """Train `method` on `fold` with the validation split, every epoch scored on both splits."""
    config = RunConfig(method=method, data=str(data), fold=fold, preset="tiny", label_ratio=DEMO_LABEL_RATIO,
                       out=str(out / method / f"fold{fold}"), overwrite=True, seed=seed, device="cpu",
                       progress=False, channels_last=True, validation=VALIDATION, select="best-test")
    started = time.perf_counter()
    trainer = Trainer(config)
    trainer.fit()
    stage = tested_stages(trainer.stages)[-1].name
    scores = trainer.selection[stage]["epochs"]
    return {"method": method, "fold": fold, "stage": stage, "epochs": len(scores),
            "validation_subjects": trainer.data.validation_subjects,
            "train_subjects": len(trainer.data.train_subjects),
            "validation_labeled_frames": trainer.data.validation_record(DEMO_LABEL_RATIO)["labeled_frames"],
            "scores": scores, "selections": selections(scores), "seconds": round(time.perf_counter() - started, 1)}


def summary(runs: list[dict]) -> dict:
    """Per method: the mean (over its folds) test mean F1 of each selection, and the optimism of
    best-test over best-val and over the last epoch, in points, per fold and on average."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        test = {s: [r["selections"][s]["test_mean_f1"] for r in mine] for s in SELECTIONS}
        over_val = [t - v for t, v in zip(test["best-test"], test["best-val"])]
        over_last = [t - v for t, v in zip(test["best-test"], test["last"])]
        out[method] = {"folds": [r["fold"] for r in mine],
                       "test_mean_f1": {s: round(float(np.mean(v)), 2) for s, v in test.items()},
                       "optimism_over_best_val": [round(x, 2) for x in over_val],
                       "optimism_over_last": [round(x, 2) for x in over_last],
                       "mean_optimism_over_best_val": round(float(np.mean(over_val)), 2),
                       "mean_optimism_over_last": round(float(np.mean(over_last)), 2)}
    return out


def markdown_table(runs: list[dict]) -> str:
    """The runs as docs/validation.md shows them: per method and fold, the test mean F1 (and the
    epoch) of each selection and the optimism of best-test, then each method's means."""
    lines = ["| method | fold | last | best-val | best-test | best-test - best-val | best-test - last |",
             "|:---|---:|---:|---:|---:|---:|---:|"]
    for method, record in summary(runs).items():
        for run in (r for r in runs if r["method"] == method):
            chosen = run["selections"]
            cells = [f"{chosen[s]['test_mean_f1']:.1f} (ep {chosen[s]['epoch']})" for s in SELECTIONS]
            lines.append(f"| {method} | {run['fold']} | " + " | ".join(cells) + " | "
                         f"{chosen['best-test']['test_mean_f1'] - chosen['best-val']['test_mean_f1']:+.1f} | "
                         f"{chosen['best-test']['test_mean_f1'] - chosen['last']['test_mean_f1']:+.1f} |")
        means = record["test_mean_f1"]
        lines.append(f"| {method} | mean | " + " | ".join(f"{means[s]:.1f}" for s in SELECTIONS) + " | "
                     f"{record['mean_optimism_over_best_val']:+.1f} | {record['mean_optimism_over_last']:+.1f} |")
    return "\n".join(lines)


def add_sweep_arguments(parser: argparse.ArgumentParser, out: str, json_file: str) -> None:
    """The arguments every validation sweep takes: --out, --data, --folds, --seed, --json."""
    parser.add_argument("--out", default=out)
    parser.add_argument("--data", help="the demo's dataset file, made before (default: made in OUT)")
    parser.add_argument("--folds", default="1,2,3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=json_file)


def open_sweep(args) -> tuple[Path, Path, str, Path, list[dict]]:
    """(out folder, data file, its fingerprint, the result JSON, the runs it already holds for that
    file) of a validation sweep's arguments (--out, --data, --seed, --json): the demo's dataset
    made in OUT unless --data names it; runs of another data file are dropped; one torch thread."""
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else make_demo_dataset(out, seed=args.seed)
    fingerprint = AUFile(data).fingerprint()
    path = Path(args.json)
    stored = json.loads(path.read_text()) if path.is_file() else {}
    runs = [r for r in stored.get("runs", []) if stored.get("data_fingerprint") == fingerprint]
    return out, data, fingerprint, path, runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sweep_arguments(parser, "runs/validation_selection", "benchmarks/results/cpu-validation-selection.json")
    parser.add_argument("--methods", default="megraphau,resnet")
    args = parser.parse_args(argv)

    out, data, fingerprint, path, runs = open_sweep(args)
    for fold in map(int, args.folds.split(",")):  # fold by fold: every method's fold 1 first
        for method in args.methods.split(","):
            if any(r["method"] == method and r["fold"] == fold for r in runs):
                continue
            run = run_one(method, fold, data, out, args.seed)
            runs.append(run)
            chosen = run["selections"]
            print(f"{method} fold {fold}: " + ", ".join(
                f"{s} epoch {chosen[s]['epoch']} test {chosen[s]['test_mean_f1']:.1f}" for s in SELECTIONS)
                + f" ({run['seconds']:.0f} s)", flush=True)
            record = {"benchmark": "validation_selection", "cpu": cpu_info(), "data": str(data),
                      "data_fingerprint": fingerprint, "protocol": {
                          "preset": "tiny", "label_ratio": DEMO_LABEL_RATIO, "validation": VALIDATION,
                          "seed": args.seed, "test": "clean faces, threshold 0.5, mean F1 in points"},
                      "runs": runs, "summary": summary(runs)}
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, record)
    print(markdown_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
