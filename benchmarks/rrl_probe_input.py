"""RRL's Table 3 like for like: every loss ablation probed on the same input, once on the global
vector o_g alone (`probe_input=global`) and once on o_g with the K AU vectors
(`probe_input=global+au`, the default), so the table compares the pre-training losses and not
what the probe reads.

    OMP_NUM_THREADS=1 python benchmarks/rrl_probe_input.py --out runs/rrl_probe_input [--folds 1]

On the demo's data (aubench.demo.make_demo_dataset: synthetic BP4D layout, 64 px landmark crops),
`rrl:global`, `rrl:global+local`, `rrl:global+relation` and `rrl` at `tiny` under the demo's
protocol (label ratio 0.2 for the probe; pre-training on every training frame with its labels
unused), tested on clean faces, one run at a time. Each run trains its own pre-training stage
(the probe input does not enter it; same seed, same data). Writes
benchmarks/results/cpu-rrl-probe-input.json with the CPU it ran on, after every run (a rerun with
the same --out resumes the runs already done), and the paper's Table 3 means beside ours.

    OMP_NUM_THREADS=1 python benchmarks/rrl_probe_input.py --final-norm

The global vector o_g with and without the backbone's final norm (timm's pooled representation
against the plain average of the last stage's map) on one seeded random batch, for the `paper`
encoder (Swin-T at 224 px, random weights, as `paper` starts) and the `tiny` one (a ResNet: no
final norm, so both are the same vector). Writes benchmarks/results/cpu-rrl-final-norm.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from aubench.bench import cpu_info
from aubench.demo import DEMO_LABEL_RATIO, make_demo_dataset
from aubench.engine.config import RunConfig
from aubench.engine.evaluate import EvaluateRequest, evaluate_runs
from aubench.engine.run import versions
from aubench.files import write_json_atomic
from aubench.models.rrl import PROBE_INPUTS, RRL, RRLEncoder
from aubench.reported import REPORTED

RESULT = Path(__file__).resolve().parent / "results" / "cpu-rrl-probe-input.json"
FINAL_NORM_RESULT = RESULT.with_name("cpu-rrl-final-norm.json")
FINAL_NORM_BATCH = 8
# Table 3's rows as aubench's variants, and the names aubench.reported gives the paper's means
VARIANTS = {"rrl:global": "RRL: global", "rrl:global+local": "RRL: global+local",
            "rrl:global+relation": "RRL: global+relation", "rrl": "RRL"}


def paper_means() -> dict[str, float]:
    """Table 3's BP4D means (RRL's full model: Table 2's mean, the same 50.2) by variant."""
    means = {entry["method"]: entry["mean_f1"] for entry in REPORTED
             if entry["dataset"] == "BP4D" and entry["method"] in VARIANTS.values()}
    return {variant: means[name] for variant, name in VARIANTS.items()}


def value_summary(vectors: torch.Tensor) -> dict[str, float]:
    """Range and spread of a batch of vectors (B, C): over all values, and the vectors' norms."""
    return {"min": vectors.min().item(), "max": vectors.max().item(), "mean": vectors.mean().item(),
            "std": vectors.std().item(), "mean_l2_norm": vectors.norm(dim=1).mean().item()}


def measure_final_norm() -> int:
    """o_g with the final norm (what RRLEncoder returns) and without it, for each preset's encoder."""
    torch.manual_seed(0)
    rows = {}
    for name in ("paper", "tiny"):
        model = RRL.presets[name].model
        size = RRL.presets[name].image_size
        encoder = RRLEncoder(model["encoder"], None, int(model["local_stage"]), **model["encoder_kwargs"]).eval()
        images = torch.randn(FINAL_NORM_BATCH, 3, size, size)
        with torch.no_grad():
            with_norm, _ = encoder(images)
            last = encoder.backbone.forward_intermediates(images, indices=[-1], intermediates_only=True)[0]
            without_norm = last.mean(dim=(2, 3))   # the plain average of the last stage's map (NCHW)
        rows[name] = {"encoder": model["encoder"], "image_size": size,
                      "final_norm": type(getattr(encoder.backbone, "norm", None)).__name__,
                      "with_final_norm": value_summary(with_norm), "without_final_norm": value_summary(without_norm),
                      "max_abs_difference": (with_norm - without_norm).abs().max().item(),
                      "cosine_with_without": torch.nn.functional.cosine_similarity(
                          with_norm, without_norm, dim=1).mean().item()}
        print(f"{name} ({model['encoder']}, final norm {rows[name]['final_norm']}): o_g with it in "
              f"[{rows[name]['with_final_norm']['min']:.2f}, {rows[name]['with_final_norm']['max']:.2f}], "
              f"without in [{rows[name]['without_final_norm']['min']:.2f}, "
              f"{rows[name]['without_final_norm']['max']:.2f}], max difference {rows[name]['max_abs_difference']:.3g}")
    write_json_atomic(FINAL_NORM_RESULT, {"what": "RRL's o_g with and without the backbone's final norm",
                                          "cpu": cpu_info(), "versions": versions(), "batch": FINAL_NORM_BATCH,
                                          "input": "torch.randn images, seed 0; encoders at random weights, eval mode",
                                          "encoders": rows})
    print(f"wrote {FINAL_NORM_RESULT}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="where the data and runs go")
    parser.add_argument("--folds", default="1", help="comma-separated folds (default: 1)")
    parser.add_argument("--final-norm", action="store_true",
                        help="measure o_g with and without the final norm instead (no --out needed)")
    args = parser.parse_args(argv)
    if args.final_norm:
        return measure_final_norm()
    if args.out is None:
        parser.error("--out is required (unless --final-norm)")
    args.out.mkdir(parents=True, exist_ok=True)
    data = make_demo_dataset(args.out)
    folds = [int(k) for k in args.folds.split(",")]
    record = {"what": __doc__.strip().splitlines()[0], "cpu": cpu_info(), "versions": versions(),
              "preset": "tiny", "label_ratio": DEMO_LABEL_RATIO, "folds": folds, "paper_bp4d": paper_means(),
              "rows": []}
    for probe_input in reversed(PROBE_INPUTS):   # the default, global+au, first
        for variant in VARIANTS:
            run = RunConfig(method="", data=str(data), preset="tiny", resume=True, device="cpu", progress=False,
                            model={"probe_input": probe_input})
            request = EvaluateRequest(methods=[variant], run=run, out=str(args.out / probe_input), folds=folds,
                                      label_ratios=[DEMO_LABEL_RATIO])
            start = time.perf_counter()
            for path in evaluate_runs(request):
                result = json.loads(path.read_text())
                record["rows"].append({"method": variant, "probe_input": probe_input, "fold": result["fold"],
                                       "mean_f1": result["mean_f1"],
                                       "all_positive_mean_f1": result["metrics"]["all_positive_mean_f1"],
                                       "probe_model": {key: result["preset"]["model"][key]
                                                       for key in ("losses", "probe_input", "probe_weighting")},
                                       "seconds": round(time.perf_counter() - start, 1), "file": str(path)})
                row = record["rows"][-1]
                print(f"{probe_input:>9} {variant:<20} fold {row['fold']}: mean F1 {100 * row['mean_f1']:.1f} "
                      f"(all-positive {100 * row['all_positive_mean_f1']:.1f}), {row['seconds']:.0f} s", flush=True)
            write_json_atomic(RESULT, record)
    print(f"wrote {RESULT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
