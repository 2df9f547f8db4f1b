"""Leaderboard: result JSONs of `aubench evaluate` -> one table (Markdown, CSV, JSON) and plots.

Rows are methods (per dataset, protocol, occlusion condition and setting; a result's "method",
so the tested stages of a method whose stages are leaderboard rows, Stage.row, are rows of their
own: "maefau-teacher", "maefau-student"), columns per-AU F1
and mean F1 as mean +- std over folds (in percent, like the papers), then params, FLOPs and
throughput. Beside our rows: the all-positive baseline of the same test splits, and numbers
reported in the papers (aubench.reported) for the same dataset, protocol and test occlusion
condition, marked "reported". Each of our rows names its preset (the one used: `paper` resolved to
`paper-disfa` ...) and its initialisation ("random", "timm:<name>", "file <name>"), and says why it
is not comparable with those reported figures where it is not ("caveat": a preset that is not a
paper's, such as tiny; random weights where the paper starts from pre-trained ones), marked with
a footnote in Markdown. A row that read at test time what a deployed detector would not have
(a result's "privileged_test_inputs": RRL's landmarks of the clean frame under an occluded test
condition, MAE-FAU's teacher told which patches are occluded) says what in "reads_at_test" and
is marked PRIVILEGED_MARK after its name in Markdown (with a footnote) and in plot legends;
CSV and JSON carry the same text in the row's "reads_at_test". Likewise a row something of which
was chosen on the test set (a result's "chosen_on_test": the checkpoint of `--select best-test`,
a smoothing filter given by hand on the official Aff-Wild2 split, whose test set the paper chose
its filter on) says what in "chosen_on_test", marked SELECTED_ON_TEST_MARK (in plot legends
followed by "selected on test" in words); and the other choices and how they were made (a
result's "choices": a checkpoint or per-AU thresholds chosen on the validation split, a
smoothing filter chosen there or not on validation) are in "choices", marked CHOICES_MARK
(docs/validation.md). Each mark's Markdown footnote says it of every marked row, with its
protocol and test condition where rows of one name differ. A std needs two folds: one fold
shows its mean alone. All three formats are rendered from the same rows, so they agree.

Occlusion conditions (the MAE-FAU protocol) come from a result's "occlusion": {"train": ...,
"test": ...}, named as aubench.data.condition_name names them ("none", "patches0.5",
"block0.3"); a result without it is "none" / "none". Each test condition is its own section of
rows, each train condition its own row.

GROUPING (also the `aubench leaderboard --help` text) says which results are averaged together.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections import defaultdict
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from aubench.engine.identity import result_identity
# find_results (and RESULT_SCHEMA) are the results store's; `leaderboard.find_results` reads what a table shows
from aubench.engine.results import (CONDITION_KINDS, RESULT_SCHEMA, conditions, dataset_label,  # noqa: F401
                                    find_results, parse_condition_name, result_problem, split_scheme)
from aubench.errors import UserError
from aubench.files import why_unwritable
from aubench.reported import reported_for

FORMATS = ("md", "csv", "json")
PLOT_NAME = "leaderboard.png"  # what --plot writes inside a directory

GROUPING = """\
A row averages (mean +- std) the folds of one method whose results have the same settings:
everything that changes what is trained and tested must be equal apart from the fold - preset
and its resolved fields (epochs, batch size, image size, optimiser, learning rate, model
settings ...), label ratio, seed, augmentation, precision, --pretrained file and the data file
(its fingerprint). Device, workers, channels-last, paths, timestamps, versions and throughput
may differ. Results of one method whose settings differ get separate rows, each labelled with
the settings that differ, e.g. "resnet [epochs=2]"; with --merge they are averaged anyway and
the row is labelled with what was mixed, e.g. "resnet [mixed: epochs 1/2]". The all-positive
baseline gets one row per data file. In a run directory, files that are not valid JSON and
results that lack a field are skipped with a warning naming the file; a result file named on
the command line must be valid. Results of different occlusion conditions (train or test) are
never averaged together, not even with --merge. Sections are per dataset (named with its split
scheme where the file records one: "Aff-Wild2 (official split)"), protocol and test condition;
smoothed results (protocol "<protocol>+smooth-gaussian-k51-s3", `aubench smooth`) have their own
section beside the raw one, and an ensemble (`aubench ensemble`) is a row like a method."""

def _condition_order(name: str) -> tuple[int, float]:
    """none first, then the patches ratios, then the block ratios."""
    spec = parse_condition_name(name)
    return (0, 0.0) if spec is None else (1 + CONDITION_KINDS.index(spec[0]), spec[1])


def verify_results(results: list[dict[str, Any]], data: str | Path | None = None) -> dict[str, str]:
    """`leaderboard --verify`: each result's metrics computed again from its predictions file and
    the labels of its data file (aubench.engine.predictions.recompute_metrics): result file ->
    what is wrong, for each result whose F1 differ or that cannot be recomputed (a missing or
    altered predictions or data file)."""
    from aubench.engine.predictions import TestLabels, recompute_metrics

    problems = {}
    labels = TestLabels(data)  # each data file opened and hashed once
    for result in results:
        file = result["_file"]
        try:
            again = recompute_metrics(file, data, labels)
        except UserError as err:
            problems[file] = f"cannot be verified: {err}"
            continue
        stored = result["metrics"]
        differ = [au for au in result["au_names"] if abs(stored["f1"][au] - again["f1"].get(au, math.nan)) > 1e-9]
        if differ or abs(stored["mean_f1"] - again["mean_f1"]) > 1e-9:
            problems[file] = (f"its metrics are not those of its predictions: mean F1 {stored['mean_f1']:.6g} "
                              f"recorded, {again['mean_f1']:.6g} recomputed"
                              + (f" (F1 of {', '.join(differ)} differ)" if differ else ""))
    return problems


def _stat(values: list[float]) -> dict[str, float | None]:
    """Mean and std over folds; no std (None) for one fold."""
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=0)) if arr.size > 1 else None}


def short_initialisation(text: Any) -> str:
    """A result's "initialisation" as the table shows it: "random", or each --pretrained source
    as "timm:<name>" (a hub name as it is) or "file <name>" (the file's name, without folders or
    digest), prefixed by its part where there are several ("mae file mae.pth, backbone
    timm:<name>"); "-" where the result records none."""
    if not isinstance(text, str) or not text.strip():
        return "-"
    text = text.strip()
    if text.lower().startswith("random"):
        return "random"
    shown = []
    entries = text.split("; ")  # "part: source (sha256 ...)", one per part
    for entry in entries:
        part, sep, source = entry.partition(": ")
        if not sep or " " in part:   # a bare source ("timm:<name>" has no space after its colon)
            part, source = "", entry
        source = source.split(" (")[0].strip()
        short = source if re.match(r"[\w-]+:\S", source) else f"file {PurePath(source).name or source}"
        shown.append(f"{part} {short}" if len(entries) > 1 and part else short)
    return ", ".join(shown)


def _origin(result: dict[str, Any]) -> tuple[str, str, Any]:
    """(preset, short initialisation, the preset's paper_init) of a result; an ensemble's preset
    is its members' ("tiny", "paper+tiny"), its initialisation unrecorded ("-")."""
    if "ensemble" in result:
        presets = [str((member.get("identity") or {}).get("preset")) for member in result["ensemble"]["members"]]
        return "+".join(dict.fromkeys(presets)), "-", None
    init = short_initialisation(result.get("initialisation"))
    pretraining = pretraining_data(result)
    return (str(result["config"]["preset"]), f"{init}; {pretraining}" if pretraining else init,
            (result.get("preset") or {}).get("paper_init"))


def pretraining_data(result: dict[str, Any]) -> str:
    """What a self-supervised method's pre-training stage (Stage.pretraining) learned from, as
    the init column shows it: "self-supervised on file <name>" (--pretrain-data) or "...on the
    fold's training subjects" (the default); "" for a method without such a stage."""
    if not any(stage.get("pretraining") for stage in result.get("stages") or []):
        return ""
    path = (result.get("data") or {}).get("pretrain_path")
    return f"self-supervised on file {PurePath(path).name}" if path else "self-supervised on the fold's training subjects"


# Why a row of ours is not comparable with the papers' reported rows beside it, if it is not.
NOT_PAPER_PRESET = "preset {preset}: not the paper's settings"
RANDOM_INIT = "random initialisation; the paper starts from {paper_init} weights"


def result_choices(result: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(what a result chose on the test set, its other choices and how they were made): its
    "chosen_on_test" and "choices"; a smoothed result made before those were recorded gets its
    filter's (aubench.engine.postprocess.filter_choice)."""
    on_test, choices = list(result.get("chosen_on_test") or []), list(result.get("choices") or [])
    smoothing = result.get("smoothing")
    if isinstance(smoothing, dict) and "choice" not in smoothing:
        from aubench.engine.postprocess import FILTER_ON_TEST, Smoothing, filter_choice

        try:
            text = filter_choice(result, Smoothing(int(smoothing["kernel_size"]), float(smoothing["sigma"]),
                                                   str(smoothing.get("kind", "gaussian"))))
        except (KeyError, TypeError, ValueError):  # a record aubench did not write: say nothing of it
            return on_test, choices
        (on_test if text == FILTER_ON_TEST else choices).append(text)
    return on_test, choices


def caveat(preset: str, init: str, paper_init: Any) -> str:
    """Why a row of ours (its preset name, short initialisation and the preset's paper_init)
    cannot be read beside the papers' figures ("" when it can): a preset other than a `paper`
    one (tiny: a CPU-sized model), or random weights where the paper starts from pre-trained
    ones (Preset.paper_init)."""
    reasons = []
    if not all(name.startswith("paper") for name in re.split(r"[/+]", preset)):  # "/": --merge, "+": an ensemble
        reasons.append(NOT_PAPER_PRESET.format(preset=preset))
    if init.split("; ")[0] == "random" and isinstance(paper_init, str) and paper_init:
        reasons.append(RANDOM_INIT.format(paper_init=paper_init))
    return "; ".join(reasons)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys ({"model": {"backbone": x}} -> {"model.backbone": x})."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def _settings(result: dict[str, Any]) -> dict[str, Any]:
    """What must match for two results to share a row: the identity without fold and method,
    plus the occlusion conditions."""
    flat = _flat(result_identity(result))
    settings = {k: v for k, v in flat.items() if k not in ("fold", "method")}
    settings["occlusion.train"], settings["occlusion.test"] = conditions(result)
    return settings


def _shown_apart(key: str) -> bool:
    """Settings the table shows in their own columns, never in a row's [setting] label (the
    conditions added above, and the train condition under the names a run identity may give it)."""
    return key.split(".")[0] in ("occlusion", "train_occlusion", "test_occlusion")


def _label_value(key: str, value: Any) -> str:
    if isinstance(value, str):
        return value[:8] if key == "fingerprint" else value
    return json.dumps(value)


def _varying(settings: list[dict[str, Any]]) -> list[str]:
    """Keys whose values are not the same in all of `settings`, in first-seen order."""
    keys = list(dict.fromkeys(k for s in settings for k in s))
    return [k for k in keys if len({json.dumps(s.get(k), sort_keys=True) for s in settings}) > 1]


def build_rows(results: list[dict[str, Any]], include_reported: bool = True, merge: bool = False
               ) -> list[dict[str, Any]]:
    """Aggregated rows per (dataset, protocol); ours first (best mean F1 first). See GROUPING."""
    au_sets: dict[str, list[str]] = {}
    split_of: dict[str, tuple[str, str | None]] = {}  # section dataset label -> (dataset, split scheme)
    for r in results:
        problem = result_problem(r)
        if problem:
            raise UserError(f"{r.get('_file', 'a result record')}: incomplete result: {problem}")
        r["_dataset"] = dataset = dataset_label(r)
        split_of[dataset] = (r["dataset"], split_scheme(r))
        if dataset in au_sets and au_sets[dataset] != r["au_names"]:
            raise UserError(f"AU set mismatch in {dataset} results: {r['_file']} has {r['au_names']}, "
                            f"others have {au_sets[dataset]}")
        au_sets[dataset] = r["au_names"]
        r["_settings"] = _settings(r)

    # The settings that tell one method's rows apart within a dataset. The label ratio is left out
    # when the protocol column already shows it (it differs between protocols by definition), and
    # the occlusion conditions always (they have their columns).
    by_dataset_method: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in results:
        by_dataset_method[(r["_dataset"], r["method"])].append(r["_settings"])
    shown: dict[tuple[str, str], list[str]] = {}
    for key, settings in by_dataset_method.items():
        keys = [k for k in _varying(settings) if not _shown_apart(k)]
        per_protocol = defaultdict(set)
        for r in results:
            if (r["_dataset"], r["method"]) == key:
                per_protocol[r["protocol"]].add(r["label_ratio"])
        if all(len(ratios) == 1 for ratios in per_protocol.values()):
            keys = [k for k in keys if k != "label_ratio"]
        shown[key] = keys

    def group_key(r: dict) -> str:
        # --merge mixes settings, never occlusion conditions
        return json.dumps(conditions(r) if merge else r["_settings"], sort_keys=True)

    def setting_label(runs: list[dict]) -> str:
        if merge:
            mixed = [k for k in _varying([r["_settings"] for r in runs]) if not _shown_apart(k)]
            return ("mixed: " + ", ".join(
                f"{k} " + "/".join(dict.fromkeys(_label_value(k, r["_settings"].get(k)) for r in runs))
                for k in mixed)) if mixed else ""
        keys = shown[(runs[0]["_dataset"], runs[0]["method"])]
        return ", ".join(f"{k}={_label_value(k, runs[0]['_settings'].get(k))}" for k in keys)

    # sections: (dataset, protocol, test condition); rows in a section: (method, settings)
    groups: dict[tuple[str, str, str], dict[tuple[str, str], list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        groups[(r["_dataset"], r["protocol"], conditions(r)[1])][(r["method"], group_key(r))].append(r)

    def section_order(key: tuple[str, str, str]):
        dataset, protocol, test = key
        return dataset, _ratio_key(protocol), _condition_order(test), protocol  # raw before "+smooth-..."

    rows = []
    for (dataset, protocol, test), by_method in sorted(groups.items(), key=lambda kv: section_order(kv[0])):
        aus = au_sets[dataset]
        ours = []
        # The all-positive baseline depends on the test labels only: one per data file (fingerprint).
        baselines: dict[str, dict[int, dict]] = defaultdict(dict)
        for (method, _), runs in by_method.items():
            folds = sorted(r["fold"] for r in runs)
            if len(set(folds)) != len(folds):
                dup = [r["_file"] for r in runs]
                raise UserError(f"{method} {dataset} {protocol}: the same fold appears twice ({', '.join(dup)})")
            bench = runs[0].get("bench", {})
            origins = [_origin(r) for r in runs]
            preset, init = ("/".join(dict.fromkeys(origin[k] for origin in origins)) for k in (0, 1))
            paper_init = origins[0][2]
            made = [result_choices(r) for r in runs]
            ours.append({
                "kind": "ours", "method": method, "setting": setting_label(runs), "dataset": dataset,
                "preset": preset, "init": init, "caveat": caveat(preset, init, paper_init),
                # what the row read at test time that a deployed detector would not have
                "reads_at_test": "; ".join(dict.fromkeys(
                    text for r in runs for text in r.get("privileged_test_inputs") or [])),
                # what was chosen on the test set; the other choices and how they were made
                "chosen_on_test": "; ".join(dict.fromkeys(text for on_test, _ in made for text in on_test)),
                "choices": "; ".join(dict.fromkeys(text for _, choices in made for text in choices)),
                "protocol": protocol, "occlusion_train": conditions(runs[0])[0], "occlusion_test": test,
                "label_ratio": runs[0].get("label_ratio"), "folds": folds,
                "f1": {au: _stat([100 * r["metrics"]["f1"][au] for r in runs]) for au in aus},
                "mean_f1": _stat([100 * r["metrics"]["mean_f1"] for r in runs]),
                "params_m": bench.get("params_m"), "gflops_per_frame": bench.get("gflops_per_frame"),
                "infer_frames_per_s": bench.get("infer_frames_per_s"),
                "train_frames_per_s": bench.get("train_frames_per_s"), "source": "",
            })
            for r in runs:
                fingerprint = "" if merge else r["_settings"]["fingerprint"]
                baselines[fingerprint].setdefault(r["fold"], r["metrics"])
        ours.sort(key=lambda row: -row["mean_f1"]["mean"])
        rows += ours
        for fingerprint, baseline_folds in baselines.items():
            folds = sorted(baseline_folds)
            rows.append({
                "kind": "baseline", "method": "all-positive", "dataset": dataset, "protocol": protocol,
                "preset": "", "init": "", "caveat": "", "reads_at_test": "", "chosen_on_test": "", "choices": "",
                # it predicts without looking at the images: the same under every condition
                "occlusion_train": "none", "occlusion_test": test,
                "setting": f"fingerprint={fingerprint[:8]}" if len(baselines) > 1 else "",
                "label_ratio": None, "folds": folds,
                "f1": {au: _stat([100 * baseline_folds[k]["all_positive_f1"][au] for k in folds]) for au in aus},
                "mean_f1": _stat([100 * baseline_folds[k]["all_positive_mean_f1"] for k in folds]),
                "params_m": None, "gflops_per_frame": None, "infer_frames_per_s": None, "train_frames_per_s": None,
                "source": "predicts every AU present",
            })
        if include_reported:
            for rep in reported_for(*split_of[dataset], protocol, test):
                rows.append({
                    "kind": "reported", "method": rep["method"], "setting": "", "dataset": dataset,
                    "preset": "", "init": "", "caveat": "", "reads_at_test": "", "chosen_on_test": "", "choices": "",
                    "protocol": protocol, "occlusion_train": rep["occlusion"]["train"], "occlusion_test": test,
                    "label_ratio": None, "folds": [],
                    "f1": {au: (None if rep["f1"].get(au) is None else {"mean": rep["f1"][au], "std": None})
                           for au in aus},
                    "mean_f1": {"mean": rep["mean_f1"], "std": None},
                    "params_m": None, "gflops_per_frame": None, "infer_frames_per_s": None,
                    "train_frames_per_s": None, "source": rep["source"],
                })
    return rows


def _ratio_key(protocol: str) -> float:
    labels = protocol.split("+")[0]   # "sparse0.2+linear-probe": the label protocol, then the evaluation
    try:
        return 1.0 if labels == "full" else float(labels.removeprefix("sparse") or 0)
    except ValueError:  # a protocol name aubench does not write: sort it last
        return float("inf")


def _cell(stat: dict | None) -> str:
    if stat is None:
        return "-"
    if stat["std"] is None:
        return f"{stat['mean']:.1f}"
    return f"{stat['mean']:.1f} ± {stat['std']:.1f}"


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


PRIVILEGED_MARK = "‡"  # a row that read at test time more than the image a deployed detector has
SELECTED_ON_TEST_MARK = "§"  # a row something of which (a checkpoint, a filter) was chosen on the test set
CHOICES_MARK = "°"  # a row whose checkpoint, thresholds or filter were chosen otherwise than by default


def _name(row: dict) -> str:
    """The method as a table or legend shows it: reported numbers marked, settings in brackets,
    a row that read privileged test-time inputs marked with PRIVILEGED_MARK, one with something
    chosen on the test set with SELECTED_ON_TEST_MARK, one with other choices with CHOICES_MARK."""
    name = row["method"] + (" (reported)" if row["kind"] == "reported" else "")
    name = f"{name} [{row['setting']}]" if row.get("setting") else name
    for key, mark in (("reads_at_test", PRIVILEGED_MARK), ("chosen_on_test", SELECTED_ON_TEST_MARK),
                      ("choices", CHOICES_MARK)):
        if row.get(key):
            name += f" {mark}"
    return name


SELECTED_ON_TEST_LEGEND = "selected on test"  # plot legends have no footnote: they say it in words


def _legend(row: dict) -> str:
    """The method as a plot legend shows it: _name, and for a row with something chosen on the
    test set SELECTED_ON_TEST_LEGEND in words after its mark."""
    name = _name(row)
    return f"{name} {SELECTED_ON_TEST_LEGEND}" if row.get("chosen_on_test") else name


def _aus(rows: list[dict], dataset: str) -> list[str]:
    return list(next(r for r in rows if r["dataset"] == dataset)["f1"])


CAVEAT_MARK = "†"  # a row of ours not comparable with the reported rows (its "caveat"), in Markdown


def _footnote(notes: dict[str, dict[str, str]]) -> str:
    """A mark's footnote from {row name: {where (its protocol and test condition): what}}: "name:
    what" for a name whose rows all say the same, else one "name (where): what" per row."""
    parts = []
    for name, by_where in notes.items():
        if len(set(by_where.values())) == 1:
            parts.append(f"{name}: {next(iter(by_where.values()))}")
        else:
            parts += [f"{name} ({where}): {what}" for where, what in by_where.items()]
    return "; ".join(parts)


def to_markdown(rows: list[dict]) -> str:
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        aus = _aus(rows, dataset)
        out.append(f"### {dataset}: F1 (%) per AU, mean ± std over folds\n")
        header = ["method", "protocol", "train occlusion", "test occlusion", "kind", "folds", *aus, "mean F1",
                  "params (M)", "GFLOPs/frame", "infer frames/s", "train frames/s", "preset", "init"]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join([":---"] * 5 + ["---:"] * (len(header) - 7) + [":---"] * 2) + "|")
        caveats: dict[str, str] = {}
        # the marks' footnotes: row name -> {where (protocol, test condition) -> what}
        privileged: dict[str, dict[str, str]] = defaultdict(dict)
        on_test: dict[str, dict[str, str]] = defaultdict(dict)
        choices: dict[str, dict[str, str]] = defaultdict(dict)
        for r in rows:
            if r["dataset"] != dataset:
                continue
            name = _name(r)
            where = f"{r['protocol']}, test {r['occlusion_test']}"
            for notes, key in ((privileged, "reads_at_test"), (on_test, "chosen_on_test"), (choices, "choices")):
                if r.get(key):
                    notes[name].setdefault(where, r[key])
            if r.get("caveat"):
                caveats.setdefault(name, r["caveat"])
                name += f" {CAVEAT_MARK}"
            cells = [name, r["protocol"], r["occlusion_train"], r["occlusion_test"], r["kind"],
                     str(len(r["folds"])) if r["folds"] else "-",
                     *[_cell(r["f1"][au]) for au in aus], _cell(r["mean_f1"]), _num(r["params_m"], ".2f"),
                     _num(r["gflops_per_frame"], ".3f"), _num(r["infer_frames_per_s"], ".1f"),
                     _num(r["train_frames_per_s"], ".1f"), r.get("preset") or "-", r.get("init") or "-"]
            out.append("| " + " | ".join(cells) + " |")
        if privileged:
            out.append(f"\n{PRIVILEGED_MARK} reads at test time more than the image: {_footnote(privileged)}")
        if on_test:
            out.append(f"\n{SELECTED_ON_TEST_MARK} selected on test (optimistic; not a score to compare): "
                       f"{_footnote(on_test)}")
        if choices:
            out.append(f"\n{CHOICES_MARK} chosen: {_footnote(choices)}")
        if caveats:
            out.append(f"\n{CAVEAT_MARK} not comparable with the papers' reported figures: "
                       + "; ".join(f"{name}: {why}" for name, why in caveats.items()))
        sources: dict[str, list[str]] = defaultdict(list)
        for r in rows:
            if r["dataset"] == dataset and r["kind"] == "reported" and r["method"] not in sources[r["source"]]:
                sources[r["source"]].append(r["method"])
        for source in sorted(sources):
            out.append(f"\nreported: {source}: {', '.join(sources[source])}")
        out.append("")
    return "\n".join(out)


def to_csv(rows: list[dict]) -> str:
    all_aus = list(dict.fromkeys(au for r in rows for au in r["f1"]))
    fields = ["dataset", "protocol", "kind", "method", "occlusion_train", "occlusion_test", "setting", "folds",
              *[f"{au}_{s}" for au in all_aus for s in ("mean", "std")], "mean_f1_mean", "mean_f1_std",
              "params_m", "gflops_per_frame", "infer_frames_per_s", "train_frames_per_s", "source", "preset", "init",
              "caveat", "reads_at_test", "chosen_on_test", "choices"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        line = {"dataset": r["dataset"], "protocol": r["protocol"], "kind": r["kind"], "method": r["method"],
                "occlusion_train": r["occlusion_train"], "occlusion_test": r["occlusion_test"],
                "setting": r.get("setting", ""), "folds": " ".join(map(str, r["folds"])), "mean_f1_mean": r["mean_f1"]["mean"],
                "mean_f1_std": r["mean_f1"]["std"], "source": r["source"], "preset": r.get("preset", ""),
                "init": r.get("init", ""), "caveat": r.get("caveat", ""), "reads_at_test": r.get("reads_at_test", ""),
                "chosen_on_test": r.get("chosen_on_test", ""), "choices": r.get("choices", "")}
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


def plot_path(path: str | Path) -> Path:
    """Where `--plot PATH` writes the per-AU chart: PATH/leaderboard.png when PATH is a directory
    (or ends with a slash), PATH.png when PATH has no suffix, else PATH (its suffix picks the
    format: png, pdf, svg ...)."""
    text = str(path)
    path = Path(path)
    if path.is_dir() or text.endswith(("/", os.sep)):
        return path / PLOT_NAME
    return path if path.suffix else path.with_name(path.name + ".png")


def _save(fig, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    except OSError as err:
        raise UserError(f"--plot {path}: cannot write ({why_unwritable(path, err)})") from None
    except ValueError as err:  # an image format matplotlib does not know
        raise UserError(f"--plot {path}: {err}") from None


def _conditions_label(row: dict) -> str:
    """" (train X, test Y)" for a row under occlusion, "" for none / none."""
    if (row["occlusion_train"], row["occlusion_test"]) == ("none", "none"):
        return ""
    return f" (train {row['occlusion_train']}, test {row['occlusion_test']})"


def occlusion_series(rows: list[dict]) -> list[dict]:
    """The lines of the F1-vs-occlusion plot (MAE-FAU's Fig. 3): one per dataset, protocol,
    method (with its settings) and train condition, over our rows whose test condition is
    "none" (x = 0) or random patches (x = their ratio); y = mean F1 over folds, yerr = its std
    over folds (None with one fold). Block conditions are not on this axis."""
    lines: dict[tuple, dict[float, dict]] = defaultdict(dict)
    for r in rows:
        spec = parse_condition_name(r["occlusion_test"])
        if r["kind"] != "ours" or (spec is not None and spec[0] != "patches"):
            continue
        key = (r["dataset"], r["protocol"], _legend(r), r["occlusion_train"])
        lines[key][0.0 if spec is None else spec[1]] = r
    series = []
    for (dataset, protocol, method, train), points in sorted(lines.items()):
        xs = sorted(points)
        several = any(len(points[x]["folds"]) > 1 for x in xs)
        series.append({"dataset": dataset, "protocol": protocol, "method": method, "train": train,
                       "x": xs, "y": [points[x]["mean_f1"]["mean"] for x in xs],
                       "yerr": [points[x]["mean_f1"]["std"] for x in xs] if several else None,
                       "folds": [len(points[x]["folds"]) for x in xs]})
    return series



def _line_plot(path: Path, lines: list[tuple], xlabel: str, log_x: bool = False) -> Path:
    """Mean F1 against x, one line (label, xs, ys, yerr) per method; written to `path`."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, xs, ys, yerr in lines:
        if yerr is not None:  # a point of one fold has no std: no bar there
            yerr = [0.0 if e is None else e for e in yerr] if any(e is not None for e in yerr) else None
        ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3, label=label)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean F1 (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        _save(fig, path)
    finally:
        plt.close(fig)
    return path


def plot(rows: list[dict], path: str | Path, reported: bool = False) -> list[Path]:
    """A bar chart of per-AU F1 (one per dataset, protocol and test occlusion condition) of our
    rows and the all-positive baseline, and with `reported` the papers' reported rows too; when
    several label ratios exist, F1 against label ratio beside it (<name>_label_ratio<suffix>);
    when our rows hold more than one test condition of random patches (or none), F1 against
    the test occlusion ratio (<name>_occlusion<suffix>, see occlusion_series). `path` as
    plot_path reads it. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if reported or r["kind"] != "reported"]
    path = plot_path(path)
    written = []
    groups = list(dict.fromkeys((r["dataset"], r["protocol"], r["occlusion_test"]) for r in rows))
    fig, axes = plt.subplots(len(groups), 1, figsize=(max(8, 1.1 * len(rows[0]["f1"]) + 3), 3.6 * len(groups)),
                             squeeze=False)
    for ax, (dataset, protocol, test) in zip(axes[:, 0], groups):
        members = [r for r in rows if (r["dataset"], r["protocol"], r["occlusion_test"]) == (dataset, protocol, test)]
        aus = list(members[0]["f1"])
        width = 0.8 / len(members)
        x = np.arange(len(aus))
        for i, r in enumerate(members):
            means = [r["f1"][au]["mean"] if r["f1"][au] else np.nan for au in aus]
            stds = [(r["f1"][au]["std"] or 0.0) if r["f1"][au] else 0.0 for au in aus]
            hatch = "//" if r["kind"] != "ours" else None
            label = _legend(r) + (f" (train {r['occlusion_train']})" if r["occlusion_train"] != "none" else "")
            ax.bar(x + (i - (len(members) - 1) / 2) * width, means, width, yerr=stds, label=label, hatch=hatch,
                   capsize=2)
        ax.set_xticks(x, aus)
        ax.set_ylabel("F1 (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{dataset}, protocol {protocol}" + (f", test occlusion {test}" if test != "none" else ""))
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    try:
        _save(fig, path)
    finally:
        plt.close(fig)
    written.append(path)

    ratio_rows = [r for r in rows if r["kind"] == "ours" and r["label_ratio"] is not None]
    by_method: dict[tuple[str, str], list[tuple[float, dict]]] = defaultdict(list)
    for r in ratio_rows:
        by_method[(r["dataset"], _legend(r) + _conditions_label(r))].append((r["label_ratio"], r["mean_f1"]))
    if any(len({ratio for ratio, _ in v}) > 1 for v in by_method.values()):
        lines = []
        for (dataset, method), points in sorted(by_method.items()):
            points.sort(key=lambda p: p[0])
            lines.append((f"{method} ({dataset})", [p[0] for p in points], [p[1]["mean"] for p in points],
                          [p[1]["std"] for p in points]))
        written.append(_line_plot(path.with_name(path.stem + "_label_ratio" + path.suffix), lines,
                                  "label ratio", log_x=True))

    series = occlusion_series(rows)
    if len({x for line in series for x in line["x"]}) > 1:
        lines = [(f"{line['method']}, train {line['train']} ({line['dataset']}, {line['protocol']})",
                  [100 * x for x in line["x"]], line["y"], line["yerr"]) for line in series]
        written.append(_line_plot(path.with_name(path.stem + "_occlusion" + path.suffix), lines,
                                  "test occlusion: random patches (% of the image)"))
    return written
