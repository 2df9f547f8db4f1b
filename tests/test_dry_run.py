"""`aubench evaluate --dry-run`: every method's paper preset built and stepped once on CPU on small
files at the paper's image size, with the preset's batch, epochs and memory reported, and nothing
written."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from aubench.cli import main
from aubench.engine.config import RunConfig
from aubench.engine.dry_run import dry_run
from aubench.engine.evaluate import EvaluateRequest
from aubench.engine.planning import resolve_preset, run_stages
from aubench.errors import UserError
from aubench.models import method_class
from aubench.reported import AUS
from fixtures_h5 import write_au_h5

TRAIN_FRAMES = 4 * (7 + 12 + 3)   # fold 1 of the fixture: 4 training subjects, sequences of 7, 12, 3 frames
TRAIN_SEQUENCES = 4 * 3
# The paper presets by the image size they train at (vivit and regnet-tf: Aff-Wild2's 112 px faces).
PAPER_SIZES = {224: ["resnet", "megraphau", "maefau", "ks", "rrl"], 112: ["vivit", "regnet-tf"]}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """BP4D-like files (12 AUs, 68 landmarks) at 224 and 112 px."""
    root = tmp_path_factory.mktemp("dry")
    rows = 6 * (7 + 12 + 3)
    out = {}
    for size in PAPER_SIZES:
        points = np.random.default_rng(size).uniform(0.2 * size, 0.8 * size, (rows, 68, 2)).astype(np.float32)
        out[size] = write_au_h5(root / f"bp4d{size}.h5", schema_version=2, image_size=(size, size),
                                landmarks=points, au_names=AUS["BP4D"])
    return out


def expected_steps(samples: int, batch: int) -> int:
    """Steps per epoch of the engine's loader: a last partial batch is dropped unless it is the only one."""
    return samples // batch if samples > batch else 1


@pytest.mark.slow  # about a minute on a 2-core CPU: ViT-B, Swin-B and ResNet-50 steps at 224 px
def test_every_paper_preset_is_built_and_stepped(files, tmp_path):
    out = tmp_path / "never"
    checks = []
    for size, methods in PAPER_SIZES.items():
        run = RunConfig(method="", data=str(files[size]), preset="paper", device="cpu", progress=False)
        checks += dry_run(EvaluateRequest(methods=methods, run=run, out=str(out)))
    assert not out.exists()
    for size, methods in PAPER_SIZES.items():
        for name in methods:
            cls = method_class(name)
            preset = resolve_preset(cls, RunConfig(method=name, data="", preset="paper"), "BP4D")
            stages = run_stages(cls, preset)
            mine = [c for c in checks if c.method == name]
            assert [c.stage for c in mine] == [s.name for s in stages], name
            for check, stage in zip(mine, stages):
                where = f"{name} {stage.name}"
                assert check.preset == preset.name == ("paper-bp4d" if name in ("megraphau", "maefau") else "paper")
                assert (check.batch, check.epochs) == (stage.preset.batch_size, stage.preset.epochs), where
                assert check.initialisation.startswith(f"from {stage.init_from}" if stage.init_from else "random"), where
                window = cls.window_training
                assert check.step_batch == (1 if window else 2) and not check.measured, where
                assert check.step_frames == (8 if window else stage.preset.clip_len), where
                samples = TRAIN_SEQUENCES if window else TRAIN_FRAMES
                assert check.steps_per_epoch == expected_steps(samples, check.batch_per_gpu), where
                with torch.device("meta"):
                    built = cls(12, stage.preset)
                assert check.params == sum(p.numel() for p in built.parameters()), where
                parts = check.parts
                assert check.memory == sum(parts.values()), where
                assert parts["weights"] >= 4 * check.params and parts["gradients"] == 4 * check.trained_params, where
                state_per_parameter = {"adamw": 8, "adam": 8, "sgd": 4 if stage.preset.momentum else 0}
                assert parts["optimiser"] >= state_per_parameter[stage.preset.optimizer] * check.trained_params, where
                assert parts["activations"] > 0, where


def test_dry_run_on_the_command_line(files, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["evaluate", "--methods", "resnet,megraphau", "--data", str(files[112]), "--out", str(out),
                 "--dry-run", "--image-size", "32", "--batch-size", "8", "--device", "cpu", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[aubench] preset: tiny (the default")
    stages = [line for line in lines if "steps/epoch" in line]
    assert [line.split(":")[0].split()[-1] for line in stages] == ["train", "stage1", "stage2"]
    assert all("batch 8 (8 per GPU)" in line and "estimated on cpu from a step at batch 2" in line for line in stages)
    assert not out.exists()


def test_dry_run_loads_the_pretrained_weights(files, tmp_path):
    cls = method_class("resnet")
    weights = tmp_path / "tiny_backbone.pth"
    torch.save(cls(12, cls.presets["tiny"]).net.backbone.state_dict(), weights)
    run = RunConfig(method="", data=str(files[112]), preset="tiny", image_size=32, device="cpu", progress=False,
                    pretrained=str(weights))
    check, = dry_run(EvaluateRequest(methods=["resnet"], run=run, out=str(tmp_path / "never")))
    assert "tiny_backbone.pth" in check.initialisation and not check.initialisation.startswith("random")
    with pytest.raises(UserError):
        dry_run(EvaluateRequest(methods=["resnet"], run=replace(run, pretrained=str(tmp_path / "missing.pth")),
                                out=str(tmp_path / "never")))
