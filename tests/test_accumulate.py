"""Gradient accumulation (--accumulate) and SyncBatchNorm (--sync-bn): the same optimiser step as
on the whole batch, the refusals that name valid choices, exact resume, and the run identity."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aubench.models  # noqa: F401  (registers the methods)
from aubench.engine.checkpoint import load_checkpoint
from aubench.engine.config import RunConfig
from aubench.engine.distributed import DistEnv, sync_batchnorm
from aubench.engine.planning import accumulation_choices, check_stage_preset, resolve_preset, run_stages
from aubench.engine.step import StageSteps
from aubench.engine.trainer import Trainer
from aubench.errors import UserError
from aubench.models import create_method, method_class
from aubench.models.base import AUMethod, Preset, TrainState

from fixtures_h5 import write_au_h5
from test_engine import SMALL, h5  # noqa: F401  (the engine tests' run settings and data file)


class Linear(AUMethod):
    """A method without batch-dependent layers: its step on a batch is the mean of its samples'."""

    name = "linear-test"

    def __init__(self, num_aus, preset, class_weights=None):
        super().__init__(num_aus, preset, class_weights)
        self.fc = nn.Linear(6, num_aus)

    def training_step(self, batch, state):
        loss = F.binary_cross_entropy_with_logits(self.fc(batch["x"]), batch["y"])
        return {"loss": loss}


def test_an_accumulated_step_is_the_step_on_the_whole_batch():
    preset = Preset(name="test", image_size=1, epochs=1, batch_size=8, lr=0.1, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    batch = {"x": torch.randn(8, 6, generator=generator), "y": (torch.rand(8, 3, generator=generator) > 0.5).float()}
    trained = []
    for accumulate in (1, 2, 4):
        torch.manual_seed(0)
        method = Linear(3, preset)
        steps = StageSteps(method, preset, 1, torch.device("cpu"), "fp32", checkpoint=None)
        state = TrainState(total_steps=2)
        size = 8 // accumulate
        for start in range(0, 8, size):  # one optimiser step on the batch, in `accumulate` micro-batches
            steps.step(method.training_step, {k: v[start:start + size] for k, v in batch.items()}, state,
                       micro_batches=accumulate, last=start + size == 8)
        assert (state.step, state.batch_in_epoch) == (1, accumulate)
        trained.append([p.detach().clone() for p in method.parameters()])
    for accumulated in trained[1:]:
        for whole, part in zip(trained[0], accumulated):
            torch.testing.assert_close(part, whole, rtol=1e-6, atol=1e-7)
    torch.manual_seed(0)
    assert not torch.allclose(Linear(3, preset).fc.weight, trained[0][0])  # the step moved the weights


def test_accumulation_choices_and_refusals():
    assert accumulation_choices(32, 2) == [1, 2, 4, 8]
    assert accumulation_choices(4, 3) == []
    cls = method_class("resnet")
    stages = run_stages(cls, resolve_preset(cls, RunConfig(method="resnet", data="x.h5", batch_size=32)))
    check_stage_preset(cls, stages, stages[0], world_size=2, accumulate=4)
    with pytest.raises(UserError, match=r"^--accumulate 3: global batch 32 is not divisible by 2 processes x 3; "
                                        r"use --accumulate 1, 2, 4 or 8$"):
        check_stage_preset(cls, stages, stages[0], world_size=2, accumulate=3)
    with pytest.raises(UserError, match=r"^--accumulate 16: global batch 32 leaves 1 sample per training step on "
                                        r"each of 2 processes; use --accumulate 1, 2, 4 or 8$"):
        check_stage_preset(cls, stages, stages[0], world_size=2, accumulate=16)


def test_the_vivit_paper_batch_names_what_fits():
    cls = method_class("vivit")
    stages = run_stages(cls, resolve_preset(cls, RunConfig(method="vivit", data="x.h5", preset="paper")))
    assert stages[0].preset.batch_size == 4
    check_stage_preset(cls, stages, stages[0], world_size=2)
    with pytest.raises(UserError, match=r"on each of 3 process\(es\); use at least 6, or at most 2 processes$"):
        check_stage_preset(cls, stages, stages[0], world_size=3)
    with pytest.raises(UserError, match=r"^--accumulate 2: global batch 4 is not divisible by 3 processes x 2; no "
                                        r"--accumulate fits 3 processes: use at most 2$"):
        check_stage_preset(cls, stages, stages[0], world_size=3, accumulate=2)


def _weights(method):
    return {k: v.clone() for k, v in method.state_dict().items()}


class Killed(Exception):
    pass


def test_accumulation_steps_once_per_group_and_resumes_exactly(h5, tmp_path):
    config = dict(data=str(h5), accumulate=2, **SMALL)
    full = Trainer(RunConfig(out=str(tmp_path / "full"), **config))
    assert full.per_rank_batch_size() == 4
    summary = full.fit()
    # fold 1 trains on 44 frames: 5 optimiser steps of 2 micro-batches of 4 per epoch (the 4 frames
    # left over are dropped, as without accumulation a batch of 8 drops them)
    assert summary["steps_per_epoch"] == 5 and full.state.step == 10

    def kill_after_3(state, parts):
        if state.step == 3:
            raise Killed

    out = str(tmp_path / "killed")
    killed = Trainer(RunConfig(out=out, checkpoint_every=1, **config), step_callback=kill_after_3)
    with pytest.raises(Killed):
        killed.fit()
    saved = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert (saved["train_state"]["step"], saved["train_state"]["batch_in_epoch"]) == (3, 6)
    torch.manual_seed(12345)
    resumed = Trainer(RunConfig(out=out, resume=True, **config))
    resumed.fit()
    a, b = _weights(full.method), _weights(resumed.method)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.evaluate() == full.evaluate()

    other = Trainer(RunConfig(out=out, resume=True, **{**config, "accumulate": 1}))
    with pytest.raises(UserError, match=r"different run \(.*accumulate"):
        other.fit()


def test_sync_bn_converts_batch_norm_refuses_cpu_processes_and_is_identity(h5, tmp_path):
    method = create_method("resnet", num_aus=5, preset="tiny", backbone="test_resnet")
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in method.modules())
    assert norms and sync_batchnorm(method) is method
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in method.modules()) == norms
    assert not any(type(m) is nn.BatchNorm2d for m in method.modules())

    env = DistEnv(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(UserError, match="^--sync-bn synchronises batch statistics across GPUs"):
        Trainer(RunConfig(data=str(h5), out=str(tmp_path / "never"), sync_bn=True, **SMALL), env=env)

    out = str(tmp_path / "run")
    one = dict(data=str(h5), out=out, **{**SMALL, "epochs": 1})
    assert "sync_bn" not in Trainer(RunConfig(**one)).identity
    Trainer(RunConfig(sync_bn=True, **one)).fit()  # one process: nothing to synchronise
    with pytest.raises(UserError, match=r"different run \(.*sync_bn"):
        Trainer(RunConfig(resume=True, **one)).fit()


def test_accumulation_under_torchrun_steps_once_per_group(tmp_path):
    """Two gloo processes, 2 micro-batches of 2 per process per optimiser step (global batch 8):
    DDP all-reduces once per step (no_sync before), and the step count is the global batch's."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    h5 = write_au_h5(tmp_path / "tiny.h5", num_subjects=6, sequence_lengths=(6, 5))
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "aubench.cli", "train", "--method", "resnet", "--data", str(h5), "--fold", "1", "--out", str(out),
           "--preset", "tiny", "--image-size", "32", "--batch-size", "8", "--accumulate", "2", "--epochs", "1",
           "--device", "cpu", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    # 44 training frames, 22 per process: 5 steps of 2 micro-batches of 2 (the last 2 frames dropped)
    assert (result["world_size"], result["config"]["accumulate"], result["training"]["steps"]) == (2, 2, 5)


def test_evaluate_refuses_a_bad_accumulate_before_any_run_trains(h5, tmp_path, capsys):
    """The checks of each run's plan (planning.check_stage_preset) run for every unit of an
    evaluation before the first trains: a --accumulate one method's batch cannot take stops it
    at once, with nothing trained."""
    from aubench.cli import main

    out = tmp_path / "ev"
    # the tiny presets' batches: resnet 16 (micro-batches of 2), ks 8 (of 1: refused)
    code = main(["evaluate", "--methods", "resnet,ks", "--data", str(h5), "--folds", "1", "--out", str(out),
                 "--preset", "tiny", "--image-size", "32", "--epochs", "1", "--device", "cpu", "--quiet",
                 "--accumulate", "8"])
    assert code == 2
    assert "--accumulate 8: global batch 8 leaves 1 sample per training step" in capsys.readouterr().err
    assert not list(out.rglob("*.pt"))  # resnet, first in line, did not train either
