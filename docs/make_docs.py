"""Build the figures of README.md and docs/ from result JSON, so that no figure there is typed by hand.

    python docs/make_docs.py                 rewrite the generated blocks of README.md and of every
                                             docs/**/*.md page (`make docs`)
    python docs/make_docs.py --check         exit 1, naming each page's block and each figure that
                                             differs from what the JSON gives (tests/test_docs.py)
    python docs/make_docs.py [--check] PAGE  the same for the pages named only (no figures)

It also draws the plots of FIGURES from their JSON (through aubench.leaderboard.plot, as
`aubench leaderboard --plot` draws them) and, with --check, compares their pixels with the
committed images; OTHER_FIGURES says where the other pictures of the docs come from (without
--check and PAGE it redraws the training curves too, docs/make_curves.py, about 15 s).

A generated block sits between `<!-- make_docs: NAME -->` (or `<!-- make_docs: NAME:ARG -->` for a
block that takes an argument, e.g. a method's name) and `<!-- /make_docs -->`; the text between
the two markers belongs to this script, in whichever page it sits. Every block that shows
measurements names the CPU (brand, the vector kernels torch ran: AVX2 / AVX512, threads) and the
torch version of its figures, as the JSON records them; older files that did not record the CPU
say so.

Blocks (benchmarks/results/<file>.json unless another source is named):
- `demo`: the demo's reports (`aubench demo` writes OUT/demo_report.json; copies kept as
  demo-*.json), one column per machine: time per method, F1 per row, the spread between machines.
- `ops`: the custom-op benchmarks (cpu-ops.json, pytest-benchmark) as speed-up ratios over their
  baselines, measured in the same run.
- `models`: every method's paper preset beside a ResNet-50 (cpu-models.json).
- `bench-paper`: `aubench bench --json` records of the paper presets (cpu-bench-*-paper.json).
- `predict`: `aubench predict` on a real video, per stage and end to end, beside the face detector
  alone (cpu-predict.json, benchmarks/bench_predict.py).
- `face-detect`: dlib's detector per frame size and the converter with and without detection
  (cpu-face-detect.json, benchmarks/bench_face_detect.py).
- `mae-encoder-gather`: the MAE encoder's masked path with `gather_tokens` against `torch.gather`
  (cpu-mae-encoder-gather.json).
- `gpu-check`: `benchmarks/gpu_check.sh`'s reports (gpu-*.json), or a sentence that there is none.
- `loader`: the JPEG decoders, the loader's frames/s and the CPU cores per GPU (cpu-loader.json,
  gpu-*.json; docs/loader_table.py makes the tables).
- `presets:METHOD`: a method's presets as the code defines them (aubench.models): stages, epochs,
  batch, optimiser, learning rate, image size.
- `params:METHOD`: the parameter count of a method's `paper` network, counted by this script on
  the current code, beside what cpu-models.json recorded.
- `label-ratio-sweep`: KS and ResNet against the label ratio (cpu-label-ratio-sweep.json).
- `ks-gate`: Knowledge-Spreader's perturbation-aware gate, per epoch, with it and forced open
  (cpu-ks-gate.json, benchmarks/ks_gate.py).
- `occlusion-megraphau`: ME-GraphAU trained clean and under patches, tested under five conditions
  (cpu-occlusion-megraphau.json), beside the same clean-trained settings' later run in
  cpu-occlusion-maefau.json.
- `occlusion-maefau`: MAE-FAU's teacher, student and reconstruction baseline under occlusion
  (cpu-occlusion-maefau.json).
- `maefau-alignment`: the student's feature alignment, learned patch merging against average
  pooling (cpu-maefau-alignment.json).
- `rrl-probe-input`: RRL's Table 3 variants under each probe input, beside the paper's means
  (cpu-rrl-probe-input.json, benchmarks/rrl_probe_input.py).
- `rrl-ablation`: RRL's Tables 3 and 4 on 3 folds, an earlier release (cpu-rrl-ablation.json).
- `rrl-final-norm`: RRL's o_g with and without the backbone's final norm (cpu-rrl-final-norm.json).
- `rrl-paper`: RRL's size, speed and pre-training step split at `paper` (cpu-rrl-paper.json).
- `rrl-occluded-landmarks`: RRL under occlusion with the clean frame's landmarks against landmarks
  detected on the occluded image (cpu-rrl-occluded-landmarks.json).
- `vivit-synthetic`: vivit, regnet-tf, smoothed and ensembled, on synthetic data
  (cpu-vivit-synthetic.json).
- `vivit-paper`: vivit's and regnet-tf's size and speed at `paper`, the RegNet's share
  (cpu-vivit-paper.json).
- `validation-selection`, `validation-defaults`: the validation split's measurements
  (cpu-validation-selection.json, cpu-validation-defaults.json).
- `machines`: every file of benchmarks/results with the machine it came from.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
DOCS = ROOT / "docs"
BLOCK = re.compile(r"(?P<open><!-- make_docs: (?P<name>[\w-]+)(?::(?P<arg>[\w.+-]+))? -->\n)(?P<body>.*?)"
                   r"(?P<close><!-- /make_docs -->)", re.S)
NOT_RECORDED = "CPU not recorded"


# ------------------------------------------------------------------ machines


def _capability_from_flags(flags) -> str | None:
    """What a CPU offers, from its flags (pytest-benchmark's py-cpuinfo record)."""
    flags = set(flags or ())
    if "avx512f" in flags:
        return "AVX512"
    if "avx2" in flags:
        return "AVX2"
    return None


def machine(data) -> dict:
    """{"cpu": brand, "kernels": torch's capability, "flags": the best of AVX2 / AVX512 in the
    CPU's flags (older pytest-benchmark files, which did not record the kernels), "threads": n,
    "torch": version, "forced": {...}} of a results file, from whichever of its records names
    them; fields it does not record are None."""
    found = {"cpu": None, "kernels": None, "flags": None, "threads": None, "torch": None, "forced": {}}

    def take_cpu(info: dict) -> None:  # aubench.bench.cpu_info
        found.update(cpu=info.get("brand"), kernels=info.get("capability"), threads=info.get("threads"),
                     torch=info.get("torch"), forced=info.get("kernel_variables") or {})

    if isinstance(data, dict) and "machine_info" in data:  # pytest-benchmark
        info = data["machine_info"]
        if isinstance(info.get("aubench_cpu"), dict):
            take_cpu(info["aubench_cpu"])
        else:
            cpu = info.get("cpu") or {}
            # an older file: the CPU's own flags say what it offers, not which kernels torch ran
            found.update(cpu=cpu.get("brand_raw"), torch=info.get("torch"), flags=_capability_from_flags(cpu.get("flags")))
        found["torch"] = found["torch"] or info.get("torch")
        return found
    records = data if isinstance(data, list) else [data]
    for record in records:
        for candidate in _walk(record):
            if isinstance(candidate.get("cpu"), dict):
                take_cpu(candidate["cpu"])
                return found
    for record in records:  # older files: a torch version, at most
        for candidate in _walk(record):
            version = (candidate.get("versions") or {}).get("torch") if isinstance(candidate.get("versions"),
                                                                                  dict) else None
            if version:
                found["torch"] = version
                return found
    return found


def _walk(value, depth: int = 0):
    """Every dict in a JSON value, outermost first (a few levels deep)."""
    if isinstance(value, dict):
        yield value
        if depth < 4:
            for item in value.values():
                yield from _walk(item, depth + 1)
    elif isinstance(value, list) and depth < 4:
        for item in value:
            yield from _walk(item, depth + 1)


def machine_text(m: dict) -> str:
    """"Intel(R) Xeon(R) Processor, AVX512 kernels, 2 threads, torch 2.14.1+cu130"."""
    if not m["cpu"]:
        return NOT_RECORDED + (f", torch {m['torch']}" if m["torch"] else "")
    parts = [m["cpu"]]
    if m["kernels"]:
        parts.append(f"{m['kernels']} kernels")
    elif m.get("flags"):
        parts.append(f"{m['flags']} in its flags")
    if m["forced"]:
        parts.append("forced by " + " ".join(f"{k}={v}" for k, v in m["forced"].items()))
    if m["threads"]:
        parts.append(f"{m['threads']} threads")
    if m["torch"]:
        parts.append(f"torch {m['torch']}")
    return ", ".join(parts)


def short_machine(m: dict) -> str:
    """A column header: "Xeon, AVX512", "EPYC, AVX2 (forced)"."""
    brand = (m["cpu"] or "?").replace("(R)", "").replace("Processor", "").split()
    name = next((word for word in brand if word not in ("Intel", "AMD")), brand[0] if brand else "?")
    kernels = m["kernels"] or m.get("flags") or "?"
    return f"{name} {kernels}" + (" (forced)" if m["forced"] else "")


def load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------ the demo


def _row_name(summary: dict) -> str:
    name = summary["method"]
    protocol = summary["protocol"]
    if "+linear-probe" in protocol:
        name += " (linear probe)"
    smooth = re.search(r"\+smooth-(\S+)", protocol)
    if smooth:
        name += f", smoothed ({smooth.group(1).replace('-', ' ')})"
    return name


def _f1(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def demo_reports() -> list[tuple[Path, dict]]:
    reports = [(path, load(path)) for path in sorted(RESULTS.glob("demo-*.json"))]
    if not reports:
        raise SystemExit(f"no demo reports (demo-*.json) in {RESULTS}")
    return reports


def demo_block() -> str:
    from aubench.engine.logging import minutes
    from aubench.leaderboard import PRIVILEGED_MARK

    reports = demo_reports()
    # a demo's runs each have their own threads (the row says so): the parent's count says little
    machines = [{**machine(report), **({"threads": None} if "parallel_runs" in report else {})}
                for _, report in reports]
    heads = [short_machine(m) for m in machines]
    lines = ["Machines (each column below comes from one `aubench demo` report):", "",
             "| machine | file | CPU | whole demo | dataset | " + " | ".join(
                 f"{method} (s)" for method in reports[0][1]["methods"]) + " |",
             "|---|---|---|---:|---:|" + "---:|" * len(reports[0][1]["methods"])]
    for (path, report), m, head in zip(reports, machines, heads):
        per_method = {}
        for unit in report["seconds"]["units"]:
            per_method[unit["method"]] = per_method.get(unit["method"], 0.0) + unit["seconds"]
        runs = (f", {report['parallel_runs']} runs side by side, {report['threads_per_run']} thread"
                f"{'s' if report['threads_per_run'] > 1 else ''} each" if "parallel_runs" in report else "")
        lines.append(f"| {head} | `{path.relative_to(ROOT)}` | {machine_text(m)}{runs} | "
                     f"{minutes(report['seconds']['total'])} | {report['seconds']['dataset']:.0f} | "
                     + " | ".join(f"{per_method.get(method, float('nan')):.0f}" for method in reports[0][1]["methods"])
                     + " |")
    config = reports[0][1]["config"]
    folds = ", ".join(map(str, config["folds"]))
    tests = config["test_occlusions"]
    lines += ["", f"Mean F1 (%) on fold{'s' if len(config['folds']) > 1 else ''} {folds} (mean ± std over folds "
              f"where there are several), per machine, on clean faces and under "
              f"{' and '.join(t for t in tests if t != 'none')}:", ""]
    rows: dict[tuple[str, str], dict] = {}
    for index, (_, report) in enumerate(reports):
        for summary in report["results"]:
            key = (_row_name(summary), summary["train"])
            rows.setdefault(key, {"bench": summary, "f1": {}, "privileged": {}})
            rows[key]["f1"].setdefault((index, summary["test"]), []).append(summary["mean_f1"])
            rows[key]["privileged"].setdefault(summary["test"], set()).update(summary.get("reads_at_test") or [])
    baseline = {}
    for index, (_, report) in enumerate(reports):
        by_fold = {s["fold"]: s["all_positive_mean_f1"] for s in report["results"]}
        baseline[index] = [by_fold[k] for k in sorted(by_fold)]
    header = "| row | trained under | " + " | ".join(
        f"{'clean' if test == 'none' else test.replace('patches:', 'patches ')}: {head}"
        for test in tests for head in heads) + " | params (M) | GFLOPs/frame |"
    lines += [header, "|---|---|" + "---:|" * (len(tests) * len(heads) + 2)]

    def clean_f1(item):
        values = item[1]["f1"].get((0, "none"), [0.0])
        return -statistics.mean(values)

    privileged_texts: set[str] = set()
    for (name, train), row in sorted(rows.items(), key=clean_f1):
        cells = [_f1(row["f1"].get((index, test_name), []))
                 + (f" {PRIVILEGED_MARK}" if row["privileged"].get(test_name) else "")
                 for test in tests for index in range(len(reports)) for test_name in [_condition(test)]]
        privileged_texts.update(*row["privileged"].values())
        bench = row["bench"]
        params = f"{bench['params_m']:.2f}" if bench.get("params_m") is not None else "-"
        gflops = f"{bench['gflops_per_frame']:.3f}" if bench.get("gflops_per_frame") is not None else "-"
        lines.append(f"| {name} | {'none' if train == 'none' else train} | " + " | ".join(cells)
                     + f" | {params} | {gflops} |")
    lines.append("| all-positive baseline | | " + " | ".join(
        _f1(baseline[index]) for _ in tests for index in range(len(reports))) + " | - | - |")
    lines.append("")
    if privileged_texts:
        lines += [f"{PRIVILEGED_MARK} read at test time what a deployed detector would not have: "
                  + "; ".join(sorted(privileged_texts)) + ".", ""]
    verdicts = []
    for head, (_, report) in zip(heads, reports):
        failed = report["check"]["failed"]
        verdicts.append(f"{head}: " + ("holds" if not failed else "fails for " + "; ".join(failed)))
    margins = [min(s["mean_f1"] - s["all_positive_mean_f1"] for s in report["results"] if s["test"] == "none")
               for _, report in reports]
    lines.append("The demo's check (every row above the all-positive baseline on clean faces, on every fold): "
                 + "; ".join(verdicts) + f". The smallest margin is {100 * min(margins):.1f} points.")
    if len(reports) > 1:
        lines += ["", _demo_spread(rows, tests, heads)]
    return "\n".join(lines) + "\n"


def _demo_spread(rows: dict, tests: list[str], heads: list[str]) -> str:
    """How far the machines' reports lie apart: per test condition, the median and the largest
    difference (highest minus lowest machine) of a row's mean F1, and the row that differs most."""
    parts = []
    for test in tests:
        spreads = []
        for (name, _), row in rows.items():
            means = [statistics.mean(values) for (index, condition), values in row["f1"].items()
                     if condition == _condition(test)]
            if len(means) > 1:
                spreads.append((100 * (max(means) - min(means)), name))
        if spreads:
            largest = max(spreads)
            parts.append(f"{'clean faces' if test == 'none' else test.replace('patches:', 'patches ')}: median "
                         f"{statistics.median(s for s, _ in spreads):.1f}, largest {largest[0]:.1f} ({largest[1]})")
    return (f"Spread between the {len(heads)} machines above (a row's highest minus its lowest F1, in points): "
            + "; ".join(parts) + ".")


def _condition(text: str) -> str:
    """A --test-occlusion value as a condition name ("patches:0.5" -> "patches0.5")."""
    return text.replace(":", "")


# ------------------------------------------------------------------ benchmarks


def ops_block() -> str:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from summary import format_table, load_groups, ratio_rows

    path = RESULTS / "cpu-ops.json"
    groups, _ = load_groups([path])
    return (f"Measured on {machine_text(machine(load(path)))} (`{path.relative_to(ROOT)}`); speed-up = baseline "
            f"time / aubench time, each pair measured in the same run; `fwd+bwd` = forward and backward:\n\n"
            + format_table(ratio_rows(groups)) + "\n")


def bench_paper_block() -> str:
    """The `aubench bench --preset paper` records, with MAE-FAU Table 4's sizes beside ours where
    the paper gives them (aubench.reported)."""
    from aubench.reported import MAE_FAU_TABLE4_SIZES

    lines = []
    for path in sorted(RESULTS.glob("cpu-bench-*-paper.json")):
        records = load(path)
        first = records[0]
        paper = any(r["method"] in MAE_FAU_TABLE4_SIZES for r in records) and "maefau" in path.name
        lines += [f"`{path.relative_to(ROOT)}`: batch {first['batch_size']} at {first['image_size']} px, "
                  f"{first['precision']}, on {machine_text(machine(records))}"
                  + ("; paper = MAE-FAU Table 4:" if paper else ":"), "",
                  "| method | stage | params (M) | " + ("paper params (M) | " if paper else "") + "GMACs/frame | "
                  + ("paper GMACs | " if paper else "") + "infer frames/s | train frames/s |",
                  "|---|---|---:|" + ("---:|" if paper else "") + "---:|" + ("---:|" if paper else "") + "---:|---:|"]
        for r in records:
            reported = MAE_FAU_TABLE4_SIZES.get(r["method"], {}) if paper else None
            train = f"{r['train_frames_per_s']:.1f}" if r.get("train_frames_per_s") is not None else "-"
            cells = [r["method"], r["stage"], f"{r['params_m']:.2f}"]
            if paper:
                cells.append(f"{reported['params_m']:.2f}" if reported else "-")
            cells.append(f"{r['gflops_per_frame'] / 2:.2f}")
            if paper:
                cells.append(f"{reported['gmacs']:.2f}" if reported else "-")
            cells += [f"{r['infer_frames_per_s']:.1f}", train]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def models_block() -> str:
    """benchmarks/bench_models.py: each method's paper preset beside a ResNet-50 on the same
    frames, inference only (benchmarks/results/cpu-models.json)."""
    path = RESULTS / "cpu-models.json"
    report = load(path)
    groups: dict[str, dict[str, dict]] = {}
    for bench in report["benchmarks"]:
        groups.setdefault(bench["group"], {})[bench["extra_info"]["impl"]] = bench
    lines = [f"Measured on {machine_text(machine(report))} (`{path.relative_to(ROOT)}`), float32, median of "
             f"{report['benchmarks'][0]['stats']['rounds']} rounds; speed-up = ResNet-50's time / the method's:", "",
             "| method (paper preset) | frames x size | params (M) | GFLOPs/frame | ms | ResNet-50 params (M) | "
             "ResNet-50 ms | speed-up |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for group in sorted(groups):
        ours, base = groups[group].get("aubench"), groups[group].get("resnet50")
        if not (ours and base):
            continue
        name, shape = group.removeprefix("inference ").rsplit(" ", 1)
        o, b = ours["stats"]["median"], base["stats"]["median"]
        lines.append(f"| {name.removesuffix('-paper')} | {shape} | {ours['extra_info']['params_m']:.2f} | "
                     f"{ours['extra_info']['gflops_per_frame']:.2f} | {1e3 * o:.1f} | "
                     f"{base['extra_info']['params_m']:.2f} | {1e3 * b:.1f} | {b / o:.2f}x |")
    return "\n".join(lines) + "\n"


def predict_block() -> str:
    """benchmarks/bench_predict.py: `aubench predict` on a real video, per stage and end to end,
    beside dlib's detector alone (benchmarks/results/cpu-predict.json)."""
    path = RESULTS / "cpu-predict.json"
    report = load(path)
    video, baseline = report["video"], report["baseline_detector_alone"]
    stages = list(report["records"][0]["ms_per_frame"])
    load_text = ""
    if report.get("load_average") is not None:
        load_text = f", load average {report['load_average']:.1f} on the machine's {report['cpu_count']} cores"
    lines = [f"Measured on {machine_text(machine(report))}{load_text} (`{path.relative_to(ROOT)}`): "
             f"{video['name']} ({video['width']} x {video['height']}, {video['frames']} frames, one face), fp32, "
             f"batch {report['records'][0]['batch_size']}, the median of {report['rounds']} rounds; ms per frame "
             f"by stage (wall clock), frames per second of wall clock and of the process's CPU time (on a busy "
             f"machine, about what an idle core gives), and the model alone on prepared faces at that batch:", "",
             "| method (preset) | size | --detect-every | frames/s end to end | frames per CPU second | "
             + " | ".join(f"{stage} ms" for stage in stages) + " | other ms | model alone (faces/s) |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(stages) + "---:|---:|"]
    for record in report["records"]:
        cells = " | ".join(f"{record['ms_per_frame'][stage]:.1f}" for stage in stages)
        lines.append(f"| {record['method']} ({record['preset']}) | {record['image_size']} px | "
                     f"{record['detect_every']} | {record['frames_per_s']:.1f} | {record['frames_per_cpu_s']:.1f} | "
                     f"{cells} | {record['other_ms_per_frame']:.1f} | {record['model_alone_faces_per_s']:.1f} |")
    lines += ["", f"Baseline, in the same run: decoding and dlib's face detector alone on every frame, "
                  f"{baseline['frames_per_s']:.1f} frames/s ({baseline['frames_per_cpu_s']:.1f} per CPU second)."]
    return "\n".join(lines) + "\n"


def rrl_probe_input_block() -> str:
    """benchmarks/rrl_probe_input.py: each Table 3 variant probed on o_g alone and on o_g with the
    AU vectors, mean F1 over the folds run, the paper's BP4D means beside them."""
    path = RESULTS / "cpu-rrl-probe-input.json"
    report = load(path)
    scores: dict[tuple[str, str], list[float]] = {}
    baseline: dict[int, float] = {}
    for row in report["rows"]:
        scores.setdefault((row["method"], row["probe_input"]), []).append(row["mean_f1"])
        baseline[row["fold"]] = row["all_positive_mean_f1"]
    folds = ", ".join(str(fold) for fold in report["folds"])
    lines = [f"Measured on {machine_text(machine(report))} (`{path.relative_to(ROOT)}`): `rrl` "
             f"{report['preset']} on the demo's data, fold{'s' if len(report['folds']) > 1 else ''} {folds}, "
             f"label ratio {report['label_ratio']:g} for the probe; mean F1 (%), the paper's on real BP4D with "
             f"all labels (its probe input not given):", "",
             "| pre-training losses | probe on o_g (`probe_input=global`) | probe on o_g, o_1..o_K "
             "(`probe_input=global+au`) | paper (BP4D) |", "|---|---:|---:|---:|"]
    for method, paper in report["paper_bp4d"].items():
        lines.append(f"| `{method}` | {_f1(scores.get((method, 'global'), []))} | "
                     f"{_f1(scores.get((method, 'global+au'), []))} | {paper:.1f} |")
    lines.append(f"| all-positive baseline | {_f1(list(baseline.values()))} | {_f1(list(baseline.values()))} | |")
    return "\n".join(lines) + "\n"


def rrl_final_norm_block() -> str:
    """benchmarks/rrl_probe_input.py --final-norm: o_g's values with and without the final norm."""
    path = RESULTS / "cpu-rrl-final-norm.json"
    report = load(path)
    lines = [f"Measured on {machine_text(machine(report))} (`{path.relative_to(ROOT)}`), a batch of "
             f"{report['batch']} ({report['input']}):", "",
             "| preset | encoder | final norm | o_g with it: min, max, std | without: min, max, std | "
             "largest difference | cosine |", "|---|---|---|---|---|---:|---:|"]
    for preset, row in report["encoders"].items():
        ranges = [f"{row[key]['min']:.2f}, {row[key]['max']:.2f}, {row[key]['std']:.2f}"
                  for key in ("with_final_norm", "without_final_norm")]
        norm = "none" if row["final_norm"] == "NoneType" else row["final_norm"]
        lines.append(f"| {preset} | {row['encoder']} at {row['image_size']} px | {norm} | {ranges[0]} | {ranges[1]} | "
                     f"{row['max_abs_difference']:.3f} | {row['cosine_with_without']:.4f} |")
    return "\n".join(lines) + "\n"


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def ks_gate_block() -> str:
    """benchmarks/ks_gate.py: what KS's gate rejects per epoch, and the pseudo-label accuracy on the
    hidden labels with the gate and with it forced open (naive pseudo-labelling)."""
    path = RESULTS / "cpu-ks-gate.json"
    report = load(path)
    gated, naive = report["runs"]["gated"], report["runs"]["naive"]
    naive_epochs = {row["epoch"]: row for row in naive["epochs"]}
    lines = [f"Measured on {machine_text(machine(report))} (`{path.relative_to(ROOT)}`): `ks` "
             f"{report['preset']} on {report['data']}, fold {report['fold']}, label ratio "
             f"{report['label_ratio']:g}, trained with the gate and with it forced open (naive "
             f"pseudo-labelling; g still trained). Pseudo-label accuracy (%) is over the AUs of the "
             f"unlabeled frames, against the labels the protocol hides; the gate acts from epoch "
             f"{min(row['epoch'] for row in gated['epochs'] if row['gate_active'])}.", "",
             "| epoch | clips rejected | g right (train) | accuracy: all | kept | rejected | "
             "naive | positive pseudo-labels | (student, AU) pairs with one pseudo-label all epoch |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in gated["epochs"]:
        rejected = _percent(row["rejected_share"]) if row["gate_active"] else "(off)"
        lines.append(f"| {row['epoch']} | {rejected} | {_percent(row['g_train_accuracy'])} | "
                     f"{_percent(row['pseudo_label_accuracy_all'])} | {_percent(row['pseudo_label_accuracy_kept'])} | "
                     f"{_percent(row['pseudo_label_accuracy_rejected'])} | "
                     f"{_percent(naive_epochs[row['epoch']]['pseudo_label_accuracy_all'])} | "
                     f"{_percent(row['pseudo_label_positive_share'])} | "
                     f"{_percent(row['constant_pseudo_label_share'])} |")
    pooled_gated, pooled_naive = gated["from_gate_epoch"], naive["from_gate_epoch"]
    test = gated["g_on_test_clips"]
    students = test["students"]
    lines += ["", f"- From the gate epoch on, the gate rejected {_percent(pooled_gated['rejected_share'])}% of "
                  f"the clips. The pseudo-labels it kept were right "
                  f"{_percent(pooled_gated['pseudo_label_accuracy_kept'])}% "
                  f"of the time, those it rejected {_percent(pooled_gated['pseudo_label_accuracy_rejected'])}%; naive "
                  f"pseudo-labelling's {_percent(pooled_naive['pseudo_label_accuracy_all'])}% (the paper: "
                  f"{report['paper']['ppl']:.2f}% with the gate against {report['paper']['naive']:.2f}% naive).",
              f"- Test mean F1: {100 * gated['mean_f1']:.1f} with the gate, {100 * naive['mean_f1']:.1f} naive.",
              f"- g of the gated run on the {test['clips']} test clips against a shuffled copy: moving faces ROC AUC "
              f"{test['moving']['auc']:.3f} (accuracy {_percent(test['moving']['accuracy'])}%); static clips (the "
              f"middle frame repeated) accuracy {_percent(test['static']['accuracy'])}%, "
              f"{_percent(test['static']['real_called_real'])}% of them called real.",
              f"- The students on the real test clips, positions 0-{len(students) - 1}: AUs given one sign on every "
              f"clip " + ", ".join(f"{_percent(student['constant_au_share'])}%" for student in students)
              + "; mean |logit| " + ", ".join(f"{student['mean_abs_logit']:.1f}" for student in students)
              + "; the logit's std over the clips " + ", ".join(f"{student['logit_std_over_clips']:.1f}"
                                                                 for student in students) + "."]
    return "\n".join(lines) + "\n"


# Rows of result files made before results recorded their test inputs, with what they read at
# test time beyond the image (aubench.models.maefau: the teacher and the reconstruction baseline
# are told which patches are occluded, MAEFAU.test_inputs).
PRIVILEGED_ROWS = {"maefau-teacher": "which patches are occluded", "maefau-recon": "which patches are occluded"}


def occlusion_maefau_block() -> str:
    """The MAE-FAU occlusion sweep (benchmarks/results/cpu-occlusion-maefau.json, a leaderboard's
    JSON rows): mean F1 over the folds per row and test condition, rows that read which patches
    are occluded marked under an occluded condition."""
    from aubench.leaderboard import PRIVILEGED_MARK

    path = RESULTS / "cpu-occlusion-maefau.json"
    rows = load(path)
    names = {"megraphau": "ME-GraphAU trained clean (`megraphau`)",
             "maefau-recon": "ME-GraphAU on reconstructed faces (`maefau-recon`)",
             "maefau-teacher": "teacher (`maefau-teacher`)", "maefau-student": "student (`maefau-student`)",
             "all-positive": "all-positive baseline"}
    tests = ["none", "patches0.3", "patches0.5", "patches0.7", "block0.3"]
    heads = ["clean", "patches 30%", "patches 50%", "patches 70%", "block 30%"]
    cell = {(r["method"], r["occlusion_test"]): r for r in rows}
    lines = [f"Mean F1 (%) over folds {', '.join(map(str, rows[0]['folds']))}, mean ± std (`{path.relative_to(ROOT)}`, "
             f"{machine_text(machine(rows))}):",
             "", "| method | " + " | ".join(heads) + " | clean - patches 70% |", "|---|" + "---:|" * (len(tests) + 1)]
    marked = set()
    for method, name in names.items():
        cells = []
        for test in tests:
            row = cell[(method, test)]
            reads = row.get("reads_at_test") or (PRIVILEGED_ROWS.get(method, "") if test != "none" else "")
            marked.update([reads] if reads else [])
            cells.append(f"{row['mean_f1']['mean']:.1f} ± {row['mean_f1']['std']:.1f}"
                         + (f" {PRIVILEGED_MARK}" if reads else ""))
        drop = cell[(method, "none")]["mean_f1"]["mean"] - cell[(method, "patches0.7")]["mean_f1"]["mean"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {drop:.1f} |")
    if marked:
        lines += ["", f"{PRIVILEGED_MARK} read at test time what a deployed detector would not have: "
                  + "; ".join(sorted(marked)) + "."]
    return "\n".join(lines) + "\n"


def machines_block() -> str:
    lines = ["| file | machine |", "|---|---|"]
    for path in sorted(RESULTS.glob("*.json")):
        if path.name == "latest.json":
            continue
        lines.append(f"| `{path.relative_to(ROOT)}` | {machine_text(machine(load(path)))} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ presets and sizes, from the code


def presets_block(method: str) -> str:
    """A method's presets as aubench.models defines them: per preset, each stage's epochs, batch,
    optimiser, learning rate and image size (`aubench methods` prints the same with sources)."""
    from aubench.models import method_class

    cls = method_class(method)
    lines = [f"`{method}`'s presets, as the code defines them (`aubench methods` adds each one's source):", "",
             "| preset | stage | epochs | batch | optimiser, lr | image size | training occlusion |",
             "|---|---|---:|---:|---|---:|---|"]
    for name, preset in sorted(cls.presets.items()):
        for stage in cls.stages(preset):
            p = stage.preset
            lines.append(f"| `{name}` | {stage.name} | {p.epochs} | {p.batch_size} | {p.optimizer} {p.lr:g} | "
                         f"{p.image_size} px | {preset.train_occlusion if stage.occluded else 'none (clean stage)'} |")
    return "\n".join(lines) + "\n"


def params_block(method: str) -> str:
    """The `paper` network's parameters, counted now on the current code (the class's own
    network, 12 AUs as BP4D), beside what cpu-models.json recorded for it."""
    from aubench.models import create_method

    model = create_method(method, 12, "paper")
    counted = sum(p.numel() for p in model.parameters()) / 1e6
    path = RESULTS / "cpu-models.json"
    recorded = [b["extra_info"]["params_m"] for b in load(path)["benchmarks"]
                if b["extra_info"].get("impl") == "aubench" and b["group"].split()[1].removesuffix("-paper") == method]
    line = f"`{method}` at `paper` (12 AUs): {counted:.2f} M parameters, counted by `make docs` on the current code"
    if recorded:
        line += f"; `{path.relative_to(ROOT)}` recorded {recorded[0]:.2f} M"
    return line + ".\n"


# ------------------------------------------------------------------ protocols


def label_ratio_sweep_block() -> str:
    """benchmarks/label_ratio_sweep.py: KS and ResNet mean F1 per label ratio, over the folds."""
    path = RESULTS / "cpu-label-ratio-sweep.json"
    rows = load(path)
    cell = {(r["method"], r["label_ratio"]): r["mean_f1"] for r in rows if r["kind"] == "ours"}
    baseline = next(r["mean_f1"] for r in rows if r["kind"] == "baseline")
    ratios = sorted({ratio for _, ratio in cell})
    full = {method: cell[(method, 1.0)]["mean"] for method in ("ks", "resnet")}
    folds = ", ".join(map(str, rows[0]["folds"]))
    lines = [f"Mean F1 (%) over folds {folds}, mean ± std (`{path.relative_to(ROOT)}`, {machine_text(machine(rows))}):",
             "", "| label ratio | KS | ResNet | all-positive | KS - ResNet | KS - KS at 1.0 | ResNet - ResNet at 1.0 |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for ratio in ratios:
        ks, resnet = cell[("ks", ratio)], cell[("resnet", ratio)]
        lines.append(f"| {ratio:g} | {ks['mean']:.1f} ± {ks['std']:.1f} | {resnet['mean']:.1f} ± {resnet['std']:.1f} | "
                     f"{baseline['mean']:.1f} ± {baseline['std']:.1f} | {ks['mean'] - resnet['mean']:+.1f} | "
                     f"{ks['mean'] - full['ks']:+.1f} | {resnet['mean'] - full['resnet']:+.1f} |")
    return "\n".join(lines) + "\n"


def _mean_std(value: dict) -> str:
    return f"{value['mean']:.1f}" + (f" ± {value['std']:.1f}" if value.get("std") is not None else "")


OCCLUSION_TESTS = {"none": "clean", "patches0.3": "patches 30%", "patches0.5": "patches 50%",
                   "patches0.7": "patches 70%", "block0.3": "block 30%"}


def occlusion_megraphau_block() -> str:
    """ME-GraphAU trained clean and with 50% patches, each tested under five conditions
    (cpu-occlusion-megraphau.json), and the clean-trained settings' later run in
    cpu-occlusion-maefau.json beside it."""
    path, later_path = RESULTS / "cpu-occlusion-megraphau.json", RESULTS / "cpu-occlusion-maefau.json"
    rows = [r for r in load(path) if r["kind"] != "reported"]
    cell = {(r["method"], r.get("occlusion_train"), r["occlusion_test"]): r["mean_f1"] for r in rows}
    later = {r["occlusion_test"]: r["mean_f1"] for r in load(later_path) if r["method"] == "megraphau"}
    lines = [f"Mean F1 (%) over folds {', '.join(map(str, rows[0]['folds']))}, mean ± std "
             f"(`{path.relative_to(ROOT)}`, {machine_text(machine(rows))}):", "",
             "| trained on | " + " | ".join(OCCLUSION_TESTS.values()) + " |", "|---|" + "---:|" * len(OCCLUSION_TESTS)]
    for train, name in (("none", "clean images"), ("patches0.5", "50% random patches")):
        cells = [_mean_std(cell[("megraphau", train, test)]) for test in OCCLUSION_TESTS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| all-positive baseline | " + " | ".join(_mean_std(cell[("all-positive", "none", test)])
                                                      for test in OCCLUSION_TESTS) + " |")
    lines.append(f"| clean images, the later run (`{later_path.relative_to(ROOT)}`) | "
                 + " | ".join(_mean_std(later[test]) for test in OCCLUSION_TESTS) + " |")
    clean, patched = (lambda test: cell[("megraphau", "none", test)]["mean"]), \
        (lambda test: cell[("megraphau", "patches0.5", test)]["mean"])
    gaps = [abs(cell[("megraphau", "none", test)]["mean"] - later[test]["mean"]) for test in OCCLUSION_TESTS]
    lines += ["", f"- Trained clean, it loses {clean('none') - clean('patches0.5'):.1f} points at 50% patches and "
                  f"{clean('none') - clean('patches0.7'):.1f} at 70%; trained under 50% patches it goes from "
                  f"{patched('none'):.1f} (clean) to {patched('patches0.7'):.1f} (70%), "
                  f"{clean('none') - patched('none'):.1f} points below the clean-trained model on clean faces.",
              f"- The last row is the same clean-trained settings run again later, for the MAE-FAU sweep, on the "
              f"demo's data as the converter writes it now: the two runs differ by {min(gaps):.1f} to "
              f"{max(gaps):.1f} points per condition, the run-to-run spread of these figures."]
    return "\n".join(lines) + "\n"


def maefau_alignment_block() -> str:
    """The MAE-FAU student's alignment: learned patch merging (the default) against average pooling,
    the teacher beside (cpu-maefau-alignment.json)."""
    path = RESULTS / "cpu-maefau-alignment.json"
    rows = load(path)
    cell = {}
    for r in rows:
        align = re.search(r"align_downsample=(\w+)", r["setting"])
        cell[(r["method"], align.group(1) if align else None, r["occlusion_test"])] = r["mean_f1"]
    tests = ("none", "patches0.5")
    lines = [f"Mean F1 (%) over folds {', '.join(map(str, rows[0]['folds']))}, mean ± std, demo settings "
             f"(`{path.relative_to(ROOT)}`, {machine_text(machine(rows))}):", "",
             "| alignment | student: " + " | student: ".join(OCCLUSION_TESTS[t] for t in tests)
             + " | teacher: " + " | teacher: ".join(OCCLUSION_TESTS[t] for t in tests) + " |", "|---|" + "---:|" * 4]
    for align, name in (("merge", "learned patch merging (`align_downsample=merge`, the default)"),
                        ("avg", "average pooling (`align_downsample=avg`)")):
        cells = [_mean_std(cell[(method, align, test)]) for method in ("maefau-student", "maefau-teacher")
                 for test in tests]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| all-positive baseline | " + " | ".join(_mean_std(cell[("all-positive", None, test)])
                                                      for _ in range(2) for test in tests) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ methods


def rrl_ablation_block() -> str:
    """RRL's Tables 3 and 4 on 3 folds, an earlier release (cpu-rrl-ablation.json)."""
    path = RESULTS / "cpu-rrl-ablation.json"
    report = load(path)
    per_fold, table3, table4 = report["mean_f1_per_fold"], report["paper_table3_bp4d"], report["paper_table4_bp4d"]
    rows = [("global (`rrl:global`)", "rrl:global", "o_g", table3["global"]),
            ("global + local (`rrl:global+local`)", "rrl:global+local", "o_g, o_1..o_K", table3["global+local"]),
            ("global + relation (`rrl:global+relation`)", "rrl:global+relation", "o_g, o_1..o_K",
             table3["global+relation"]),
            ("all three (`rrl`)", "rrl", "o_g, o_1..o_K", table3["all"]),
            ("all three, plan detached (`rrl:detached-plan`)", "rrl:detached-plan", "o_g, o_1..o_K", None),
            ("all three, no augmentation (`rrl:no-augment`)", "rrl:no-augment", "o_g, o_1..o_K",
             table4["swin-t, no augmentation"]),
            ("all three (control)", "rrl [probe_features=global]", "o_g", None),
            ("all-positive baseline", "all-positive", "", None)]
    folds = sorted(per_fold["rrl"], key=int)
    lines = [f"`{path.relative_to(ROOT)}` ({machine_text(machine(report))}, {report['device']}); mean F1 (%):", "",
             "| pre-training losses | probe reads | " + " | ".join(f"fold {f}" for f in folds)
             + " | mean ± std | paper (BP4D) |", "|---|---|" + "---:|" * (len(folds) + 2)]
    for name, key, reads, paper in rows:
        values = [per_fold[key][f] for f in folds]
        spread = f"{statistics.mean(values):.1f} ± {statistics.pstdev(values):.1f}"  # the leaderboard's std
        lines.append(f"| {name} | {reads} | " + " | ".join(f"{v:.1f}" for v in values) + f" | {spread} | "
                     + (f"{paper:.1f}" if paper is not None else ("" if key == "all-positive" else "-")) + " |")
    return "\n".join(lines) + "\n"


def gpu_check_block() -> str:
    """benchmarks/gpu_check.sh's reports (gpu-*.json): per file the device, the ops against their
    references, every method's paper preset (frames/s, peak memory), the torchrun step and resnet
    on the GPU beside the CPU; a sentence saying so when there is none."""
    paths = sorted(RESULTS.glob("gpu-*.json"))
    if not paths:
        return ("No GPU has run the check yet: `benchmarks/results` holds no `gpu-*.json`; the figures in these "
                "pages are CPU figures.\n")
    lines = []
    for path in paths:
        report = load(path)
        if report.get("dry_run"):
            lines += [f"`{_shown(path)}`: a dry run (every step on the CPU at tiny sizes), not a GPU "
                      f"measurement.", ""]
            continue
        steps = report.get("steps", {})
        lines += [f"`{_shown(path)}`: {report.get('device')}, CUDA kernels "
                  f"{'built' if report.get('cuda_kernels') else 'missing'}, {machine_text(machine(report))}, "
                  f"{report.get('created', '')}:", ""]
        failed = [name for name, step in steps.items() if "error" in step]
        if failed:
            lines += ["Failed steps: " + "; ".join(f"{name} ({steps[name]['error']})" for name in failed) + ".", ""]
        ops = steps.get("ops", {}).get("result", {})
        if ops:
            lines += ["| op | speed-up of aubench over | GB/s |", "|---|---|---|"]
            for case, figures in ops.items():
                ratios = ", ".join(f"{k} {v:.2f}x" for k, v in figures["speedup"].items())
                rates = ", ".join(f"{k} {v:.3g}" for k, v in figures.get("gb_per_s", {}).items())
                lines.append(f"| {case} | {ratios} | {rates or '-'} |")
            lines.append("")
        methods = steps.get("methods", {}).get("result", {})
        if methods:
            lines += ["| method | preset, precision, batch | infer frames/s | train frames/s | peak memory (GiB) |",
                      "|---|---|---:|---:|---:|"]
            for name, record in methods.items():
                if "error" in record:
                    lines.append(f"| {name} | {record['error']} | | | |")
                    continue
                train = record.get("train_frames_per_s")
                memory = record.get("peak_memory_gib")
                lines.append(f"| {name} | {record['preset']}, {record['precision']}, {record['batch_size']} | "
                             f"{record['infer_frames_per_s']:.0f} | {'-' if train is None else f'{train:.0f}'} | "
                             f"{'-' if memory is None else f'{memory:.1f}'} |")
            lines.append("")
        torchrun = steps.get("torchrun", {}).get("result")
        if torchrun:
            lines.append(f"- torchrun step: exit status {torchrun['returncode']}"
                         + (f", world size {torchrun['world_size']}, mean F1 {100 * torchrun['mean_f1']:.1f}"
                            if "world_size" in torchrun else "") + ".")
        resnet = steps.get("resnet", {}).get("result")
        if resnet:
            lines.append("- `resnet` tiny on the demo's data, fold 1: " + "; ".join(
                f"{where}: mean F1 {100 * r['mean_f1']:.1f} in {r['seconds']:.0f} s" for where, r in resnet.items())
                + ".")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def rrl_occluded_landmarks_block() -> str:
    """benchmarks/rrl_occluded_landmarks.py: RRL under occlusion with the landmarks of the clean
    frame (privileged) against landmarks detected on the occluded image (cpu-rrl-occluded-landmarks.json)."""
    from aubench.leaderboard import PRIVILEGED_MARK

    path = RESULTS / "cpu-rrl-occluded-landmarks.json"
    report = load(path)
    lines = [f"`{path.relative_to(ROOT)}` ({machine_text(machine(report))}): `rrl` tiny on the demo's data, "
             f"fold{'s' if len(report['folds']) > 1 else ''} {', '.join(map(str, report['folds']))}, label ratio "
             f"{report['label_ratio']:g}; mean F1 (%):", "",
             "| `--occluded-landmarks` | test | mean F1 | all-positive | landmarks read at test |",
             "|---|---|---:|---:|---|"]
    for row in report["rows"]:
        mark = f" {PRIVILEGED_MARK}" if row["privileged_test_inputs"] else ""
        lines.append(f"| {row['occluded_landmarks']} | {OCCLUSION_TESTS.get(row['test'], row['test'])} | "
                     f"{100 * row['mean_f1']:.1f}{mark} | {100 * row['all_positive_mean_f1']:.1f} | "
                     f"{row['test_inputs']['landmarks']} |")
    return "\n".join(lines) + "\n"


def rrl_paper_block() -> str:
    """RRL at `paper`: the probed network's size and speed, one pre-training step's time split
    (benchmarks/rrl_step_split.py), and the Sinkhorn share at `tiny` (cpu-rrl-paper.json)."""
    path = RESULTS / "cpu-rrl-paper.json"
    report = load(path)
    bench, split = report["bench"][0], report["pretraining_step_split"]
    paper, tiny = split["paper"], split["tiny"]
    return (f"`{path.relative_to(ROOT)}` ({machine_text(machine(report))}, {bench['device']}, {bench['precision']}, "
            f"{bench['image_size']} px): the probed network (frozen {paper['encoder']}, local network, BatchNorm + "
            f"Linear) has {bench['params_m']:.2f} M parameters and {bench['gflops_per_frame']:.2f} GFLOPs per frame, "
            f"and infers {bench['infer_frames_per_s']:.1f} frames/s. One pre-training step at batch "
            f"{paper['batch_size']} takes {paper['step_s']:.2f} s: the encoder {100 * paper['share']['encoder']:.1f}% "
            f"(the online network forward and backward on both views, the target forward on both), the two batched "
            f"Sinkhorn calls of the relation loss {100 * paper['share']['sinkhorn']:.1f}% "
            f"({1e3 * paper['sinkhorn_s']:.0f} ms forward and backward), the AU attention maps "
            f"{100 * paper['share']['maps']:.1f}% and the rest {100 * paper['share']['rest']:.1f}%. At `tiny` (batch "
            f"{tiny['batch_size']}, {1e3 * tiny['step_s']:.0f} ms a step) the Sinkhorn share is "
            f"{100 * tiny['share']['sinkhorn']:.1f}%.\n")


def _runs_mean(folds: dict) -> float:
    return statistics.mean(folds.values())


def vivit_synthetic_block() -> str:
    """vivit and regnet-tf (tiny) with the paper's post-processing on two synthetic sets
    (cpu-vivit-synthetic.json)."""
    path = RESULTS / "cpu-vivit-synthetic.json"
    report = load(path)
    columns = [("vivit", "vivit {p}"), ("vivit smoothed", "vivit {p}+smooth-gaussian-k51-s3"),
               ("regnet-tf", "regnet-tf {p}"), ("ensemble", "vivit+regnet-tf {p}"),
               ("ensemble smoothed", "vivit+regnet-tf {p}+smooth-gaussian-k51-s3")]
    sets = [("synthetic_bp4d", "synthetic BP4D (the demo's data), folds 1-3, label ratio 0.2", "sparse0.2"),
            ("synthetic_affwild2", "synthetic Aff-Wild2, official split, all labels", "full")]
    lines = [f"`{path.relative_to(ROOT)}` ({machine_text(machine(report))}, {report['device']}), mean F1 (%):", "",
             "| data | " + " | ".join(name for name, _ in columns) + " | all-positive |",
             "|---|" + "---:|" * (len(columns) + 1)]
    for key, name, protocol in sets:
        scores = report[key]["mean_f1"]
        lines.append(f"| {name} | " + " | ".join(f"{_runs_mean(scores[column.format(p=protocol)]):.1f}"
                                                for _, column in columns)
                     + f" | {_runs_mean(scores['all-positive']):.1f} |")
    scores = report["synthetic_bp4d"]["mean_f1"]
    per_fold = "; ".join(f"fold {fold.removeprefix('fold')}: " + " / ".join(
        f"{scores[column.format(p='sparse0.2')][fold]:.1f}" for _, column in columns[:4])
        for fold in scores["all-positive"])
    lines += ["", f"Per fold on the BP4D data, vivit / smoothed / regnet-tf / ensemble: {per_fold}."]
    return "\n".join(lines) + "\n"


def vivit_paper_block() -> str:
    """vivit and regnet-tf at `paper` on one window: size, FLOPs, speed, the RegNet's share, and the
    training throughput of `aubench bench` (cpu-vivit-paper.json)."""
    path = RESULTS / "cpu-vivit-paper.json"
    report = load(path)
    bench = {r["method"]: r for r in report["aubench_bench"]["records"]}
    first = report["records"][0]
    lines = [f"`{path.relative_to(ROOT)}` ({machine_text(machine(report))}, {report['device']}): one "
             f"{first['frames_per_window']}-frame window at {first['image_size']} px (benchmarks/vivit_regnet_share.py "
             f"--preset paper); the train column and the batch-2 inference beside it are "
             f"`{report['aubench_bench']['how']}`:", "",
             "| model | params (M) | RegNet share | GFLOPs/frame | RegNet share | frames/s (CPU) | RegNet share of time "
             "| batch-2 frames/s | train frames/s (CPU) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["records"]:
        b = bench[r["method"]]
        lines.append(f"| {r['method']} | {r['params_m']:.2f} | {100 * r['regnet_share_params']:.0f}% | "
                     f"{r['gflops_per_frame']:.3f} | {100 * r['regnet_share_flops']:.0f}% | "
                     f"{r['infer_frames_per_s']:.1f} | {100 * r['regnet_share_time']:.0f}% | "
                     f"{b['infer_frames_per_s']:.1f} | {b['train_frames_per_s']:.1f} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ benchmarks beside the ops


def face_detect_block() -> str:
    """benchmarks/bench_face_detect.py: dlib's detector per frame size, shrunk to 640 px and at full
    resolution, and a conversion with and without detection (cpu-face-detect.json)."""
    path = RESULTS / "cpu-face-detect.json"
    report = load(path)
    detect, convert = {}, {}
    for bench in report["benchmarks"]:
        kind, size = re.match(r"test_(\w+)\[(\w+)", bench["name"]).group(1), bench["name"].split("-", 1)[-1].rstrip("]")
        if kind == "detect":
            detect.setdefault(size, {})[bench["name"].split("[")[1].split("-")[0]] = bench
        else:
            convert[bench["extra_info"]["impl"]] = bench
    first = report["benchmarks"][0]
    lines = [f"`{path.relative_to(ROOT)}` ({machine_text(machine(report))}), one process, rendered synthetic faces, "
             f"{first['extra_info']['frames']} frames per round, mean of {first['stats']['rounds']} rounds:", "",
             "| frame size | detector input | ms / frame | frames / s | speed-up |", "|---|---|---:|---:|---:|"]
    for size, runs in detect.items():
        full_s = runs["full"]["stats"]["mean"] / runs["full"]["extra_info"]["frames"]
        for which in ("default", "full"):
            bench = runs[which]
            seconds = bench["stats"]["mean"] / bench["extra_info"]["frames"]
            found = f", face found in {bench['extra_info']['found']} of {bench['extra_info']['frames']}"
            lines.append(f"| {size} | {bench['extra_info']['impl']}{' (default)' if which == 'default' else ''}{found} | "
                         f"{1e3 * seconds:.1f} | {1 / seconds:.1f} | {full_s / seconds:.2f}x |")
    none, with_detect = convert["--landmarks none"], convert["--landmarks detect"]
    lines += ["", f"Converting {none['group'].split()[1]} synthetic {none['group'].split()[3]} frames to "
                  f"{none['group'].split()[-1]} px crops (one process): {1e3 * none['stats']['mean']:.0f} ms with "
                  f"`--landmarks none`, {1e3 * with_detect['stats']['mean']:,.0f} ms with `--landmarks detect` "
                  f"({with_detect['stats']['mean'] / none['stats']['mean']:.1f}x; median "
                  f"{with_detect['stats']['median'] / none['stats']['median']:.1f}x)."]
    return "\n".join(lines) + "\n"


def loader_block() -> str:
    """docs/loader_table.py's tables of docs/loader.md: the JPEG decoders, the loader's frames/s and
    the CPU cores per GPU (cpu-loader.json, gpu-*.json)."""
    sys.path.insert(0, str(DOCS))
    from loader_table import loader_block as loader_tables

    return loader_tables()


def mae_encoder_gather_block() -> str:
    """The MAE encoder's masked path, aubench's gather_tokens against MAE's torch.gather, forward and
    backward in the same run (cpu-mae-encoder-gather.json)."""
    path = RESULTS / "cpu-mae-encoder-gather.json"
    report = load(path)
    groups: dict[str, dict] = {}
    for bench in report["benchmarks"]:
        groups.setdefault(bench["group"], {})[bench["extra_info"]["impl"]] = bench["stats"]["median"]
    ratios = "; ".join(f"{group}: {times['torch.gather'] / times['aubench']:.2f}x"
                       for group, times in sorted(groups.items()))
    return (f"`{path.relative_to(ROOT)}` ({machine_text(machine(report))}), speed-up of `gather_tokens` over "
            f"`torch.gather` on an expanded index, median times: {ratios}.\n")


# ------------------------------------------------------------------ validation


def validation_selection_block() -> str:
    """benchmarks/validation_selection.py: the test mean F1 of the epoch each selection picks."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from validation_selection import markdown_table, summary

    path = RESULTS / "cpu-validation-selection.json"
    report = load(path)
    runs = report["runs"]
    epochs = sorted({r["epochs"] for r in runs})
    lines = [f"Test mean F1 (points) of the epoch each selection picks (of {', '.join(map(str, epochs))}; the epoch in "
             f"brackets), `{path.relative_to(ROOT)}`, {machine_text(machine(report))}:", "", markdown_table(runs), ""]
    for method, record in summary(runs).items():
        means = record["test_mean_f1"]
        lines.append(f"- {method}: best-test over best-val {record['mean_optimism_over_best_val']:+.1f} points on average "
                     f"(at most {max(record['optimism_over_best_val']):+.1f} on one fold), over the last epoch "
                     f"{record['mean_optimism_over_last']:+.1f}; best-val over the last epoch "
                     f"{means['best-val'] - means['last']:+.1f}.")
    subjects = sorted({len(r["validation_subjects"]) for r in runs})
    frames = sorted({r["validation_labeled_frames"] for r in runs})
    lines.append(f"- The validation splits held {subjects[0]}-{subjects[-1]} subjects, {frames[0]}-{frames[-1]} labeled "
                 f"frames at ratio {report['protocol']['label_ratio']:g}.")
    return "\n".join(lines) + "\n"


def _tiny_setting(method: str, setting: str):
    """A model setting as the method's tiny preset resolves it (the code's default)."""
    from aubench.models import create_method

    model = create_method(method, 12, "tiny")
    return (getattr(model, "settings", None) or model.cfg)[setting]


def validation_defaults_block() -> str:
    """benchmarks/validation_defaults.py: each re-checked default against its alternative, the
    validation mean F1 per fold and on average, the default read from the code."""
    path = RESULTS / "cpu-validation-defaults.json"
    report = load(path)
    scores: dict[tuple[str, str], dict] = {}
    for run in report["runs"]:
        scores.setdefault((run["method"], run["setting"]), {}).setdefault(str(run["value"]), {})[run["fold"]] = \
            run["validation_mean_f1"]
    lines = [f"Validation mean F1 (points; `{path.relative_to(ROOT)}`, {machine_text(machine(report))}); the default "
             f"is the tiny preset's value in the code today:", "",
             "| method | setting | default | fold 1 / 2 / 3 | mean | alternative | fold 1 / 2 / 3 | mean "
             "| validation prefers |",
             "|:---|:---|:---|:---|---:|:---|:---|---:|:---|"]
    for (method, setting), values in scores.items():
        default = str(_tiny_setting(method, setting))
        others = [value for value in values if value != default]
        cells = []
        for value in [default] + others:
            folds = values.get(value, {})
            cells += [f"`{value}`", " / ".join(f"{folds[f]:.1f}" for f in sorted(folds)),
                      f"{statistics.mean(folds.values()):.1f}" if folds else "-"]
        best = max(values, key=lambda value: statistics.mean(values[value].values()))
        preferred = "the default" if best == default else f"`{best}`"
        lines.append(f"| {method} | `{setting}` | " + " | ".join(cells) + f" | {preferred} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ figures


# The plots of the docs drawn from committed JSON, by the leaderboard's own plotting
# (aubench.leaderboard.plot on the file's rows): name in docs/ -> (results file, the plot's suffix).
FIGURES = {"label_ratio_sweep.png": ("cpu-label-ratio-sweep.json", "_label_ratio"),
           "occlusion_megraphau.png": ("cpu-occlusion-megraphau.json", "_occlusion"),
           "occlusion_maefau.png": ("cpu-occlusion-maefau.json", "_occlusion")}
# Pictures of a run rather than of committed JSON: where each comes from. They are not compared.
OTHER_FIGURES = {"training_curves.png": "docs/make_curves.py: `aubench plot` on a short run made on the spot "
                                        "(`make docs` runs it)",
                 "predict_demo.png": "`aubench demo`'s last step: `aubench predict` on a real video "
                                     "(demo_run/predict/), copied here"}


def draw_figure(name: str, folder: Path) -> Path:
    """FIGURES[name] drawn into `folder` from its JSON; the path of the image."""
    from aubench.leaderboard import plot

    source, suffix = FIGURES[name]
    # rows of files made before results recorded their occlusion conditions or settings
    rows = [{"setting": "", "occlusion_train": "none", "occlusion_test": "none", **row}
            for row in load(RESULTS / source)]
    return next(path for path in plot(rows, folder / "f1.png") if path.stem.endswith(suffix))


def same_picture(a: Path, b: Path) -> bool:
    """Whether two images hold the same pixels (their files' metadata aside)."""
    import matplotlib.image
    import numpy as np

    first, second = matplotlib.image.imread(a), matplotlib.image.imread(b)
    return first.shape == second.shape and bool(np.array_equal(first, second))


def draw_run_pictures() -> None:
    """Redraw the OTHER_FIGURES that a script here draws: docs/make_curves.py's training curves."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_curves", DOCS / "make_curves.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main()


def stale_figures(write: bool) -> list[str]:
    """The FIGURES whose committed image differs from what its JSON draws; with `write` each such
    image is replaced."""
    import shutil
    import tempfile

    stale = []
    with tempfile.TemporaryDirectory() as folder:
        for name in FIGURES:
            drawn, committed = draw_figure(name, Path(folder) / name.removesuffix(".png")), DOCS / name
            if not committed.exists() or not same_picture(drawn, committed):
                stale.append(f"docs/{name} (figure)")
                if write:
                    shutil.copyfile(drawn, committed)
                    print(f"redrew docs/{name}")
    return stale


BLOCKS = {"demo": demo_block, "ops": ops_block, "models": models_block, "bench-paper": bench_paper_block,
          "predict": predict_block, "face-detect": face_detect_block, "mae-encoder-gather": mae_encoder_gather_block,
          "loader": loader_block, "gpu-check": gpu_check_block,
          "presets": presets_block, "params": params_block, "label-ratio-sweep": label_ratio_sweep_block,
          "ks-gate": ks_gate_block, "occlusion-megraphau": occlusion_megraphau_block,
          "occlusion-maefau": occlusion_maefau_block, "maefau-alignment": maefau_alignment_block,
          "rrl-probe-input": rrl_probe_input_block, "rrl-ablation": rrl_ablation_block,
          "rrl-final-norm": rrl_final_norm_block, "rrl-paper": rrl_paper_block,
          "rrl-occluded-landmarks": rrl_occluded_landmarks_block,
          "vivit-synthetic": vivit_synthetic_block, "vivit-paper": vivit_paper_block,
          "validation-selection": validation_selection_block, "validation-defaults": validation_defaults_block,
          "machines": machines_block}
# Blocks that take an argument (`<!-- make_docs: presets:ks -->`); the others take none.
BLOCKS_WITH_ARGUMENT = {"presets", "params"}


def pages() -> list[Path]:
    """The pages this script keeps: README.md and every Markdown page under docs/."""
    return [README] + sorted(DOCS.rglob("*.md"))


def render(text: str, page: Path = README) -> str:
    """`text` with every generated block rebuilt; SystemExit naming the page and an unknown block,
    or an argument missing or given where the block takes none."""
    def rebuild(match: re.Match) -> str:
        name, arg = match.group("name"), match.group("arg")
        if name not in BLOCKS:
            raise SystemExit(f"{page}: unknown generated block {name!r} (known: {', '.join(BLOCKS)})")
        if (arg is None) == (name in BLOCKS_WITH_ARGUMENT):
            raise SystemExit(f"{page}: generated block {name!r} "
                             + ("takes an argument (NAME:ARG)" if arg is None else f"takes no argument, got {arg!r}"))
        body = BLOCKS[name](arg) if name in BLOCKS_WITH_ARGUMENT else BLOCKS[name]()
        return match.group("open") + body + match.group("close")

    return BLOCK.sub(rebuild, text)


def block_label(match: re.Match) -> str:
    return match.group("name") + (f":{match.group('arg')}" if match.group("arg") else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="only compare; exit 1 when a page or a figure is out of date")
    parser.add_argument("pages", nargs="*", type=Path,
                        help="the Markdown pages to build or check (default: README.md and docs/**/*.md, "
                             "and the FIGURES)")
    args = parser.parse_args(argv)
    stale = [] if args.pages else stale_figures(write=not args.check)
    if not args.pages and not args.check:
        draw_run_pictures()
    for page in args.pages or pages():
        text = page.read_text(encoding="utf-8")
        built = render(text, page)
        if args.check:
            stale += [f"{_shown(page)} ({block_label(old)})"
                      for old, new in zip(BLOCK.finditer(text), BLOCK.finditer(built))
                      if old.group("body") != new.group("body")]
        elif built != text:
            page.write_text(built, encoding="utf-8")
            print(f"rewrote the generated blocks of {_shown(page)}")
    if args.check and stale:
        print(f"generated blocks and figures differ from their JSON: {', '.join(stale)}; run `make docs` "
              f"(python docs/make_docs.py)", file=sys.stderr)
        return 1
    return 0


def _shown(page: Path) -> str:
    """A page's path as the messages give it: relative to the repository where it lies inside."""
    try:
        return str(page.resolve().relative_to(ROOT))
    except ValueError:
        return str(page)


if __name__ == "__main__":
    sys.exit(main())
