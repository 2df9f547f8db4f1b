"""docs/loader_table.py: the CPU cores per GPU of docs/loader.md, from the loader's JSON and a GPU
check's training figures."""
from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_table_module():
    spec = importlib.util.spec_from_file_location("loader_table", ROOT / "docs" / "loader_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cores_per_gpu_are_the_gpu_figure_over_the_loader_figure(tmp_path, monkeypatch):
    table = load_table_module()
    shutil.copy(table.LOADER, tmp_path / "cpu-loader.json")
    monkeypatch.setattr(table, "ROOT", tmp_path)
    monkeypatch.setattr(table, "RESULTS", tmp_path)
    monkeypatch.setattr(table, "LOADER", tmp_path / "cpu-loader.json")
    report = json.loads(table.LOADER.read_text())
    resnet = next(r for r in report["training"] if r["method"] == "resnet")
    before = table.loader_block()
    row = next(line for line in before.splitlines() if line.startswith("| resnet (train) |"))
    assert "needs a GPU figure" in row

    gpu = {"dry_run": False, "device": "cuda (Test GPU)",
           "steps": {"methods": {"result": {"resnet": {"method": "resnet", "batch_size": 64,
                                                       "train_frames_per_s": 2500.0}}}}}
    (tmp_path / "gpu-test-gpu-20260101.json").write_text(json.dumps(gpu))
    (tmp_path / "gpu-cpu-dryrun-20260101.json").write_text(json.dumps({**gpu, "dry_run": True}))  # ignored
    cores = table.per_core(report)
    pipeline = report["pipeline_of_method"][resnet["base_method"]]
    jpeg, raw = cores[(pipeline, "jpeg")], cores[(pipeline, "raw")]
    row = next(line for line in table.loader_block().splitlines() if line.startswith("| resnet (train) |"))
    assert row.endswith(f"| 2500 (cuda (Test GPU), batch 64) | {math.ceil(2500 / jpeg)} ({math.ceil(2500 / raw)}) |")
    assert "`gpu-test-gpu-20260101.json`" in table.loader_block() and "dryrun" not in table.loader_block()
