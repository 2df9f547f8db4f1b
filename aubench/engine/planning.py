"""Run planning: from a RunConfig and the data file's metadata to what a run will do, checked
before anything is built or trained: the resolved preset (`paper` by the file's dataset, the
run's overrides), the stages, the training occlusion, the --pretrained sources by part with their
identity, the run identity, and the checks of each (one-line UserErrors naming the option).

Pure functions of their arguments (check_stages_build builds each stage's method on the meta
device, without memory; resolve_pretrained reads the --pretrained files' tensors to name them
by sha256); aubench.engine.trainer calls them in order, and `aubench evaluate` calls the same
checks before its first run.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from aubench.data.occlusion import condition_name, parse_condition
from aubench.engine.config import RunConfig
from aubench.engine.data_access import PretrainData, RunData, open_pretrain_data, open_run_data
from aubench.engine.device import resolve_precision
from aubench.engine.identity import SELECTIONS, THRESHOLDS, run_identity
from aubench.errors import UserError
from aubench.models.backbones import BackboneError, WeightsError, digest_source, source_name
from aubench.models.base import (WEIGHTS_SETTING, AUMethod, Preset, Stage, check_image_size, check_stages,
                                 dataset_preset_name, method_class, variant_settings)


def parse_occlusion_option(option: str, text: str) -> tuple[str, float] | None:
    """parse_condition with a UserError naming the option."""
    try:
        return parse_condition(text)
    except ValueError as err:
        raise UserError(f"{option} {text!r}: {err}") from None


def condition_text(occlusion: tuple[str, float] | None) -> str:
    """A parsed condition as the command line writes it, one spelling per condition
    ("patches:0.50" -> "patches:0.5")."""
    return "none" if occlusion is None else f"{occlusion[0]}:{occlusion[1]:g}"


def train_occlusion(preset: Preset) -> tuple[str, float] | None:
    """The parsed training occlusion of a resolved preset (resolve_preset)."""
    return parse_condition(preset.train_occlusion)


def run_stages(method_cls: type[AUMethod], preset: Preset) -> list[Stage]:
    """The method's stages for the resolved preset, checked (names, references to earlier stages)."""
    return check_stages(method_cls.name, list(method_cls.stages(preset)))


def config_identity(config: RunConfig, preset: Preset, stages: list[Stage], fingerprint: str,
                    precision: str, pretrain_fingerprint: str | None = None) -> dict[str, Any]:
    """The run identity (aubench.engine.identity.run_identity) of a request; `preset` resolved
    (resolve_preset), so its train_occlusion is the run's; its --pretrained weights by name and
    sha256 (resolve_pretrained)."""
    config = resolve_pretrained(method_class(config.method), config)
    train = condition_name(train_occlusion(preset))
    return run_identity({**asdict(config), "train_occlusion": train}, preset.__dict__, fingerprint, precision,
                        [stage.settings() for stage in stages], pretrain_fingerprint)


CHECKPOINT_PART = "checkpoint"  # resolve_pretrained's part for an aubench checkpoint: the whole first stage


def resolve_pretrained(method_cls: type[AUMethod], config: RunConfig) -> RunConfig:
    """`config` with its --pretrained sources by part: a bare source (a string, or part "") goes
    to the method's main part (the first of AUMethod.pretrained_parts), or, when it is an aubench
    checkpoint, to CHECKPOINT_PART (the whole first stage's method); and pretrained_weights set:
    each source's name (its timm name, or the file's name without its folder) and the sha256 of
    its tensors. UserError, one line naming the argument, for a part the method does not have,
    an aubench checkpoint given to a part or beside other sources, or a source that cannot be read.
    A resolved config comes back as it is."""
    if not config.pretrained or config.pretrained_weights is not None:
        return config
    given = {"": config.pretrained} if isinstance(config.pretrained, str) else config.pretrained
    parts = list(method_cls.pretrained_parts)
    sources, weights = {}, {}
    for part, source in given.items():
        argument = f"--pretrained {part + '=' if part else ''}{source}"
        if part and part not in parts:
            raise UserError(f"{argument}: method {method_cls.name!r} has no pretrained part {part!r} (its parts: "
                            f"{', '.join(parts) or 'none'}; `aubench methods` says what each is)")
        try:
            digest = digest_source(source)
        except BackboneError as err:
            raise UserError(f"--pretrained {err}") from None
        if digest.aubench_checkpoint:
            if part or len(given) > 1:
                raise UserError(f"{argument}: an aubench checkpoint initialises the whole method; give it alone, "
                                f"without PART=")
            part = CHECKPOINT_PART
        elif not parts:
            raise UserError(f"{argument}: method {method_cls.name!r} takes no pretrained weights (an aubench "
                            f"checkpoint of it, only)")
        part = part or parts[0]
        if part in sources:
            raise UserError(f"{argument}: part {part!r} is given twice (a bare SOURCE is {parts[0]!r})")
        sources[part] = source
        weights[part] = {"name": source_name(source), "sha256": digest.sha256}
    return replace(config, pretrained=sources, pretrained_weights=weights)


def part_sources(config: RunConfig) -> dict[str, str]:
    """The --pretrained sources by part that stages' methods load (an aubench checkpoint aside),
    of a config resolved by resolve_pretrained."""
    return {part: source for part, source in (config.pretrained or {}).items() if part != CHECKPOINT_PART}


def with_weights(preset: Preset, weights: dict[str, str] | None) -> Preset:
    """`preset` with the --pretrained sources by part its method loads (WEIGHTS_SETTING), if any."""
    if not weights:
        return preset
    return Preset(**{**preset.__dict__, "model": {**preset.model, WEIGHTS_SETTING: dict(weights)}})


def check_selection(config: RunConfig) -> None:
    """UserError naming the option for a --select / --thresholds value that is not one, or one
    that chooses on a validation split the run does not have (--validation)."""
    for option, value, known in (("--select", config.select, SELECTIONS),
                                 ("--thresholds", config.thresholds, THRESHOLDS)):
        if value not in known:
            raise UserError(f"{option} {value!r} is not one of {', '.join(known)}")
        if value == "best-val" and not config.validation:
            raise UserError(f"{option} best-val chooses on a validation split: add --validation R (a share of "
                            f"the fold's training subjects to hold out, e.g. 0.2)")


def check_pretraining(method: str, stages: list[Stage], pretrain_data: str | None) -> None:
    """UserError when --pretrain-data is given to a method without a pre-training stage, or a
    pre-training stage would see labels."""
    for stage in stages:
        if stage.pretraining and stage.uses_labels:
            raise UserError(f"{method} stage {stage.name!r}: a pre-training stage must use no labels")
    if pretrain_data is not None and not any(stage.pretraining for stage in stages):
        raise UserError(f"--pretrain-data: {method} has no pre-training stage")


def check_stages_build(method_cls: type[AUMethod], num_aus: int, stages: list[Stage],
                       weights: dict[str, str] | None = None) -> None:
    """Build every stage's method on the meta device (no memory, milliseconds), so a setting the
    method refuses (a ValueError, e.g. no default for this number of AUs) is a UserError before
    anything trains, not after the first stage. With `weights` (--pretrained sources by part)
    each stage loads its parts dry: a source that does not fit (names, shapes) is refused too."""
    for stage in stages:
        try:
            with torch.device("meta"):
                method_cls(num_aus, with_weights(stage.preset, weights), None)
        except WeightsError as err:
            raise UserError(f"--pretrained {err}") from None
        except ValueError as err:  # BackboneError is one too
            where = "" if len(stages) == 1 else f" (stage {stage.name!r})"
            raise UserError(f"method {method_cls.name!r}{where} cannot be built for {num_aus} AUs with preset "
                            f"{stage.preset.name!r}: {err}") from None


def stage_seed(seed: int, index: int) -> int:
    """The seed stage `index` starts from: the run's seed for the first stage (as before stages
    existed), one derived from (seed, index) for the others."""
    if index == 0:
        return seed
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def accumulation_choices(batch: int, processes: int) -> list[int]:
    """The --accumulate values K that train global batch `batch` on `processes` processes with at
    least 2 samples per training step on each (batch norm cannot train on one): K = 1 when
    batch // processes >= 2 (a batch not divisible by the processes trains batch // processes on
    each, as before accumulation existed); K > 1 when batch = per-process batch x processes x K exactly."""
    return [k for k in range(1, batch // (2 * processes) + 1)
            if k == 1 or batch % (processes * k) == 0 and batch // (processes * k) >= 2]


def _or_list(values: list[int]) -> str:
    """"1, 2, 4 or 8"."""
    text = [str(v) for v in values]
    return text[0] if len(text) == 1 else f"{', '.join(text[:-1])} or {text[-1]}"


def _processes(count: int) -> str:
    return f"{count} process" if count == 1 else f"{count} processes"


def check_sync_bn(config: RunConfig, world_size: int, device: torch.device) -> None:
    """UserError for --sync-bn with several processes off the GPU: SyncBatchNorm trains on GPUs only."""
    if config.sync_bn and world_size > 1 and device.type != "cuda":
        raise UserError(f"--sync-bn synchronises batch statistics across GPUs; these {world_size} processes run "
                        f"on {device.type} (use --device cuda, or leave --sync-bn out)")


def check_stage_preset(method_cls: type[AUMethod], stages: list[Stage], stage: Stage, world_size: int,
                       accumulate: int = 1) -> None:
    """UserError for a stage's preset that cannot train: no epochs; a global batch that `world_size`
    processes with `accumulate` micro-batches per optimiser step cannot give (accumulation_choices:
    the message names the valid --accumulate values, or how many processes can train it); an
    image size the method refuses."""
    preset, where = stage.preset, "" if len(stages) == 1 else f" (stage {stage.name!r})"
    batch, processes = preset.batch_size, world_size
    if preset.epochs < 1:
        raise UserError(f"{method_cls.name}{where}: {preset.epochs} epochs; a stage trains at least 1")
    choices = accumulation_choices(batch, processes)
    fits = (f"use --accumulate {_or_list(choices)}" if choices else
            f"no --accumulate fits {_processes(processes)}: use at most {batch // 2}")
    if accumulate > 1 and accumulate not in choices:
        micro = batch // (processes * accumulate)
        why = (f"is not divisible by {_processes(processes)} x {accumulate}" if batch % (processes * accumulate)
               else f"leaves {micro} sample per training step on each of {_processes(processes)}")
        raise UserError(f"--accumulate {accumulate}: global batch {batch}{where} {why}; {fits}")
    if accumulate == 1 and batch // processes < 2:  # batch norm cannot train on one sample
        raise UserError(f"--batch-size {batch}{where} leaves fewer than 2 samples per training step "
                        f"on each of {processes} process(es); use at least {2 * processes}, or at most "
                        f"{_processes(batch // 2)}")
    check_image_size(method_cls, preset)


def resolve_preset(method_cls: type[AUMethod], config: RunConfig, dataset: str | None = None) -> Preset:
    """The method's preset with the run's overrides (epochs, batch size, image size, training
    occlusion, model settings). `paper` on a file of `dataset` (AUFile.dataset) is the method's
    preset for that dataset where it has one (dataset_preset_name: "paper-disfa"); the returned
    preset's name is the one used. Its train_occlusion is the run's, spelled one way (condition_text)."""
    if config.preset not in method_cls.presets:
        raise UserError(f"method {config.method!r} has no preset {config.preset!r}; "
                        f"presets: {', '.join(sorted(method_cls.presets))}")
    base = method_cls.presets[dataset_preset_name(method_cls, config.preset, dataset)]
    if config.train_occlusion is not None:
        occlusion = parse_occlusion_option("--train-occlusion", config.train_occlusion)
    else:
        try:
            occlusion = parse_condition(base.train_occlusion)
        except ValueError as err:  # a mistake in the method's code, not the user's
            raise ValueError(f"method {config.method!r} preset {base.name!r}: train_occlusion: {err}") from None
    try:
        variant = variant_settings(method_cls, config.variant)
    except ValueError as err:
        raise UserError(str(err)) from None
    return Preset(**{**base.__dict__, "model": {**base.model, **variant, **config.model},
                     "train_occlusion": condition_text(occlusion),
                     "epochs": config.epochs if config.epochs is not None else base.epochs,
                     "batch_size": config.batch_size if config.batch_size is not None else base.batch_size,
                     "image_size": config.image_size if config.image_size is not None else base.image_size})


@dataclass
class RunPlan:
    """What a run will do (plan_run)."""

    config: RunConfig              # resolved: the preset used, the training occlusion, --pretrained by part
    method_cls: type[AUMethod]
    data: RunData                  # the fold's data (and its validation split)
    preset: Preset                 # resolve_preset's
    stages: list[Stage]
    train_occlusion: tuple[str, float] | None
    precision: str                 # resolved: fp32 / fp16 / bf16
    pretrain: PretrainData | None  # --pretrain-data
    identity: dict[str, Any]       # the run identity (config_identity)


def plan_run(config: RunConfig, world_size: int, device: torch.device) -> RunPlan:
    """Plan the run `config` asks for on `world_size` processes of `device`: open its data
    (metadata and labels), resolve its preset, stages, training occlusion, precision and
    --pretrained sources, build every stage's method on the meta device; UserError at the first
    check that fails, in that order."""
    try:
        method_cls = method_class(config.method)
    except KeyError as err:
        raise UserError(err.args[0]) from None
    check_selection(config)
    # `paper` picks its preset by the dataset; --validation holds training subjects out
    data = open_run_data(config.data, config.fold, config.validation, config.seed)
    preset = resolve_preset(method_cls, config, data.dataset)
    if not 0 < config.label_ratio <= 1:
        raise UserError(f"--label-ratio must be in (0, 1], got {config.label_ratio}")
    if preset.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {preset.epochs}")
    if config.accumulate < 1:
        raise UserError(f"--accumulate must be at least 1, got {config.accumulate}")
    check_sync_bn(config, world_size, device)
    stages = run_stages(method_cls, preset)
    for stage in stages:
        check_stage_preset(method_cls, stages, stage, world_size, config.accumulate)
    # The run's training occlusion, resolved (--train-occlusion, else the preset's) and spelled
    # one way ("patches:0.50" -> "patches:0.5") in checkpoints and results.
    config = replace(config, preset=preset.name, train_occlusion=preset.train_occlusion)
    precision = resolve_precision(config.precision, device)
    config = resolve_pretrained(method_cls, config)
    check_stages_build(method_cls, data.num_aus, stages, part_sources(config))
    check_pretraining(config.method, stages, config.pretrain_data)
    pretrain = open_pretrain_data(config.pretrain_data, data) if config.pretrain_data else None
    identity = config_identity(config, preset, stages, data.fingerprint, precision,
                               pretrain.fingerprint if pretrain else None)
    return RunPlan(config, method_cls, data, preset, stages, train_occlusion(preset), precision, pretrain, identity)
