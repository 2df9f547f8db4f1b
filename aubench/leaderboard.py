"""Leaderboard: result JSONs of `aubench evaluate` -> one table (Markdown, CSV, JSON) and plots.

Rows are methods (per dataset and protocol), columns per-AU F1 and mean F1 as mean +- std over
folds (in percent, like the papers), then params, FLOPs and throughput. Beside our rows: the
all-positive baseline of the same test splits, and numbers reported in the papers
(aubench.reported) for the same dataset and protocol, marked "reported". All three formats are
rendered from the same rows, so they agree.
"""
from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from aubench.errors import UserError
from aubench.reported import reported_for

RESULT_SCHEMA = "aubench-result-1"
FORMATS = ("md", "csv", "json")


def find_results(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every result JSON under the given run directories (or result files)."""
    results = []
    for path in map(Path, paths):
        if not path.exists():
            raise UserError(f"{path}: no such run directory or result file")
        files = [path] if path.is_file() else sorted(path.rglob("*.json"))
        for file in files:
            try:
                data = json.loads(file.read_text())
            except (OSError, json.JSONDecodeError) as err:
                if path.is_file():
                    raise UserError(f"{file}: not a result JSON ({err})") from None
                continue
            if isinstance(data, dict) and data.get("schema") == RESULT_SCHEMA:
                data["_file"] = str(file)
                results.append(data)
    if not results:
        raise UserError(f"no aubench result files under {', '.join(map(str, paths))} (run `aubench evaluate` first)")
    return results


def _stat(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=0)) if arr.size > 1 else 0.0}


def build_rows(results: list[dict[str, Any]], include_reported: bool = True) -> list[dict[str, Any]]:
    """Aggregated rows, grouped by (dataset, protocol); ours first (best mean F1 first)."""
    groups: dict[tuple[str, str], dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    au_sets: dict[str, list[str]] = {}
    for r in results:
        dataset = r["dataset"]
        if dataset in au_sets and au_sets[dataset] != r["au_names"]:
            raise UserError(f"AU set mismatch in {dataset} results: {r['_file']} has {r['au_names']}, "
                            f"others have {au_sets[dataset]}")
        au_sets[dataset] = r["au_names"]
        groups[(dataset, r["protocol"])][r["method"]].append(r)

    rows = []
    for (dataset, protocol), by_method in sorted(groups.items(), key=lambda kv: (kv[0][0], _ratio_key(kv[0][1]))):
        aus = au_sets[dataset]
        ours = []
        baseline_folds: dict[int, dict] = {}
        for method, runs in by_method.items():
            folds = sorted(r["fold"] for r in runs)
            if len(set(folds)) != len(folds):
                dup = [r["_file"] for r in runs]
                raise UserError(f"{method} {dataset} {protocol}: the same fold appears twice ({', '.join(dup)})")
            bench = runs[0].get("bench", {})
            ours.append({
                "kind": "ours", "method": method, "dataset": dataset, "protocol": protocol,
                "label_ratio": runs[0].get("label_ratio"), "folds": folds,
                "f1": {au: _stat([100 * r["metrics"]["f1"][au] for r in runs]) for au in aus},
                "mean_f1": _stat([100 * r["metrics"]["mean_f1"] for r in runs]),
                "params_m": bench.get("params_m"), "gflops_per_frame": bench.get("gflops_per_frame"),
                "infer_frames_per_s": bench.get("infer_frames_per_s"),
                "train_frames_per_s": bench.get("train_frames_per_s"), "source": "",
            })
            for r in runs:
                baseline_folds.setdefault(r["fold"], r["metrics"])
        ours.sort(key=lambda row: -row["mean_f1"]["mean"])
        rows += ours
        folds = sorted(baseline_folds)
        rows.append({
            "kind": "baseline", "method": "all-positive", "dataset": dataset, "protocol": protocol,
            "label_ratio": None, "folds": folds,
            "f1": {au: _stat([100 * baseline_folds[k]["all_positive_f1"][au] for k in folds]) for au in aus},
            "mean_f1": _stat([100 * baseline_folds[k]["all_positive_mean_f1"] for k in folds]),
            "params_m": None, "gflops_per_frame": None, "infer_frames_per_s": None, "train_frames_per_s": None,
            "source": "predicts every AU present",
        })
        if include_reported:
            for rep in reported_for(dataset, protocol):
                rows.append({
                    "kind": "reported", "method": rep["method"], "dataset": dataset, "protocol": protocol,
                    "label_ratio": None, "folds": [],
                    "f1": {au: ({"mean": rep["f1"][au], "std": None} if au in rep["f1"] else None) for au in aus},
                    "mean_f1": {"mean": rep["mean_f1"], "std": None},
                    "params_m": None, "gflops_per_frame": None, "infer_frames_per_s": None,
                    "train_frames_per_s": None, "source": rep["source"],
                })
    return rows


def _ratio_key(protocol: str) -> float:
    return 1.0 if protocol == "full" else float(protocol.removeprefix("sparse") or 0)


def _cell(stat: dict | None) -> str:
    if stat is None:
        return "-"
    if stat["std"] is None:
        return f"{stat['mean']:.1f}"
    return f"{stat['mean']:.1f} ± {stat['std']:.1f}"


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _aus(rows: list[dict], dataset: str) -> list[str]:
    return list(next(r for r in rows if r["dataset"] == dataset)["f1"])


def to_markdown(rows: list[dict]) -> str:
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        aus = _aus(rows, dataset)
        out.append(f"### {dataset}: F1 (%) per AU, mean ± std over folds\n")
        header = ["method", "protocol", "kind", "folds", *aus, "mean F1", "params (M)", "GFLOPs/frame",
                  "infer frames/s", "train frames/s"]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join([":---"] * 3 + ["---:"] * (len(header) - 3)) + "|")
        for r in rows:
            if r["dataset"] != dataset:
                continue
            method = r["method"] + (" (reported)" if r["kind"] == "reported" else "")
            cells = [method, r["protocol"], r["kind"], str(len(r["folds"])) if r["folds"] else "-",
                     *[_cell(r["f1"][au]) for au in aus], _cell(r["mean_f1"]), _num(r["params_m"], ".2f"),
                     _num(r["gflops_per_frame"], ".3f"), _num(r["infer_frames_per_s"], ".1f"),
                     _num(r["train_frames_per_s"], ".1f")]
            out.append("| " + " | ".join(cells) + " |")
        sources = sorted({r["source"] for r in rows if r["dataset"] == dataset and r["kind"] == "reported"})
        for s in sources:
            out.append(f"\nreported: {s}")
        out.append("")
    return "\n".join(out)


def to_csv(rows: list[dict]) -> str:
    all_aus = list(dict.fromkeys(au for r in rows for au in r["f1"]))
    fields = ["dataset", "protocol", "kind", "method", "folds",
              *[f"{au}_{s}" for au in all_aus for s in ("mean", "std")], "mean_f1_mean", "mean_f1_std",
              "params_m", "gflops_per_frame", "infer_frames_per_s", "train_frames_per_s", "source"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        line = {"dataset": r["dataset"], "protocol": r["protocol"], "kind": r["kind"], "method": r["method"],
                "folds": " ".join(map(str, r["folds"])), "mean_f1_mean": r["mean_f1"]["mean"],
                "mean_f1_std": r["mean_f1"]["std"], "source": r["source"]}
        for au in all_aus:
            stat = r["f1"].get(au)
            line[f"{au}_mean"] = None if stat is None else stat["mean"]
            line[f"{au}_std"] = None if stat is None else stat["std"]
        for key in ("params_m", "gflops_per_frame", "infer_frames_per_s", "train_frames_per_s"):
            line[key] = r[key]
        writer.writerow(line)
    return buf.getvalue()


def to_json(rows: list[dict]) -> str:
    return json.dumps(rows, indent=2)


def render(rows: list[dict], fmt: str) -> str:
    if fmt == "md":
        return to_markdown(rows)
    if fmt == "csv":
        return to_csv(rows)
    if fmt == "json":
        return to_json(rows)
    raise UserError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")


def plot(rows: list[dict], path: str | Path) -> list[Path]:
    """A bar chart of per-AU F1 (one per dataset and protocol) and, when several label ratios
    exist, F1 against label ratio. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    groups = list(dict.fromkeys((r["dataset"], r["protocol"]) for r in rows))
    fig, axes = plt.subplots(len(groups), 1, figsize=(max(8, 1.1 * len(rows[0]["f1"]) + 3), 3.6 * len(groups)),
                             squeeze=False)
    for ax, (dataset, protocol) in zip(axes[:, 0], groups):
        members = [r for r in rows if r["dataset"] == dataset and r["protocol"] == protocol]
        aus = list(members[0]["f1"])
        width = 0.8 / len(members)
        x = np.arange(len(aus))
        for i, r in enumerate(members):
            means = [r["f1"][au]["mean"] if r["f1"][au] else np.nan for au in aus]
            stds = [(r["f1"][au]["std"] or 0.0) if r["f1"][au] else 0.0 for au in aus]
            label = r["method"] + (" (reported)" if r["kind"] == "reported" else "")
            hatch = "//" if r["kind"] != "ours" else None
            ax.bar(x + (i - (len(members) - 1) / 2) * width, means, width, yerr=stds, label=label, hatch=hatch,
                   capsize=2)
        ax.set_xticks(x, aus)
        ax.set_ylabel("F1 (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{dataset}, protocol {protocol}")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

    ratio_rows = [r for r in rows if r["kind"] == "ours" and r["label_ratio"] is not None]
    by_method: dict[tuple[str, str], list[tuple[float, dict]]] = defaultdict(list)
    for r in ratio_rows:
        by_method[(r["dataset"], r["method"])].append((r["label_ratio"], r["mean_f1"]))
    if any(len({ratio for ratio, _ in v}) > 1 for v in by_method.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for (dataset, method), points in sorted(by_method.items()):
            points.sort(key=lambda p: p[0])
            ax.errorbar([p[0] for p in points], [p[1]["mean"] for p in points], yerr=[p[1]["std"] for p in points],
                        marker="o", capsize=3, label=f"{method} ({dataset})")
        ax.set_xscale("log")
        ax.set_xlabel("label ratio")
        ax.set_ylabel("mean F1 (%)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        ratio_path = path.with_name(path.stem + "_label_ratio" + path.suffix)
        fig.savefig(ratio_path, dpi=120)
        plt.close(fig)
        written.append(ratio_path)
    return written
