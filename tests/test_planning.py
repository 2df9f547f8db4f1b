"""Run planning alone (aubench.engine.planning): presets, stages, seeds, checks and the plan of a
run, without building a trainer or training anything."""
from __future__ import annotations

import pytest
import torch

import aubench.models  # noqa: F401  (registers the methods)
from aubench.engine.config import RunConfig
from aubench.engine.planning import (check_pretraining, check_selection, check_stage_preset, condition_text,
                                     parse_occlusion_option, plan_run, resolve_preset, run_stages, stage_seed)
from aubench.errors import UserError
from aubench.models import method_class

from fixtures_h5 import write_au_h5

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    return write_au_h5(tmp_path_factory.mktemp("planning") / "tiny.h5", num_subjects=6, sequence_lengths=(6, 5),
                       image_size=(32, 32))


def test_stage_seeds_keep_the_run_seed_first_and_differ_after():
    assert stage_seed(7, 0) == 7
    assert stage_seed(7, 1) == stage_seed(7, 1) != stage_seed(7, 2)
    assert stage_seed(7, 1) != stage_seed(8, 1)


def test_occlusion_options_are_parsed_and_spelled_one_way():
    assert condition_text(parse_occlusion_option("--train-occlusion", "patches:0.50")) == "patches:0.5"
    assert condition_text(parse_occlusion_option("--train-occlusion", "none")) == "none"
    with pytest.raises(UserError, match=r"^--test-occlusion 'dots:0.5': "):
        parse_occlusion_option("--test-occlusion", "dots:0.5")


def test_resolve_preset_applies_the_overrides():
    cls = method_class("resnet")
    config = RunConfig(method="resnet", data="unused.h5", epochs=3, batch_size=6, image_size=48,
                       train_occlusion="block:0.30", model={"backbone": "test_resnet"})
    preset = resolve_preset(cls, config)
    assert (preset.epochs, preset.batch_size, preset.image_size) == (3, 6, 48)
    assert preset.train_occlusion == "block:0.3" and preset.model["backbone"] == "test_resnet"
    assert resolve_preset(cls, RunConfig(method="resnet", data="unused.h5")).epochs == cls.presets["tiny"].epochs
    with pytest.raises(UserError, match="has no preset 'huge'"):
        resolve_preset(cls, RunConfig(method="resnet", data="unused.h5", preset="huge"))


def test_checks_name_the_option():
    with pytest.raises(UserError, match=r"^--select best-val chooses on a validation split"):
        check_selection(RunConfig(method="resnet", data="unused.h5", select="best-val"))
    with pytest.raises(UserError, match=r"^--thresholds 'best'"):
        check_selection(RunConfig(method="resnet", data="unused.h5", thresholds="best"))
    cls = method_class("resnet")
    stages = run_stages(cls, resolve_preset(cls, RunConfig(method="resnet", data="unused.h5", batch_size=2)))
    check_stage_preset(cls, stages, stages[0], world_size=1)
    with pytest.raises(UserError, match=r"^--batch-size 2 leaves fewer than 2 samples .* use at least 4, or at most 1 process$"):
        check_stage_preset(cls, stages, stages[0], world_size=2)
    with pytest.raises(UserError, match="^--pretrain-data: resnet has no pre-training stage"):
        check_pretraining("resnet", stages, "frames.h5")


def test_plan_run_resolves_the_config_and_its_identity(h5):
    config = RunConfig(method="resnet", data=str(h5), image_size=32, batch_size=4, epochs=1,
                       train_occlusion="patches:0.50", model={"backbone": "test_resnet"})
    plan = plan_run(config, world_size=1, device=CPU)
    assert plan.config.preset == plan.preset.name == "tiny"
    assert plan.config.train_occlusion == "patches:0.5" and plan.train_occlusion == ("patches", 0.5)
    assert plan.precision == "fp32" and [stage.name for stage in plan.stages] == ["train"]
    assert plan.identity == plan_run(config, world_size=1, device=CPU).identity
    assert plan.identity != plan_run(RunConfig(**{**config.__dict__, "seed": 1}), world_size=1, device=CPU).identity
    with pytest.raises(UserError, match=r"^--label-ratio must be in \(0, 1\]"):
        plan_run(RunConfig(**{**config.__dict__, "label_ratio": 0.0}), world_size=1, device=CPU)
    with pytest.raises(UserError, match="unknown method 'nope'"):
        plan_run(RunConfig(**{**config.__dict__, "method": "nope"}), world_size=1, device=CPU)


def test_a_run_config_followed_through_a_run_enters_no_module_more_than_six_times(h5, tmp_path):
    """Following a RunConfig from train_and_evaluate (every aubench function it is handed to, as
    an argument or inside another object, in call order; consecutive calls in one module are one
    stop): no module is entered more than 6 times. A method reading its own self.config is not a
    stop: the config is where it was."""
    import sys
    from collections import Counter

    from aubench.engine.run import train_and_evaluate

    config = RunConfig(method="resnet", data=str(h5), out=str(tmp_path / "run"), image_size=32, batch_size=8,
                       epochs=1, progress=False, device="cpu", model={"backbone": "test_resnet"})
    stops: list[str] = []

    def handed_the_config(frame) -> bool:
        own = frame.f_locals.get("self")
        return any(isinstance(value, RunConfig)
                   or (value is not own and isinstance(getattr(value, "config", None), RunConfig))
                   for value in frame.f_locals.values())

    def tracer(frame, event, arg):
        module = frame.f_globals.get("__name__", "")
        if event == "call" and module.startswith("aubench.") and handed_the_config(frame):
            if not stops or stops[-1] != module:
                stops.append(module)

    sys.settrace(tracer)
    try:
        train_and_evaluate(config)
    finally:
        sys.settrace(None)
    entries = Counter(stops)
    assert entries["aubench.engine.planning"] >= 1 and entries["aubench.engine.trainer"] >= 1  # the trace saw the path
    assert max(entries.values()) <= 6, (entries, stops)
