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
