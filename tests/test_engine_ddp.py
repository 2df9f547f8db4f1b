"""Two-process data-parallel training and evaluation through torchrun (gloo on CPU)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aubench.data import AUFile
from fixtures_h5 import write_au_h5

REPO = Path(__file__).resolve().parents[1]


# resnet: frame batches; ks: sparse clip batches, where only some students get gradients.
@pytest.mark.parametrize("method, label_ratio", [("resnet", "1.0"), ("ks", "0.5")])
def test_torchrun_two_processes_train_and_evaluate(tmp_path, method, label_ratio):
    h5 = write_au_h5(tmp_path / "tiny.h5", num_subjects=6, sequence_lengths=(6, 5))
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "aubench.cli", "train", "--method", method, "--data", str(h5), "--fold", "1", "--out", str(out),
           "--preset", "tiny", "--image-size", "32", "--batch-size", "8", "--epochs", "2", "--device", "cpu",
           "--no-progress", "--checkpoint-every", "1", "--label-ratio", label_ratio]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=540, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2
    # Every test frame was scored once, from predictions gathered over both ranks.
    file = AUFile(h5)
    test_rows = file.rows(1, "test")
    assert result["metrics"]["num_frames"] == len(test_rows)
    labels = file.labels[test_rows]
    known = {au: int((labels[:, i] >= 0).sum()) for i, au in enumerate(file.au_names)}
    assert result["metrics"]["num_known"] == known
    # Fold 1 trains on 4 subjects x (6 + 5) = 44 frames; global batch 8 = 4 per rank.
    # resnet: 22 frames per rank -> 5 steps per epoch (last batch dropped).
    # ks at ratio 0.5: every other frame along the sequences = 22 key clips, 11 per rank
    # -> 2 steps per epoch (last batch dropped; clips shifted at sequence ends are trained).
    expected = {"resnet": (44, 5), "ks": (22, 2)}[method]
    assert (result["training"]["train_samples"], result["training"]["steps"]) == (expected[0], 2 * expected[1])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert sum(r["event"] == "start" for r in log) == 1  # rank 0 only
    assert np.isfinite(result["training"]["final_loss"])


# --- every registered method under torchrun --------------------------------------------------

EIGHT_AUS = ("AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU25", "AU26")  # ME-GraphAU's default graph: 8 AUs


def key_structure(value, prefix=""):
    """The nested key paths of a result (values left out), per-AU names and lists summarised."""
    if isinstance(value, dict):
        paths = set()
        for key, item in value.items():
            name = "<au>" if key in EIGHT_AUS else key
            paths |= {f"{prefix}/{name}"} | key_structure(item, f"{prefix}/{name}")
        return paths
    return set()


def run_harness(record: Path, args: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
    record.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "ddp_harness.py"), str(record), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=record)


def landmark_file(path: Path) -> Path:
    """Six subjects of two 8-frame sequences, 8 AUs, with 68 jittered points (RRL reads them)."""
    from test_rrl import face_landmarks

    n = 6 * 16
    points = face_landmarks(32).numpy()[0] + np.random.default_rng(0).normal(0, 0.3, (n, 68, 2)).astype(np.float32)
    return write_au_h5(path, schema_version=2, landmarks=points, num_subjects=6, sequence_lengths=(8, 8),
                       au_names=EIGHT_AUS)


def test_every_method_under_torchrun(tmp_path):
    """Every registered method, every stage, two gloo processes: one result per test row written
    by rank 0 with a single process's schema, no DDP warning (each method's unused_parameters
    declaration is right: a wrong False makes DDP raise, a wrong True makes it warn), the ranks'
    training shards of each epoch disjoint; then a run killed on one rank resumes to the same
    result as the uninterrupted one."""
    from aubench.cli import main as aubench_main

    # the registered methods as a fresh process sees them (other tests register their own)
    registered = subprocess.run([sys.executable, "-c", "import aubench.models, json; from aubench.models.base import "
                                 "available_methods; print(json.dumps(available_methods()))"],
                                capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    methods = json.loads(registered.stdout)
    h5 = landmark_file(tmp_path / "lm.h5")
    common = ["--data", str(h5), "--folds", "1", "--preset", "tiny", "--epochs", "1", "--batch-size", "4",
              "--device", "cpu", "--no-progress", "--checkpoint-every", "1"]
    out = tmp_path / "all"
    proc = run_harness(tmp_path / "record", ["evaluate", "--methods", "all", "--out", str(out), *common])
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "find_unused_parameters" not in output, output[-4000:]

    results = {json.loads(p.read_text())["method"]: json.loads(p.read_text())
               for p in (out / "results").glob("*.json")}
    for method in methods:
        assert any(name == method or name.startswith(f"{method}-") for name in results), (method, sorted(results))
    assert all(r["world_size"] == 2 for r in results.values())
    # A single process writes the same schema (resnet, the same settings).
    single = tmp_path / "single"
    assert aubench_main(["evaluate", "--methods", "resnet", "--out", str(single), *common]) == 0
    single_result = json.loads(next((single / "results").glob("*.json")).read_text())
    assert key_structure(single_result) == key_structure(results["resnet"])
    assert aubench_main(["leaderboard", str(out / "results"), "--verify", "--data", str(h5)]) == 0

    # Each shuffled epoch: the two ranks' shards are disjoint (but for the sampler's padding of
    # an odd-sized set: one repeated sample) and together cover the training set.
    shards = {}
    for rank in (0, 1):
        for line in (tmp_path / "record" / f"rank{rank}.jsonl").read_text().splitlines():
            entry = json.loads(line)
            shards.setdefault((entry["seed"], entry["epoch"], entry["size"]), {})[rank] = entry["indices"]
    assert len(shards) >= len(methods)
    for (seed, epoch, size), by_rank in shards.items():
        first, second = by_rank[0], by_rank[1]
        assert set(first) | set(second) == set(range(size))
        assert len(first) + len(second) - len(set(first) | set(second)) == (size % 2)

    # Kill rank 1 of a resnet run at its 4th training step (checkpoints after every step), resume.
    killed = tmp_path / "killed"
    proc = run_harness(tmp_path / "record_kill", ["evaluate", "--methods", "resnet", "--out", str(killed), *common],
                       {"AUBENCH_TEST_KILL_RANK": "1", "AUBENCH_TEST_KILL_AT": "4"})
    assert proc.returncode != 0
    assert not list((killed / "results").glob("*.json"))
    proc = run_harness(tmp_path / "record_resume", ["evaluate", "--methods", "resnet", "--out", str(killed),
                                                    "--resume", *common])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    resumed = json.loads(next((killed / "results").glob("*.json")).read_text())
    assert resumed["metrics"]["f1"] == results["resnet"]["metrics"]["f1"]
    assert resumed["training"]["steps"] == results["resnet"]["training"]["steps"]
