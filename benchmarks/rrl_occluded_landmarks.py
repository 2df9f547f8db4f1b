"""RRL under occlusion with the landmarks of the clean frame against landmarks detected on the
occluded image (`--occluded-landmarks detect`): how much of RRL's F1 under patches comes from
reading the clean frame's landmarks.

    python benchmarks/rrl_occluded_landmarks.py --out runs/rrl_landmarks [--folds 1]

On the demo's data (aubench.demo.make_demo_dataset: synthetic BP4D layout, 64 px landmark crops),
`rrl` tiny at the demo's label ratio 0.2, tested on clean faces and under 50% random patches, once
with each landmark source (two evaluations of the same settings otherwise: the detect run is
trained again, from the same seed). Writes benchmarks/results/cpu-rrl-occluded-landmarks.json
with the CPU it ran on.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aubench.bench import cpu_info
from aubench.demo import DEMO_LABEL_RATIO, make_demo_dataset
from aubench.engine.config import RunConfig
from aubench.engine.evaluate import EvaluateRequest, evaluate_runs
from aubench.engine.run import versions
from aubench.files import write_json_atomic

RESULT = Path(__file__).resolve().parent / "results" / "cpu-rrl-occluded-landmarks.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where the data and runs go")
    parser.add_argument("--folds", default="1", help="comma-separated folds (default: 1)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data = make_demo_dataset(args.out)
    folds = [int(k) for k in args.folds.split(",")]
    rows = []
    for source in ("clean", "detect"):
        run = RunConfig(method="", data=str(data), preset="tiny", resume=True, device="cpu", progress=False,
                        occluded_landmarks=source)
        request = EvaluateRequest(methods=["rrl"], run=run, out=str(args.out / source), folds=folds,
                                  label_ratios=[DEMO_LABEL_RATIO], test_occlusions=["none", "patches:0.5"])
        for path in evaluate_runs(request):
            result = json.loads(path.read_text())
            rows.append({"occluded_landmarks": source, "fold": result["fold"], "test": result["occlusion"]["test"],
                         "mean_f1": result["mean_f1"],
                         "all_positive_mean_f1": result["metrics"]["all_positive_mean_f1"],
                         "test_inputs": result["test_inputs"],
                         "privileged_test_inputs": result["privileged_test_inputs"]})
    write_json_atomic(RESULT, {"what": __doc__.strip().splitlines()[0], "cpu": cpu_info(), "versions": versions(),
                               "label_ratio": DEMO_LABEL_RATIO, "folds": folds, "rows": rows})
    for row in rows:
        print(f"{row['occluded_landmarks']:>6} fold {row['fold']} {row['test']:>10}: mean F1 {100 * row['mean_f1']:.1f}"
              f" (all-positive {100 * row['all_positive_mean_f1']:.1f})")
    print(f"wrote {RESULT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
