"""The prepared GPU check (benchmarks/gpu_check.sh runs it after building the CUDA kernels and
running the `cuda` tests): what to measure first on a machine with a GPU, in a few minutes.

    python benchmarks/gpu_check.py [--dry-run] [--out DIR]

Steps, each timed and written to the JSON as soon as it ends (a run cut short keeps what it did):
1. ops: the three custom ops against their eager reference at the methods' sizes (batched
   Sinkhorn B = 4096, K = 12 also against POT; gather / restore also against a plain device copy
   of the same bytes, with the GB/s each achieves), forward + backward, median of rounds;
2. methods: every method's `paper` preset, train and inference frames/s at bf16 and the preset's
   batch (aubench.bench.benchmark_method), with the peak GPU memory of each;
3. torchrun: one `aubench train` epoch of `resnet` tiny at the demo's label ratio under
   `torchrun --nproc_per_node 1` (NCCL on a GPU), checked to finish;
4. resnet on the demo's data: fold 1 with the demo's settings on the GPU and on the CPU, the two
   mean F1 side by side (float order differs, so they need not be equal).

Writes benchmarks/results/gpu-<device>-<date>.json (`--out` elsewhere) and prints a summary.
`--dry-run` runs every step on the CPU at tiny sizes (fp32, the tiny presets, one epoch), into a
temporary folder unless `--out` says otherwise: the check of this script's logic that CI runs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from aubench.bench import cpu_info, device_name, timed_rounds  # noqa: E402
from aubench.engine.run import versions  # noqa: E402
from aubench.files import write_json_atomic  # noqa: E402


def synced(fn, device: str):
    """fn, waiting for the device to finish, so that a timing includes the kernels."""
    def run():
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
    return run


def check_ops(device: str, dry: bool) -> dict:
    from bench_sinkhorn import SOLVERS, make_inputs
    from bench_token_gather import gather_step, restore_step

    from aubench.ops import make_shuffle_permutations, reference, temporal_shuffle_features

    rounds = 3 if dry else 20
    out = {}
    batch, k = (64, 8) if dry else (4096, 12)
    cost, a, b = make_inputs(batch, k, device=device)
    parts = {name: synced(lambda solve=solve: solve(cost, a, b), device) for name, solve in SOLVERS.items()}
    times = timed_rounds(parts, warmup=1, iters=rounds)
    out[f"sinkhorn forward B{batch} K{k}"] = {"seconds": times, "speedup": {
        name: times[name] / times["aubench"] for name in times if name != "aubench"}}

    frames, clips = 5, (8 if dry else 64)
    generator = torch.Generator(device).manual_seed(0)
    perm = make_shuffle_permutations(clips, frames, generator=generator)
    features = torch.randn(clips, frames, 512, device=device, requires_grad=True)
    parts = {name: synced(lambda build=build: torch.autograd.grad(build(features, perm)[0].sum(), features), device)
             for name, build in (("aubench", temporal_shuffle_features), ("reference", reference.temporal_shuffle_features))}
    times = timed_rounds(parts, warmup=1, iters=rounds)
    out[f"temporal_shuffle fwd+bwd B{clips} N{frames} C512"] = {"seconds": times,
                                                                "speedup": {"reference": times["reference"] / times["aubench"]}}

    for op, make in (("gather_tokens", gather_step), ("restore_tokens", restore_step)):
        steps = {impl: make(impl, device, 0.75) for impl in ("aubench", "torch.gather", "copy")}
        times = timed_rounds({impl: step for impl, (step, _) in steps.items()}, warmup=1, iters=rounds)
        moved = steps["copy"][1]
        out[f"{op} fwd+bwd mask0.75"] = {
            "seconds": times, "speedup": {impl: times[impl] / times["aubench"] for impl in ("torch.gather", "copy")},
            "gb_per_s": {impl: moved / times[impl] / 1e9 for impl in times}}
    return out


def check_methods(device: str, dry: bool) -> dict:
    from aubench.bench import benchmark_method
    from aubench.models import available_methods, method_class

    out = {}
    for name in available_methods():
        if not method_class(name).__module__.startswith("aubench.models."):
            continue
        preset = "tiny" if dry else "paper"
        batch = 2 if dry else method_class(name).presets[preset].batch_size
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            record = benchmark_method(name, 12, preset, device, batch_size=batch,
                                      precision="fp32" if dry else "bf16", warmup=1 if dry else 2,
                                      iters=1 if dry else 5)
        except torch.OutOfMemoryError as err:
            out[name] = {"error": f"out of memory at batch {batch}: {str(err).splitlines()[0]}"}
            continue
        except Exception as err:  # one method's failure is a finding; the others are still measured
            out[name] = {"error": f"{type(err).__name__}: {err}"}
            continue
        if device == "cuda":
            record["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out[name] = record
    return out


def check_torchrun(device: str, data: Path, work: Path) -> dict:
    from aubench.demo import DEMO_LABEL_RATIO

    # the demo's label ratio: a fifth of the frames, so that the dry run stays short on 2 cores
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "aubench", "train",
               "--method", "resnet", "--preset", "tiny", "--epochs", "1", "--data", str(data),
               "--label-ratio", str(DEMO_LABEL_RATIO),
               "--out", str(work / "torchrun"), "--device", device, "--quiet"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    result = {"command": " ".join(command[1:]), "returncode": done.returncode,
              "seconds": time.perf_counter() - started}
    if done.returncode != 0:
        result["output_tail"] = (done.stdout + done.stderr)[-3000:]
    else:
        written = json.loads((work / "torchrun" / "result.json").read_text())
        result.update(world_size=written["world_size"], mean_f1=written["mean_f1"], device=written["device"])
    return result


def check_resnet(device: str, data: Path, work: Path, dry: bool) -> dict:
    from aubench.demo import DEMO_LABEL_RATIO
    from aubench.engine.config import RunConfig
    from aubench.engine.run import train_and_evaluate

    out = {}
    for where in dict.fromkeys((device, "cpu")):
        config = RunConfig(method="resnet", data=str(data), fold=1, preset="tiny", label_ratio=DEMO_LABEL_RATIO,
                           out=str(work / f"resnet-{where}"), device=where, progress=False,
                           epochs=1 if dry else None, overwrite=True)
        started = time.perf_counter()
        result = train_and_evaluate(config)[0].result
        out[where] = {"mean_f1": result["mean_f1"], "all_positive_mean_f1": result["metrics"]["all_positive_mean_f1"],
                      "seconds": time.perf_counter() - started, "device": result["device"]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU at tiny sizes")
    parser.add_argument("--out", type=Path, help="folder of the JSON (default: benchmarks/results, or a "
                                                 "temporary folder with --dry-run)")
    args = parser.parse_args(argv)
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; --dry-run checks the script on the CPU", file=sys.stderr)
        return 2
    device = "cpu" if dry else "cuda"
    work = Path(tempfile.mkdtemp(prefix="aubench-gpu-check-"))
    out_dir = args.out or (work if dry else HERE / "results")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(0) if not dry else "cpu-dryrun").strip("-").lower()
    path = out_dir / f"gpu-{slug}-{datetime.now(timezone.utc):%Y%m%d}.json"
    from aubench.ops import have_cuda_kernels

    report = {"what": __doc__.strip().splitlines()[0], "dry_run": dry, "device": device_name(torch.device(device)),
              "cpu": cpu_info(), "versions": versions(), "cuda_kernels": bool(have_cuda_kernels()),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "steps": {}}

    def step(name: str, fn):
        started = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            report["steps"][name] = {"result": fn()}
        except Exception as err:  # one step's failure is a finding, not the end of the check
            report["steps"][name] = {"error": f"{type(err).__name__}: {err}"}
        report["steps"][name]["seconds"] = time.perf_counter() - started
        write_json_atomic(path, report)
        state = "failed: " + report["steps"][name]["error"] if "error" in report["steps"][name] else "done"
        print(f"[gpu_check] {name} {state} ({report['steps'][name]['seconds']:.0f} s)", flush=True)

    from aubench.demo import make_demo_dataset

    data_dir = work / "demo"
    data_dir.mkdir()
    step("ops", lambda: check_ops(device, dry))
    step("methods", lambda: check_methods(device, dry))
    step("demo data", lambda: str(make_demo_dataset(data_dir)))
    data = data_dir / "demo_bp4d.h5"
    step("torchrun", lambda: check_torchrun(device, data, work))
    step("resnet", lambda: check_resnet(device, data, work, dry))

    print(f"\n[gpu_check] {report['device']}, torch {torch.__version__}, CUDA kernels {report['cuda_kernels']}")
    ops = report["steps"]["ops"].get("result", {})
    for case, figures in ops.items():
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in figures["speedup"].items())
        rates = ", ".join(f"{k} {v:.3g} GB/s" for k, v in figures.get("gb_per_s", {}).items())
        print(f"  {case}: aubench vs {ratios}" + (f"; {rates}" if rates else ""))
    for name, record in report["steps"]["methods"].get("result", {}).items():
        if "error" in record:
            print(f"  {name}: {record['error']}")
            continue
        memory = f", peak {record['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in record else ""
        print(f"  {record['method']} {record['preset']} batch {record['batch_size']}: infer "
              f"{record['infer_frames_per_s']:.0f}, train {record.get('train_frames_per_s', float('nan')):.0f} "
              f"frames/s{memory}")
    failed = [name for name, s in report["steps"].items() if "error" in s]
    failed += [f"methods: {name}" for name, record in report["steps"]["methods"].get("result", {}).items()
               if "error" in record]
    torchrun = report["steps"]["torchrun"].get("result", {})
    if torchrun.get("returncode"):
        failed.append("torchrun (exit status)")
    print(f"[gpu_check] wrote {path}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
