"""Label statistics of a converted file (``datasets_tools stats``) and ``info``."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from .errors import DatasetError
from .folds import distinct_combinations


def _strings(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def open_h5(path: Path) -> h5py.File:
    path = Path(path)
    if path.is_dir():
        raise DatasetError("is a folder; expected the .h5 file datasets_tools convert writes (a raw dataset folder "
                           "is converted with: datasets_tools convert LAYOUT FOLDER OUT.h5)", str(path))
    if not path.is_file():
        raise DatasetError("no such file", str(path))
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"not a readable HDF5 file ({e})", str(path)) from None


def _label_summary(label: np.ndarray, au_names: list[str]) -> dict:
    known = (label >= 0).sum(0)
    positives = (label == 1).sum(0)
    rate = np.divide(positives, known, out=np.zeros(len(au_names)), where=known > 0)
    return {"frames": int(len(label)),
            "au_rate": {name: round(float(r), 6) for name, r in zip(au_names, rate)},
            "unknown_labels": {name: int(len(label) - k) for name, k in zip(au_names, known)},
            "distinct_combinations": distinct_combinations(label)}


def compute_stats(path: Path) -> dict:
    """Per-AU positive rates, distinct AU combinations (distinct label rows over frames whose
    labels are all known), subjects, sequences, frames; the same per fold (train and test)."""
    with open_h5(path) as f:
        try:
            au_names = _strings(f.attrs["au_names"])
            label = f["frames/label"][:]
            frame_subject = f["frames/subject"][:]
            subjects = _strings(f["subjects/name"][:])
            seq_subject = f["sequences/subject"][:]
            folds = f["folds"]
            num_folds = int(folds.attrs["num_folds"])
            result = {"file": str(path), "dataset": str(f.attrs["dataset"]), "au_names": au_names,
                      "subjects": len(subjects), "sequences": int(len(seq_subject)),
                      **_label_summary(label, au_names), "split_source": str(folds.attrs["split_source"]),
                      "folds": []}
            if "split_scheme" in f.attrs:  # Aff-Wild2: "official" or "kfold"
                result["split_scheme"] = str(f.attrs["split_scheme"])
            for k in range(1, num_folds + 1):
                group = folds[f"fold{k}"]
                entry = {"fold": k}
                for split in ("train", "test"):
                    names = set(_strings(group[f"{split}_subjects"][:]))
                    ids = np.array([i for i, s in enumerate(subjects) if s in names], dtype=np.int64)
                    rows = np.isin(frame_subject, ids)
                    entry[split] = {"subjects": len(ids), "sequences": int(np.isin(seq_subject, ids).sum()),
                                    **_label_summary(label[rows], au_names)}
                entry["class_weight"] = [round(float(w), 6) for w in group["class_weight"][:]]
                result["folds"].append(entry)
        except KeyError as e:
            raise DatasetError(f"missing {e.args[0]} (not a datasets_tools file? run `datasets_tools verify`)",
                               str(path)) from None
    return result


def format_stats(stats: dict) -> str:
    names = stats["au_names"]
    width = max((len(n) for n in names), default=2) + 1  # an unlabeled file (images) has no AU
    lines = [f"{stats['dataset']}: {stats['frames']} frames, {stats['sequences']} sequences, "
             f"{stats['subjects']} subjects, {stats['distinct_combinations']} distinct AU combinations",
             f"split: {stats['split_source']}"]
    header = "".ljust(12) + "".join(n.rjust(width + 2) for n in names)
    lines.append(header)
    lines.append("all".ljust(12) + "".join(f"{stats['au_rate'][n]:{width + 2}.3f}" for n in names))
    for fold in stats["folds"]:
        for split in ("train", "test"):
            part = fold[split]
            lines.append(f"fold{fold['fold']} {split}".ljust(12)
                         + "".join(f"{part['au_rate'][n]:{width + 2}.3f}" for n in names)
                         + f"   {part['frames']} frames, {part['subjects']} subjects, {part['sequences']} sequences,"
                         f" {part['distinct_combinations']} combinations")
    return "\n".join(lines)


def format_info(path: Path) -> str:
    with open_h5(path) as f:
        lines = [f"{path}"]
        for key in sorted(f.attrs):
            value = f.attrs[key]
            if isinstance(value, np.ndarray):
                value = ", ".join(_strings(value.tolist())) if value.dtype == object else value.tolist()
            lines.append(f"  {key}: {value}")

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                lines.append(f"  /{name}: {obj.dtype} {obj.shape}")
        f.visititems(visit)
        if "folds" in f:
            folds = f["folds"]
            lines.append(f"  folds: {folds.attrs.get('num_folds')} ({folds.attrs.get('split_source')})")
            for name in sorted(folds):
                group = folds[name]
                lines.append(f"    {name}: {len(group['train_subjects'])} train / {len(group['test_subjects'])} "
                             f"test subjects, {group.attrs.get('num_train_frames')} training frames")
    return "\n".join(lines)


def stats_json(stats: dict) -> str:
    return json.dumps(stats, indent=2)

