"""Multi-stage training: initialisation from an earlier stage, frozen parts and frozen inputs,
stages without labels, exact resume inside any stage of a killed process, the stage record in
results and identities; ME-GraphAU through the engine; occlusion conditions and sweeps."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aubench.models  # noqa: F401  (registers the methods)
from aubench.cli import main
from aubench.engine.checkpoint import load_checkpoint
from aubench.engine.config import RunConfig
from aubench.engine.run_files import CHECKPOINT_NAME
from aubench.engine.trainer import Trainer
from aubench.errors import UserError
from aubench.models.base import _METHODS, AUMethod, Preset, Stage, register_method
from aubench.models.megraphau import MEGraphAU
from fixtures_h5 import write_au_h5

REPO = Path(__file__).resolve().parents[1]
AUS8 = ("AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU25", "AU26")  # DISFA's: ME-GraphAU's default K = 3
# ME-GraphAU tiny at 32 px, 2 epochs per stage: fold 1 trains on 44 frames = 5 batches of 8 per epoch.
MEGRAPH = dict(method="megraphau", preset="tiny", image_size=32, batch_size=8, epochs=2, progress=False,
               device="cpu", log_every=1)


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    return write_au_h5(tmp_path_factory.mktemp("stages") / "au8.h5", num_subjects=6, sequence_lengths=(6, 5),
                       au_names=AUS8)


def weights(method: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys=None) -> None:
    keys = list(a) if keys is None else list(keys)
    assert keys
    for k in keys:
        assert torch.equal(a[k], b[k]), k


def events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ a method with three stages

PRETRAIN_BATCHES: list[dict] = []


class ProbeMethod(AUMethod):
    """Self-supervised pre-training (predict each image's mean colour, no labels) -> a linear
    probe on the frozen encoder -> a student distilled from the frozen probe."""

    input_kind = "frame"
    presets = {"tiny": Preset(name="tiny", image_size=32, epochs=1, batch_size=8, optimizer="adamw", lr=1e-2,
                              weight_decay=0.1, rotation=0.0, model={"phase": "pretrain"})}
    probe_lr = 5e-3  # the tests change it to change a stage's settings alone

    def __init__(self, num_aus, preset, class_weights=None):
        super().__init__(num_aus, preset, class_weights)
        self.phase = preset.model["phase"]
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.decoder = nn.Linear(8, 3)
        self.head = nn.Linear(8, num_aus)

    @classmethod
    def stages(cls, preset):
        def phase(name, **fields):
            return Preset(**{**preset.__dict__, **fields, "model": {**preset.model, "phase": name}})

        return [Stage("pretrain", phase("pretrain"), uses_labels=False),
                Stage("probe", phase("probe", lr=cls.probe_lr), init_from="pretrain", frozen=("encoder",)),
                Stage("distil", phase("distil"), frozen_inputs=("probe",))]

    def logits(self, images):
        return self.head(self.encoder(images))

    def training_step(self, batch, state):
        images = batch["image"]
        if self.phase == "pretrain":
            assert "label" not in batch and "labeled" not in batch, sorted(batch)
            PRETRAIN_BATCHES.append({k: v.clone() for k, v in batch.items()})
            loss = F.mse_loss(self.decoder(self.encoder(images)), images.mean((2, 3)))
        elif self.phase == "probe":
            known = batch["label"] >= 0
            loss = F.binary_cross_entropy_with_logits(self.logits(images)[known], batch["label"][known])
        else:
            teacher = self.frozen_inputs["probe"]
            assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
            with torch.no_grad():
                target = torch.sigmoid(teacher.logits(images))
            loss = F.mse_loss(torch.sigmoid(self.logits(images)), target)
        return {"loss": loss}

    @torch.no_grad()
    def predict(self, batch):
        return torch.sigmoid(self.logits(batch["image"]))


if "probe_test" not in _METHODS:
    register_method("probe_test")(ProbeMethod)

PROBE = dict(method="probe_test", preset="tiny", progress=False, device="cpu", log_every=1)


def test_a_stage_without_labels_never_sees_one_and_trains_on_every_frame(h5, tmp_path):
    PRETRAIN_BATCHES.clear()
    trainer = Trainer(RunConfig(data=str(h5), out=str(tmp_path / "run"), label_ratio=0.5, **PROBE))
    trainer.fit()
    assert PRETRAIN_BATCHES and all("label" not in b and "labeled" not in b for b in PRETRAIN_BATCHES)
    seen = torch.cat([b["index"] for b in PRETRAIN_BATCHES]).tolist()
    train_rows = trainer.data.file.rows(1, "train")
    # every training frame (44, 5 batches of 8, the last 4 dropped), not only the kept half of the labels
    assert len(seen) == 40 and set(seen) <= set(train_rows.tolist()) and len(set(seen)) == 40
    records = {r["name"]: r for r in trainer.records}
    assert records["pretrain"]["train_samples"] == len(train_rows) == 44
    assert records["probe"]["train_samples"] == 22   # the probe trains on the labeled frames only
    assert "labels" not in records["pretrain"] and records["probe"]["labels"]["label_ratio"] == 0.5


def test_frozen_parts_stay_bit_identical_and_get_no_optimiser_state(h5, tmp_path):
    out = tmp_path / "run"
    seen_optimisers = []

    def look(state, parts):
        if state.stage == "probe":
            seen_optimisers.append(load_checkpoint(out / "last.pt")["optimizer"])

    trainer = Trainer(RunConfig(data=str(h5), out=str(out), checkpoint_every=1, **PROBE), step_callback=look)
    trainer.fit()
    pretrained = load_checkpoint(out / "final_pretrain.pt")["model"]
    probed = load_checkpoint(out / "final_probe.pt")["model"]
    encoder = [k for k in pretrained if k.startswith("encoder.")]
    assert any(k.endswith("running_mean") for k in encoder)
    assert_same(pretrained, probed, encoder)                                   # weights and BatchNorm statistics
    assert not torch.equal(pretrained["head.weight"], probed["head.weight"])    # the probe itself trained
    assert not torch.equal(pretrained["encoder.0.weight"], ProbeMethod(8, ProbeMethod.presets["tiny"]).state_dict()
                           ["encoder.0.weight"])  # ... on an encoder that pre-training moved
    # The probe's optimiser holds the decoder and the head, never the frozen encoder.
    trainable = [n for n, _ in ProbeMethod(8, ProbeMethod.presets["tiny"]).named_parameters()
                 if not n.startswith("encoder.")]
    assert seen_optimisers
    for optimiser in seen_optimisers:
        assert sum(len(g["params"]) for g in optimiser["param_groups"]) == len(trainable)
        assert optimiser["param_groups"][0]["lr"] <= ProbeMethod.probe_lr           # the probe's own rate
        assert len(optimiser["state"]) == 2                                     # head weight and bias only
    # The distilled student read the frozen probe, which did not move, and did not save it.
    assert_same(trainer.method.frozen_inputs["probe"].state_dict(), probed)
    assert not any(k.startswith("frozen_inputs") for k in load_checkpoint(out / "last.pt")["model"])
    assert [r["name"] for r in trainer.records] == ["pretrain", "probe", "distil"]


def test_resume_with_changed_stage_settings_is_refused(h5, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    Trainer(RunConfig(data=str(h5), out=str(out), **PROBE)).fit()
    evaluate = ["evaluate", "--methods", "probe_test", "--folds", "1", "--data", str(h5), "--out",
                str(tmp_path / "ev"), "--device", "cpu", "--no-progress"]
    assert main(evaluate) == 0
    monkeypatch.setattr(ProbeMethod, "probe_lr", 1e-3)     # the run's preset is unchanged: only a stage's
    with pytest.raises(UserError, match=r"different run \(stages\.probe\.preset\.lr: checkpoint 0\.005 vs now 0\.001\)"):
        Trainer(RunConfig(data=str(h5), out=str(out), resume=True, **PROBE)).fit()
    capsys.readouterr()
    assert main(evaluate + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "probe_test_fold1_full.json was made with other settings (stages.probe.preset.lr: result 0.005 vs now 0.001)" \
        in err, err


# ------------------------------------------------------------------ ME-GraphAU through the engine


def test_megraphau_stage2_starts_from_stage1_and_the_result_records_every_stage(h5, tmp_path, monkeypatch):
    started = {}
    original = MEGraphAU.init_from_stage

    def spy(self, stage, source):
        report = original(self, stage, source)
        started["stage2"], started["stage1"] = weights(self), weights(source)
        return report

    monkeypatch.setattr(MEGraphAU, "init_from_stage", spy)
    out = tmp_path / "run"
    code = main(["train", "--method", "megraphau", "--data", str(h5), "--out", str(out), "--preset", "tiny",
                 "--image-size", "32", "--batch-size", "8", "--epochs", "1", "--device", "cpu", "--no-progress"])
    assert code == 0
    stage1 = load_checkpoint(out / "final_stage1.pt")["model"]
    assert_same(started["stage1"], stage1)          # stage 2 was initialised from stage 1's final weights
    shared = [k for k in started["stage2"] if k in stage1]
    assert len(shared) > 100 and any(k.startswith("net.backbone.") for k in shared)
    assert_same(started["stage2"], stage1, shared)
    final = load_checkpoint(out / "last.pt")
    assert final["stage"] == {"index": 1, "name": "stage2"}
    assert any(k.startswith("net.head.gem.") for k in final["model"])          # the stage-2 network is tested
    moved = [k for k in shared if not torch.equal(final["model"][k], stage1[k])]
    assert moved                                                               # ... and nothing was frozen
    steps = {p["step"].item() for p in final["optimizer"]["state"].values()}
    assert steps == {5}                           # a fresh optimiser: stage 2's 5 steps, not 10
    assert final["optimizer"]["param_groups"][0]["initial_lr"] == 5e-4          # the stage-2 rate

    result = json.loads((out / "result.json").read_text())
    stages = result["stages"]
    assert [s["name"] for s in stages] == ["stage1", "stage2"]
    assert [(s["epochs"], s["steps"]) for s in stages] == [(1, 5), (1, 5)]
    assert [s["init_from"] for s in stages] == [None, "stage1"]
    assert stages[0]["initialisation"].startswith("random") and stages[1]["initialisation"].startswith("from stage1")
    assert all(s["frozen"] == [] and s["frozen_inputs"] == [] and s["uses_labels"] for s in stages)
    assert set(stages[0]["final_losses"]) == {"loss", "au"} and set(stages[1]["final_losses"]) == {"loss", "au", "edge"}
    assert [s["preset"]["lr"] for s in stages] == [2e-3, 5e-4]
    assert result["training"]["steps"] == 10 and result["occlusion"] == {"train": "none", "test": "none"}


KILL_SCRIPT = """
import json, os, signal, sys
import aubench.models
from aubench.engine.config import RunConfig
from aubench.engine.trainer import Trainer
stage, step, config = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])

def kill(state, parts):
    if state.stage == stage and state.step == step:
        os.kill(os.getpid(), signal.SIGKILL)

Trainer(RunConfig(**config), step_callback=kill).fit()
"""


def trained_once(h5, out, run: dict):
    """A Trainer fitted uninterrupted on `h5` into `out` with `run` (RunConfig fields): the
    reference a killed and resumed run must match."""
    trainer = Trainer(RunConfig(data=str(h5), out=str(out), **run))
    trainer.fit()
    return trainer


def resumed_run(config: dict):
    """A Trainer that resumes `config`'s killed run and trains it to the end, the global RNGs
    scrambled first: only the checkpoint can restore them."""
    torch.manual_seed(12345)
    resumed = Trainer(RunConfig(resume=True, **config))
    resumed.fit()
    return resumed


def kill_inside(config: dict, stage: str, step: int, timeout: int = 600) -> dict:
    """Train with `config` (RunConfig fields) in a child process killed by SIGKILL right after
    optimiser step `step` of `stage`; the checkpoint it left."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, stage, str(step), json.dumps(config)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return load_checkpoint(Path(config["out"]) / CHECKPOINT_NAME)


@pytest.fixture(scope="module")
def uninterrupted(h5, tmp_path_factory):
    trainer = Trainer(RunConfig(data=str(h5), out=str(tmp_path_factory.mktemp("full") / "run"), **MEGRAPH))
    trainer.fit()
    return trainer


# (stage, step the process is killed after, checkpoint interval): inside stage 1; inside stage 2;
# in stage 2 before its first checkpoint, so last.pt is stage 1's last.
@pytest.mark.parametrize("stage, step, every", [("stage1", 7, 1), ("stage2", 7, 1), ("stage2", 1, 2)])
def test_a_killed_process_resumes_bit_identical_inside_any_stage(h5, tmp_path, uninterrupted, stage, step, every):
    out = tmp_path / "run"
    config = dict(data=str(h5), out=str(out), checkpoint_every=every, **MEGRAPH)
    saved = kill_inside(config, stage, step, timeout=300)
    if every == 1:
        assert saved["stage"]["name"] == stage and saved["train_state"]["step"] == step
        assert saved["train_state"]["batch_in_epoch"] == 2                      # mid-epoch (epoch 2 of 2)
    else:
        assert saved["stage"]["name"] == "stage1" and saved["train_state"]["epoch"] == 2   # stage 1 finished
    stage1_file = (out / "final_stage1.pt").read_bytes() if stage == "stage2" else None

    torch.manual_seed(12345)   # scramble the global RNGs: only the checkpoint can restore them
    np.random.seed(999)
    resumed = Trainer(RunConfig(resume=True, **config))
    resumed.fit()
    assert_same(weights(resumed.method), weights(uninterrupted.method))
    assert [r["steps"] for r in resumed.records] == [r["steps"] for r in uninterrupted.records] == [10, 10]
    assert [r["final_losses"] for r in resumed.records] == [r["final_losses"] for r in uninterrupted.records]
    log = events(out)
    after = log[max(i for i, r in enumerate(log) if r["event"] == "resume"):]
    trained_again = {r["stage"] for r in after if r["event"] == "step"}
    assert trained_again == ({"stage1", "stage2"} if stage == "stage1" else {"stage2"})  # stage 1 not retrained
    if stage1_file is not None:
        assert (out / "final_stage1.pt").read_bytes() == stage1_file
    assert resumed.evaluate() == uninterrupted.evaluate()


def test_megraphau_is_listed_and_benchmarked_as_tested(capsys):
    from aubench.bench import benchmark_method, count_params

    assert main(["methods"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "megraphau" in line)
    assert "stages: stage1 -> stage2" in line
    record = benchmark_method("megraphau", 12, "tiny", "cpu", batch_size=2, warmup=0, iters=1, train=False)
    stage2 = MEGraphAU(12, MEGraphAU.stages(MEGraphAU.presets["tiny"])[-1].preset)
    assert record["stage"] == "stage2"
    assert record["params_m"] == pytest.approx(count_params(stage2.inference_model()) / 1e6)


def test_a_method_that_cannot_be_built_for_the_data_is_one_line_before_training(tmp_path, capsys):
    five = write_au_h5(tmp_path / "five.h5", num_subjects=6, sequence_lengths=(6, 5))   # no default K for 5 AUs
    code = main(["evaluate", "--methods", "resnet,megraphau", "--folds", "1", "--data", str(five), "--out",
                 str(tmp_path / "ev"), "--device", "cpu", "--no-progress", "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith("aubench: error: method 'megraphau' (stage 'stage1') cannot be built for 5 AUs"), err
    assert not (tmp_path / "ev" / "results").exists()          # refused before resnet trained


# ------------------------------------------------------------------ occlusion conditions


def test_test_occlusion_masks_are_the_same_in_every_evaluation(h5):
    from aubench.engine.data_access import open_run_data

    data = open_run_data(h5, 1)
    preset = MEGraphAU.presets["tiny"]
    first, again = (data.test_dataset("frame", preset, ("patches", 0.5)) for _ in range(2))
    masks = [first[i]["occlusion"] for i in range(3)]
    assert all(m.any() and not m.all() for m in masks)
    assert all(torch.equal(m, again[i]["occlusion"]) for i, m in enumerate(masks))
    assert not torch.equal(masks[0], masks[1])                  # per frame, not one mask for all
    assert "occlusion" not in data.test_dataset("frame", preset)[0]


def test_an_occlusion_sweep_trains_once_and_writes_one_result_per_condition(h5, tmp_path, capsys):
    out = tmp_path / "ev"
    args = ["evaluate", "--methods", "megraphau", "--folds", "1", "--data", str(h5), "--out", str(out),
            "--train-occlusion", "none", "--test-occlusion", "none,patches:0.5", "--preset", "tiny",
            "--image-size", "32", "--batch-size", "8", "--epochs", "1", "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    results = out / "results"
    plain, occluded = results / "megraphau_fold1_full.json", results / "megraphau_fold1_full_test-patches0.5.json"
    assert sorted(p.name for p in results.glob("*.json")) == sorted([plain.name, occluded.name])
    assert sorted(p.name for p in results.glob("*.predictions.npz")) == sorted(  # each result has its own
        [p.with_suffix(".predictions.npz").name for p in (plain, occluded)])
    a, b = json.loads(plain.read_text()), json.loads(occluded.read_text())
    assert (a["protocol"], a["occlusion"]) == ("full", {"train": "none", "test": "none"})
    assert (b["protocol"], b["occlusion"]) == ("full", {"train": "none", "test": "patches0.5"})
    assert a["stages"] == b["stages"] and a["metrics"] != b["metrics"]
    run = out / "runs" / "megraphau" / "full" / "fold1"
    assert sum(r["event"] == "start" for r in events(run)) == 2         # trained once: one start per stage

    # A result lost (a run killed after testing one condition): --resume tests it again with the
    # trained checkpoint, trains nothing, and keeps the other result.
    kept = plain.read_bytes()
    occluded.unlink()
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    assert plain.read_bytes() == kept and json.loads(occluded.read_text())["metrics"] == b["metrics"]
    log = events(run)
    again = log[next(i for i, r in enumerate(log) if r["event"] == "resume"):]
    assert again[0]["stage"] == "stage2" and not any(r["event"] == "step" for r in again)   # nothing trained
    assert sum(r["event"] == "evaluate" for r in again) == 1
    assert "kept" in capsys.readouterr().out


def test_the_training_occlusion_belongs_to_the_run(h5, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--method", "resnet", "--data", str(h5), "--out", str(out), "--preset", "tiny", "--image-size",
            "32", "--batch-size", "8", "--epochs", "1", "--device", "cpu", "--no-progress"]
    assert main(base + ["--train-occlusion", "block:0.30"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["protocol"] == "full" and result["occlusion"] == {"train": "block0.3", "test": "none"}
    assert result["config"]["train_occlusion"] == "block:0.3"
    capsys.readouterr()
    assert main(base + ["--resume"]) == 2
    assert "train_occlusion: checkpoint 'block0.3' vs now None" in capsys.readouterr().err
    assert main(base + ["--train-occlusion", "circle:0.3"]) == 2
    assert "argument --train-occlusion:" in capsys.readouterr().err
    from aubench.data import FrameDataset

    trainer = Trainer(RunConfig(data=str(h5), out=str(tmp_path / "x"), method="resnet", image_size=32,
                                train_occlusion="patches:0.5", device="cpu", progress=False))
    item = trainer.train_dataset()[0]
    assert isinstance(trainer.train_dataset(), FrameDataset) and item["occlusion"].any()
