"""Re-check a method's default setting on validation splits of the demo's data, never its test folds.

    OMP_NUM_THREADS=1 python benchmarks/validation_defaults.py --method vivit --setting frame_pooling \
        --values cls,mean --folds 1,2,3

The demo's dataset and protocol (as benchmarks/validation_selection.py: tiny preset with its own
epochs, sparse labels at ratio 0.2), each fold with --validation 0.2: for each value of the
model setting, the method is trained on the training subjects left, and its last tested stage
(MAE-FAU: the student) at its last epoch (the default --select last) is scored on the
validation split (the held-out subjects, the labels the protocol keeps; mean F1, threshold 0.5).
The value with the best mean validation F1 over the folds is the one validation prefers; test
folds are not scored. Appends to
benchmarks/results/cpu-validation-defaults.json (--json), with the CPU; runs already there kept.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from aubench.bench import cpu_info
from aubench.demo import DEMO_LABEL_RATIO
from aubench.engine.config import RunConfig
from aubench.engine.trainer import Trainer
from aubench.files import write_json_atomic
from aubench.models.base import tested_stages

from validation_selection import VALIDATION, add_sweep_arguments, open_sweep  # benchmarks/ is the script's folder


def setting_value(text: str):
    """A --values entry as the model setting takes it: a number where it reads as one."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def validation_score(method: str, setting: str, value, fold: int, data: Path, out: Path, seed: int) -> dict:
    """Train with model setting `setting` = `value` on `fold`'s training subjects left beside the
    validation split; its last epoch's validation mean F1 (in points)."""
    config = RunConfig(method=method, data=str(data), fold=fold, preset="tiny", label_ratio=DEMO_LABEL_RATIO,
                       out=str(out / method / f"{setting}-{value}" / f"fold{fold}"), overwrite=True, seed=seed,
                       device="cpu", progress=False, channels_last=True, validation=VALIDATION,
                       model={setting: value})
    started = time.perf_counter()
    trainer = Trainer(config)
    trainer.fit()
    stage = tested_stages(trainer.stages)[-1].name
    metrics, _ = trainer.evaluate_with_predictions(stage=stage, split="validation")
    return {"method": method, "setting": setting, "value": value, "fold": fold,
            "validation_subjects": trainer.data.validation_subjects,
            "validation_mean_f1": 100 * metrics["mean_f1"], "seconds": round(time.perf_counter() - started, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--setting", required=True, help="a model setting of the method's tiny preset")
    parser.add_argument("--values", required=True, help="comma-separated values to compare")
    add_sweep_arguments(parser, "runs/validation_defaults", "benchmarks/results/cpu-validation-defaults.json")
    args = parser.parse_args(argv)

    out, data, fingerprint, path, runs = open_sweep(args)
    values = [setting_value(v) for v in args.values.split(",")]
    for fold in map(int, args.folds.split(",")):
        for value in values:
            if any((r["method"], r["setting"], r["value"], r["fold"]) == (args.method, args.setting, value, fold)
                   for r in runs):
                continue
            run = validation_score(args.method, args.setting, value, fold, data, out, args.seed)
            runs.append(run)
            print(f"{args.method} {args.setting}={value} fold {fold}: validation mean F1 "
                  f"{run['validation_mean_f1']:.1f} ({run['seconds']:.0f} s)", flush=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, {
                "benchmark": "validation_defaults", "cpu": cpu_info(), "data": str(data),
                "data_fingerprint": fingerprint, "protocol": {
                    "preset": "tiny", "label_ratio": DEMO_LABEL_RATIO, "validation": VALIDATION, "seed": args.seed,
                    "score": "the last epoch's validation mean F1 in points (threshold 0.5); test folds not scored"},
                "runs": runs})
    mine = [r for r in runs if (r["method"], r["setting"]) == (args.method, args.setting)]
    for value in values:
        scores = [r["validation_mean_f1"] for r in mine if r["value"] == value]
        if scores:
            print(f"{args.method} {args.setting}={value}: folds {[r['fold'] for r in mine if r['value'] == value]}, "
                  f"validation mean F1 {np.mean(scores):.1f} ({', '.join(f'{s:.1f}' for s in scores)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
