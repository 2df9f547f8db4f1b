"""Build the figures of README.md from result JSON, so that no figure there is typed by hand.

    python docs/make_docs.py           rewrite the generated blocks of README.md (`make docs`)
    python docs/make_docs.py --check   exit 1, naming each block, when README.md differs from
                                       what the JSON gives (tests/test_docs.py runs this)

A generated block sits between `<!-- make_docs: NAME -->` and `<!-- /make_docs -->`; the text
between the two markers belongs to this script. Every block names the CPU (brand, the vector
kernels torch ran: AVX2 / AVX512, threads) and the torch version of the figures it shows, as the
JSON records them; older files that did not record the CPU say so.

Blocks:
- `demo`: the demo's reports (`aubench demo` writes OUT/demo_report.json; copies kept as
  benchmarks/results/demo-*.json), one column per machine: time per method, F1 per row.
- `ops`: the custom-op benchmarks (benchmarks/results/cpu-ops.json, pytest-benchmark) as
  speed-up ratios over their baselines, measured in the same run.
- `models`: every method's paper preset beside a ResNet-50 (benchmarks/results/cpu-models.json).
- `bench-paper`: `aubench bench --json` records of the paper presets
  (benchmarks/results/cpu-bench-*-paper.json).
- `predict`: `aubench predict` on a real video, per stage and end to end, beside the face detector
  alone (benchmarks/results/cpu-predict.json, benchmarks/bench_predict.py).
- `rrl-probe-input`: RRL's Table 3 variants under each probe input, beside the paper's means
  (benchmarks/results/cpu-rrl-probe-input.json, benchmarks/rrl_probe_input.py).
- `rrl-final-norm`: RRL's o_g with and without the backbone's final norm
  (benchmarks/results/cpu-rrl-final-norm.json, benchmarks/rrl_probe_input.py --final-norm).
- `ks-gate`: Knowledge-Spreader's perturbation-aware gate, per epoch, with it and forced open
  (benchmarks/results/cpu-ks-gate.json, benchmarks/ks_gate.py).
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
BLOCK = re.compile(r"(<!-- make_docs: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /make_docs -->)", re.S)
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


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def demo_reports() -> list[tuple[Path, dict]]:
    reports = [(path, load(path)) for path in sorted(RESULTS.glob("demo-*.json"))]
    if not reports:
        raise SystemExit(f"no demo reports (demo-*.json) in {RESULTS}")
    return reports


def demo_block() -> str:
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
                     f"{_duration(report['seconds']['total'])} | {report['seconds']['dataset']:.0f} | "
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
    return "\n".join(lines) + "\n"


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
    lines = [f"Mean F1 (%) over folds {', '.join(map(str, rows[0]['folds']))}, mean ± std (`{path.relative_to(ROOT)}`):",
             "", "| method | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(tests)]
    marked = set()
    for method, name in names.items():
        cells = []
        for test in tests:
            row = cell[(method, test)]
            reads = row.get("reads_at_test") or (PRIVILEGED_ROWS.get(method, "") if test != "none" else "")
            marked.update([reads] if reads else [])
            cells.append(f"{row['mean_f1']['mean']:.1f} ± {row['mean_f1']['std']:.1f}"
                         + (f" {PRIVILEGED_MARK}" if reads else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
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


BLOCKS = {"demo": demo_block, "ops": ops_block, "models": models_block, "bench-paper": bench_paper_block,
          "predict": predict_block, "rrl-probe-input": rrl_probe_input_block,
          "rrl-final-norm": rrl_final_norm_block, "ks-gate": ks_gate_block,
          "occlusion-maefau": occlusion_maefau_block, "machines": machines_block}


def render(text: str) -> str:
    """`text` with every generated block rebuilt; SystemExit naming an unknown block."""
    def rebuild(match: re.Match) -> str:
        name = match.group("name")
        if name not in BLOCKS:
            raise SystemExit(f"{README}: unknown generated block {name!r} (known: {', '.join(BLOCKS)})")
        return match.group(1) + BLOCKS[name]() + match.group(4)

    return BLOCK.sub(rebuild, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when README.md is out of date")
    args = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    built = render(text)
    if args.check:
        stale = [old.group("name") for old, new in zip(BLOCK.finditer(text), BLOCK.finditer(built))
                 if old.group("body") != new.group("body")]
        if stale:
            print(f"{README.name}: generated blocks differ from their JSON: {', '.join(stale)}; "
                  f"run `make docs` (python docs/make_docs.py)", file=sys.stderr)
            return 1
        return 0
    if built != text:
        README.write_text(built, encoding="utf-8")
        print(f"rewrote the generated blocks of {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
