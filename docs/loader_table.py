"""The generated tables of docs/loader.md (block `loader`, built by docs/make_docs.py): the JPEG
decoders compared, the loader's frames/s for 0, 1, 2 workers and per core, and the CPU cores per
GPU each paper preset needs, from benchmarks/results/cpu-loader.json (benchmarks/bench_loader.py)
and, when present, the GPU training figures of benchmarks/results/gpu-*.json
(benchmarks/gpu_check.py). Reads JSON only.

    python docs/loader_table.py        print the block
"""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
LOADER = RESULTS / "cpu-loader.json"


def _cpu(report: dict) -> str:
    cpu = report.get("cpu") or {}
    return f"{cpu.get('brand')}, {cpu.get('capability')}, {cpu.get('threads')} thread(s), torch {cpu.get('torch')}"


def per_core(report: dict) -> dict[tuple[str, str], float]:
    """{(pipeline, storage): frames per CPU second without workers}: the pipeline's own cost per
    frame. (With workers, the CPU measured also holds the workers' start-up, which a short epoch
    here weighs far more than a real one.)"""
    return {(r["pipeline"], r["storage"]): r["frames_per_cpu_s"] for r in report["loader"] if r["workers"] == 0}


def gpu_training() -> tuple[dict[str, dict], list[str]]:
    """({method: gpu_check's record}, the files they come from) of benchmarks/results/gpu-*.json
    that are not dry runs; the record of the file last in name order where several have one."""
    records, files = {}, []
    for path in sorted(RESULTS.glob("gpu-*.json")):
        report = json.loads(path.read_text(encoding="utf-8"))
        if report.get("dry_run"):
            continue
        methods = report.get("steps", {}).get("methods", {}).get("result", {})
        usable = {name: {**r, "device": report.get("device")} for name, r in methods.items()
                  if r.get("train_frames_per_s")}
        if usable:
            records.update(usable)
            files.append(str(path.relative_to(ROOT)))
    return records, files


def loader_block() -> str:
    """The block's Markdown: the decoders, the pipelines' frames/s and the cores per GPU table."""
    report = json.loads(LOADER.read_text(encoding="utf-8"))
    source = LOADER.relative_to(ROOT)
    decoders = report["decoders"]
    lines = [f"Measured by `benchmarks/bench_loader.py` (`{source}`) on {_cpu(report)}, "
             f"{report['cpu_count']} cores, load average {report['load_average']:.1f} at the end: per-second "
             f"figures depend on the load; figures per CPU second (the process and its DataLoader workers) are "
             f"what one core gives. Median of {report['rounds']} rounds.", "",
             f"**JPEG decoders**, {decoders['frames']} frames of {decoders['size']} px at quality 95 "
             f"({decoders['mean_bytes'] / 1000:.0f} kB each), one thread:", "",
             "| decoder | frames per CPU second | vs OpenCV | largest pixel difference to OpenCV |",
             "|:---|---:|---:|---:|"]
    opencv = decoders["opencv"]["frames_per_cpu_s"]
    names = {"opencv": "OpenCV `cv2.imdecode`", "pil": "Pillow", "torchvision": "`torchvision.io.decode_jpeg` (CPU)",
             "simplejpeg": "simplejpeg (libjpeg-turbo), **used by aubench.data**"}
    for key, name in names.items():
        d = decoders[key]
        lines.append(f"| {name} | {d['frames_per_cpu_s']:.0f} | {d['frames_per_cpu_s'] / opencv:.2f}x | "
                     f"{d['max_abs_diff_vs_opencv']} |")
    nvjpeg = decoders.get("nvjpeg", {})
    lines.append("| nvjpeg, `torchvision.io.decode_jpeg(device=\"cuda\")` | "
                 + (f"{nvjpeg['frames_per_s']:.0f} frames/s on {nvjpeg['device']} | | |" if "frames_per_s" in nvjpeg
                    else f"not measured ({nvjpeg.get('skipped', 'no record')}) | | |"))

    lines += ["", f"**The training pipelines** (uint8 items as the engine loads them, frames stored at "
              f"{report['stored_size']} px, out at {report['image_size']} px, batch {report['batch']}):", ""]
    lines += [f"- {name}: {what}" for name, what in report["pipelines"].items()]
    lines += ["", "| pipeline | storage | frames/s here, 0 / 1 / 2 workers | "
              "frames per CPU second, 0 / 1 / 2 workers |", "|:---|:---|---:|---:|"]
    rows: dict[tuple[str, str], dict[int, dict]] = {}
    for r in report["loader"]:
        rows.setdefault((r["pipeline"], r["storage"]), {})[r["workers"]] = r
    for (pipeline, storage), by_workers in rows.items():
        cells = [" / ".join(f"{by_workers[w][key]:.0f}" if w in by_workers else "-" for w in (0, 1, 2))
                 for key in ("frames_per_s", "frames_per_cpu_s")]
        lines.append(f"| {pipeline} | {storage} | {cells[0]} | {cells[1]} |")
    if report.get("persistent_workers"):
        lines += ["", "**Persistent workers** (the engine's loader keeps its workers for a stage's epochs): one "
                  "loader, resize+rotate on JPEG, two batches an epoch; seconds to the first batch and of the "
                  "epoch, in the first epoch (the workers start) and the second (they are up):", "",
                  "| workers | epoch 1: first batch, epoch | epoch 2: first batch, epoch | saved per epoch |",
                  "|---:|---:|---:|---:|"]
        for r in report["persistent_workers"]:
            lines.append(f"| {r['workers']} | {r['epoch1_first_batch_s']:.2f} s, {r['epoch1_seconds']:.2f} s | "
                         f"{r['epoch2_first_batch_s']:.2f} s, {r['epoch2_seconds']:.2f} s | "
                         f"{r['epoch1_seconds'] - r['epoch2_seconds']:.2f} s |")

    cores = per_core(report)
    sources = sorted({f"`{r['source']}`" if r["source"].startswith("benchmarks") else r["source"]
                      for r in report["training"]})
    gpu, gpu_files = gpu_training()
    lines += ["", "**CPU cores per GPU** for each paper preset: loader cores = GPU training frames/s ÷ the "
              "pipeline's frames per CPU second (JPEG storage, the converter's default; raw in "
              "brackets), plus one core for the training process itself. The CPU training figure is the same "
              "preset on this CPU (`aubench bench` records: " + ", ".join(sources) + ").", "",
              "| method (stage) | pipeline | loader frames per CPU s, JPEG (raw) | train frames/s, this CPU | "
              "loader cores at that speed, JPEG | GPU train frames/s | loader cores per GPU, JPEG (raw) |",
              "|:---|:---|---:|---:|---:|---:|---:|"]
    pipeline_of = report["pipeline_of_method"]
    for r in report["training"]:
        pipeline = pipeline_of[r["base_method"]]
        jpeg, raw = cores[(pipeline, "jpeg")], cores[(pipeline, "raw")]
        record = gpu.get(r["base_method"])
        if record is None:
            gpu_cell, need = "needs a GPU figure", f"G ÷ {jpeg:.0f} (G ÷ {raw:.0f})"
        else:
            g = record["train_frames_per_s"]
            gpu_cell = f"{g:.0f} ({record['device']}, batch {record['batch_size']})"
            need = f"{math.ceil(g / jpeg)} ({math.ceil(g / raw)})"
        threads = re.search(r"(\d+) threads", r.get("device") or "")
        lines.append(f"| {r['method']} ({r['stage']}) | {pipeline} | {jpeg:.0f} ({raw:.0f}) | "
                     f"{r['train_frames_per_s']:.3g} (batch {r['batch_size']}, {r['frames_per_batch']} frames"
                     + (f", {threads.group(1)} threads" if threads else "") + ") | "
                     f"{r['train_frames_per_s'] / jpeg:.2g} | {gpu_cell} | {need} |")
    two_views = [cores[("two-views", storage)] for storage in ("jpeg", "raw") if ("two-views", storage) in cores]
    if two_views:
        lines += ["", f"RRL's pre-training stage (the two-views pipeline, two augmented images per frame) is "
                  f"not in the GPU check's figures (it measures the probe stage): its loader gives {two_views[0]:.0f} "
                  f"({two_views[-1]:.0f}) frames per CPU second, so it needs G ÷ {two_views[0]:.0f} "
                  f"loader cores per GPU for its own G."]
    lines += ["", "G: the preset's GPU training frames/s; " + (
        f"GPU figures from {', '.join(f'`{f}`' for f in gpu_files)}." if gpu_files else
        "no GPU figure is in benchmarks/results yet: `benchmarks/gpu_check.sh` on a GPU writes one "
        "(gpu-<device>-<date>.json) and this table then gives the cores.")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(loader_block())
