"""One trainer for every method: stages, optimiser, schedule, mixed precision, checkpoints, resume, DDP.

A method only says what one training step computes (AUMethod.training_step) and how it
predicts; the trainer owns the loop. A method that trains in stages declares them
(AUMethod.stages, aubench.models.base.Stage); the trainer runs them in order through the same
loop, each with a fresh optimiser and its own schedule, and tests the last stage's method (or,
for a method whose stages are leaderboard rows, each row's: `Trainer.stage_method`). A
single-stage method is one stage: the preset as it is. The training occlusion (--train-occlusion,
else the preset's train_occlusion) applies to every stage but those with `occluded=False`.

Exact resume: the checkpoint (`last.pt`, replaced atomically) holds the stage being trained
(its index and name), the records of the stages already finished, and that stage's model,
optimiser, scheduler, grad-scaler and RNG states (torch / CUDA / numpy / python / method
generators, per rank) and the position in the epoch. A finished stage is never trained again:
a resumed run continues inside the stage the checkpoint names, and the final weights of every
finished stage but the last are kept in `final_<stage>.pt`, from which a later stage's frozen
inputs are restored. Every stage starts from a seed derived from (seed, stage index) only (the
first stage's is the run's seed, as before stages existed), so a stage starts the same whether
or not the run was resumed before it. Batches come from a DistributedSampler whose order
depends only on (stage seed, epoch), so a resumed run skips the batches already done (at the
index level, no images are decoded) and sees exactly the batches the killed run would have
seen next. The DataLoader draws its worker seeds from its own generator, seeded per epoch,
never from the global RNG, so creating a loader mid-epoch does not shift the random stream.
With `num_workers=0` a resumed run is bit-identical to an uninterrupted one; with workers the
data order is the same but augmentation draws come from re-seeded workers.

Validation split and checkpoint selection (docs/validation.md): with `validation` > 0 the run
trains on the fold's training subjects left after a seeded share is held out
(aubench.engine.data_access), and its label statistics come from those alone. With `select`
"best-val" each tested stage (the last stage, or every stage that is a leaderboard row) is
scored on the validation split after each of its epochs (mean F1, clean images, the labels the
protocol keeps) and the weights of its best epoch (the earliest of equal scores) are kept in
`best_<stage>.pt`; that stage is then tested with them, while later stages read the weights
each stage ended with, as they trained. "best-test" does the same on the test split, only to
measure how optimistic choosing on the test set is (its results say so); "last" (the default)
tests the last epoch. The scoring saves and restores every random state around itself, so a run
trains the same whatever it selects. The checkpoint holds the scores so far ("selection"); it is
written before the best-epoch file, and a resume finds that file from its epoch or writes it again
from the checkpoint of that epoch.
"""
from __future__ import annotations

import itertools
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler
from tqdm.auto import tqdm

from aubench.data import normalize_images
from aubench.engine.checkpoint import (capture_rng_state, kept_checkpoint_text, load_checkpoint,
                                       load_checkpoint_or_previous, load_model_state, previous_path,
                                       read_weights_file, restore_rng_state, save_checkpoint)
from aubench.data.occlusion import condition_name, parse_condition
from aubench.engine.data_access import RunData, open_pretrain_data, open_run_data
from aubench.engine.distributed import DistEnv, setup_distributed
from aubench.engine.identity import SELECTIONS, THRESHOLDS, differences_text, identity_differences, run_identity
from aubench.engine.logging import JsonlLogger, epoch_summary, plain
from aubench.engine.memory import out_of_memory_stops
from aubench.errors import TrainingStopped, UserError
from aubench.models.backbones import BackboneError, WeightsError, digest_source, source_name
from aubench.models.base import (WEIGHTS_SETTING, AUMethod, Preset, Stage, TrainState, check_image_size,
                                 check_stages, dataset_preset_name, method_class, tested_stages, variant_settings)

CHECKPOINT_NAME = "last.pt"
RESULT_NAME = "result.json"  # written beside the checkpoint by `aubench train` (test condition "none")
LOG_NAME = "log.jsonl"
# Every file a run writes into its directory (glob patterns): a fresh run replaces them together,
# so a new checkpoint never sits beside an old result, stage file or log. "result_*.json": the
# results of the other test conditions and of leaderboard rows (result_file_name).
# "result*.predictions.npz": each result's per-frame predictions (aubench.engine.predictions).
# (the validation-split predictions, <stem>.validation.predictions.npz, included)
PREDICTION_FILES = "result*.predictions.npz"
# "best_*.pt": the weights of a tested stage's selected epoch (--select best-val / best-test)
# previous_path(last.pt): the checkpoint before it, which --resume falls back to when last.pt is damaged
RUN_FILES = (CHECKPOINT_NAME, previous_path(CHECKPOINT_NAME).name, RESULT_NAME, "result_*.json", "final_*.pt",
             "best_*.pt", LOG_NAME, PREDICTION_FILES)
# Files that make a directory hold a run worth keeping (a log alone is a run that died before
# its first checkpoint: nothing to resume or to lose; a predictions file belongs to its result,
# and is nothing without it).
KEPT_RUN_FILES = tuple(name for name in RUN_FILES if name not in (LOG_NAME, PREDICTION_FILES))
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def result_file_name(test_condition: str, row: str | None = None) -> str:
    """The result file of one test condition (a condition name) in a run directory: result.json,
    result_test-<condition>.json; for a leaderboard row (Stage.row) result_<row>.json,
    result_<row>_test-<condition>.json."""
    stem = "result" if row is None else f"result_{row}"
    return f"{stem}.json" if test_condition == "none" else f"{stem}_test-{test_condition}.json"


def stage_file_name(stage: str) -> str:
    """The file of a finished stage's final weights."""
    return f"final_{stage}.pt"


def best_file_name(stage: str) -> str:
    """The file of the weights of a tested stage's selected epoch (--select best-val / best-test)."""
    return f"best_{stage}.pt"


@dataclass
class RunConfig:
    """Everything that defines one training run (saved in checkpoints and results)."""

    method: str
    data: str
    variant: str | None = None         # a named variant of the method (AUMethod.variants): its model settings
    fold: int = 1
    preset: str = "tiny"               # `paper`: the method's preset for the data file's dataset (resolve_preset)
    label_ratio: float = 1.0
    train_occlusion: str | None = None  # occlusion of the training images: none, patches:<ratio>, block:<ratio>;
                                        # None = the preset's (Preset.train_occlusion)
    epochs: int | None = None          # None = the preset's
    batch_size: int | None = None      # global batch; None = the preset's
    image_size: int | None = None      # None = the preset's
    out: str = "runs/train"
    resume: bool = False
    overwrite: bool = False            # a fresh run may replace the run files already in `out`
    # --pretrained: a source (timm:<name>, hf-hub:<id> or a file) for the method's main part, or
    # part -> source (part "" a bare source); resolve_pretrained gives it as part -> source
    pretrained: str | dict[str, str] | None = None
    # set by resolve_pretrained: part -> {"name", "sha256"} of each source, the run's identity
    # (aubench.engine.identity.pretrained_identity) instead of the sources' paths
    pretrained_weights: dict[str, dict[str, str]] | None = None
    pretrain_data: str | None = None   # the frames of pre-training stages (Stage.pretraining); None = the fold's
    device: str | None = None          # None = cuda when available
    seed: int = 0
    precision: str = "auto"            # auto = bf16 (fp16 without bf16 support) on GPU, fp32 on CPU
    workers: int | None = None         # None = 0 on CPU, 4 on GPU
    checkpoint_every: int = 0          # also checkpoint every N optimiser steps (0 = epochs only)
    log_every: int = 10
    augment: bool = True
    channels_last: bool = False        # convolution weights (and so activations) in channels-last layout
    progress: bool = True
    deterministic: bool = True
    # landmarks of an occluded test image, for methods that read them (AUMethod.test_inputs):
    # "clean" = the data file's, of the clean frame (privileged: results say so); "detect" =
    # detected on the occluded image (the faces extra), the training faces' mean shape where no
    # face is found
    occluded_landmarks: str = "clean"
    # --validation: the share of the fold's training subjects held out as a validation split,
    # drawn with `seed` (aubench.engine.data_access.validation_subjects); 0 = none
    validation: float = 0.0
    select: str = "last"               # SELECTIONS: the tested checkpoint of each tested stage
    thresholds: str = "fixed"          # THRESHOLDS: 0.5, or per AU chosen on the validation split
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's model settings


def kept_run_files(out: str | Path) -> list[str]:
    """Names of the files of an earlier run in `out` that a fresh run would replace."""
    out = Path(out)
    return [path.name for pattern in KEPT_RUN_FILES for path in sorted(out.glob(pattern))]


def clear_run_files(out: str | Path) -> None:
    """Remove every run file in `out`, with the temporaries a killed atomic write left behind."""
    out = Path(out)
    for pattern in RUN_FILES:
        for path in [*out.glob(pattern), *out.glob(f"{pattern}.*.tmp")]:
            path.unlink(missing_ok=True)


def claim_run_dir(out: str | Path, resume: bool, overwrite: bool, is_main: bool = True) -> None:
    """A fresh run (no resume) into `out`: refuse when an earlier run's checkpoint or result is
    there, unless `overwrite`; then remove all of the earlier run's files together."""
    if resume:
        return  # Trainer.restore checks that the checkpoint belongs to this run
    found = kept_run_files(out)
    if found and not overwrite:
        raise UserError(f"--out {out} already holds a run ({', '.join(found)}); pass --resume to continue it "
                        f"or --overwrite to replace it")
    if is_main:
        clear_run_files(out)


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


def freeze(module: nn.Module) -> nn.Module:
    """No gradients, eval mode (the engine keeps it there while the stage trains)."""
    module.requires_grad_(False)
    return module.eval()


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


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_precision(name: str, device: torch.device) -> str:
    if name not in PRECISIONS:
        raise UserError(f"--precision {name!r} is not one of {', '.join(PRECISIONS)}")
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return name


def autocast_context(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate after `step` optimiser steps."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":  # x0.1 at half and at three quarters of training
        return 0.1 ** sum(progress >= m for m in (0.5, 0.75))
    if schedule == "constant":
        return 1.0
    if schedule.startswith("sgdr:") and schedule[5:].isdigit() and int(schedule[5:]) >= 1:
        # cosine annealing with warm restarts (SGDR, restart period constant): `cycles` equal cycles
        cycles = int(schedule[5:])
        within = progress * cycles - math.floor(progress * cycles) if progress < 1.0 else 1.0
        return 0.5 * (1.0 + math.cos(math.pi * within))
    raise UserError(f"unknown learning-rate schedule {schedule!r} (cosine, step, constant, sgdr:<cycles>)")


def build_optimizer(method: nn.Module, preset: Preset) -> torch.optim.Optimizer:
    """The preset's optimiser. A method may expose `param_groups()` -> [{"params", "lr_scale"}]."""
    if hasattr(method, "param_groups") and callable(method.param_groups):
        groups = [{"params": [p for p in g["params"] if p.requires_grad], "lr": preset.lr * g.get("lr_scale", 1.0)}
                  for g in method.param_groups()]
    else:
        groups = [{"params": [p for p in method.parameters() if p.requires_grad], "lr": preset.lr}]
    name = preset.optimizer.lower()
    if name == "sgd":
        return torch.optim.SGD(groups, lr=preset.lr, momentum=preset.momentum, weight_decay=preset.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=preset.lr, weight_decay=preset.weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=preset.lr, weight_decay=preset.weight_decay)
    raise UserError(f"unknown optimiser {preset.optimizer!r} in preset {preset.name!r} (sgd, adamw, adam)")


class SkipBatches:
    """A batch sampler that leaves out its first `skip` batches (resuming mid-epoch)."""

    def __init__(self, batch_sampler, skip: int = 0):
        self.batch_sampler = batch_sampler
        self.skip = skip

    def __iter__(self) -> Iterator:
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)


class _StepModule(nn.Module):
    """Lets DDP wrap a method: forward is the method's training step."""

    def __init__(self, method: AUMethod):
        super().__init__()
        self.method = method

    def forward(self, batch: dict[str, torch.Tensor], state: TrainState) -> dict[str, torch.Tensor]:
        return self.method.training_step(batch, state)


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch on `device`, with uint8 images (the engine's datasets) ImageNet-normalised there."""
    non_blocking = device.type == "cuda"
    batch = {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
             for k, v in batch.items()}
    for key in ("image", "image2", "key_image"):
        if key in batch and batch[key].dtype == torch.uint8:
            batch[key] = normalize_images(batch[key])
    return batch


class Trainer:
    """Trains one method on one fold, stage by stage; `fit()` then `evaluate()` (aubench.engine.evaluator)."""

    def __init__(self, config: RunConfig, env: DistEnv | None = None,
                 step_callback: Callable[[TrainState, dict[str, float]], None] | None = None):
        self.config = config
        self.env = env or setup_distributed(config.device)
        self.device = self.env.device
        self.step_callback = step_callback
        self.out = Path(config.out)
        try:
            self.method_cls = method_class(config.method)
        except KeyError as err:
            raise UserError(err.args[0]) from None
        check_selection(config)
        # `paper` picks its preset by the dataset; --validation holds training subjects out
        self.data: RunData = open_run_data(config.data, config.fold, config.validation, config.seed)
        self.preset = resolve_preset(self.method_cls, config, self.data.dataset)
        if not 0 < config.label_ratio <= 1:
            raise UserError(f"--label-ratio must be in (0, 1], got {config.label_ratio}")
        if self.preset.epochs < 1:
            raise UserError(f"--epochs must be at least 1, got {self.preset.epochs}")
        self.stages = run_stages(self.method_cls, self.preset)
        for stage in self.stages:
            self._check_stage_preset(stage)
        # The run's training occlusion, resolved (--train-occlusion, else the preset's) and spelled
        # one way ("patches:0.50" -> "patches:0.5") in checkpoints and results.
        self.train_occlusion = train_occlusion(self.preset)
        self.config = config = replace(config, preset=self.preset.name, train_occlusion=self.preset.train_occlusion)
        self.precision = resolve_precision(config.precision, self.device)
        self.config = config = resolve_pretrained(self.method_cls, config)
        check_stages_build(self.method_cls, self.data.num_aus, self.stages, self.part_weights)
        check_pretraining(config.method, self.stages, config.pretrain_data)
        self.pretrain = open_pretrain_data(config.pretrain_data, self.data) if config.pretrain_data else None
        self.identity = config_identity(config, self.preset, self.stages, self.data.fingerprint, self.precision,
                                        self.pretrain.fingerprint if self.pretrain else None)
        if self.device.type == "cpu" and config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        # Class weights from the labels this run may see: under a label ratio < 1 the kept labels
        # only, never the file's dense per-fold statistics.
        self.label_statistics = self.data.train_label_statistics(config.label_ratio)
        self.class_weights = torch.as_tensor(self.label_statistics["class_weight"], dtype=torch.float32)
        self.records: list[dict[str, Any]] = []  # one per finished stage
        # Trained methods of earlier stages the trainer holds (what later stages read, and after
        # fit() the tested stages it has loaded), by stage name.
        self.trained: dict[str, AUMethod] = {}
        # --select best-val / best-test: the stages scored after each epoch, their scores so far
        # (stage name -> {"epochs": [{"epoch", "<split>_mean_f1"...}], "best_epoch", "best_score"}),
        # and the tested methods with their selected weights, once loaded
        self.selected_stages = ([] if config.select == "last"
                                else [stage.name for stage in tested_stages(self.stages)])
        self.selection: dict[str, dict[str, Any]] = {}
        self.selected: dict[str, AUMethod] = {}
        self.test_landmark_counts: dict[str, int] | None = None
        self.stage_index = 0
        self.method = self._build_stage(0, {})
        self.state = TrainState(epochs=self.stage.preset.epochs, stage=self.stage.name)
        self.workers = config.workers if config.workers is not None else (4 if self.device.type == "cuda" else 0)
        # Last, once everything else is known to be usable: an --overwrite never loses the old
        # run to a mistake found later.
        claim_run_dir(self.out, config.resume, config.overwrite, self.env.is_main)
        self.logger = JsonlLogger(self.out / LOG_NAME, enabled=self.env.is_main)

    @property
    def stage(self) -> Stage:
        """The stage being trained (after fit(): the last, whose method is tested)."""
        return self.stages[self.stage_index]

    def _check_stage_preset(self, stage: Stage) -> None:
        preset, where = stage.preset, "" if len(self.stages) == 1 else f" (stage {stage.name!r})"
        if preset.epochs < 1:
            raise UserError(f"{self.config.method}{where}: {preset.epochs} epochs; a stage trains at least 1")
        if preset.batch_size // self.env.world_size < 2:  # batch norm cannot train on one sample
            raise UserError(f"--batch-size {preset.batch_size}{where} leaves fewer than 2 samples per training step "
                            f"on each of {self.env.world_size} process(es); use at least {2 * self.env.world_size}")
        check_image_size(self.method_cls, preset)

    # -- construction --------------------------------------------------------------------
    def _build_stage(self, index: int, trained: dict[str, AUMethod], restoring: bool = False) -> AUMethod:
        """The method of stage `index`, built the same way in every run: seeded from (seed,
        stage), initialised (with the --pretrained parts it loads, the first stage from an
        aubench checkpoint when that is given; a later one also from its init_from stage, unless
        `restoring`, when its checkpoint holds the weights), its frozen parts
        frozen, its frozen inputs attached. `trained`: earlier stages' methods, by name."""
        stage = self.stages[index]
        seed = stage_seed(self.config.seed, index)
        seed_everything(seed)  # same initial weights on every rank
        class_weights = self.class_weights if stage.uses_labels else None
        if index == 0:
            method, self.initialisation = self._build_first_method(stage, class_weights)
        else:
            method = self._new_method(stage, class_weights, self.part_weights)
            self.initialisation = "random"
            if stage.init_from and not restoring:
                report = method.init_from_stage(stage.init_from, trained[stage.init_from])
                details = ", ".join(f"{k} {v}" for k, v in report.items())
                self.initialisation = f"from {stage.init_from}" + (f": {details}" if details else "")
        self.frozen_modules = []
        for name in stage.frozen:
            try:
                self.frozen_modules.append(freeze(method.get_submodule(name)))
            except AttributeError:
                raise ValueError(f"{self.config.method} stage {stage.name!r} freezes {name!r}, "
                                 f"which is not a submodule of its method") from None
        method.frozen_inputs = {name: freeze(trained[name]) for name in stage.frozen_inputs}
        seed_everything(seed + 1000 * self.env.rank)  # per-rank randomness from here on
        return method

    @property
    def part_weights(self) -> dict[str, str]:
        """The --pretrained sources by part that stages' methods load (an aubench checkpoint aside)."""
        return {part: source for part, source in (self.config.pretrained or {}).items() if part != CHECKPOINT_PART}

    def initialisation_text(self) -> str:
        """The run's --pretrained sources as its result's "initialisation" gives them, e.g.
        "backbone: timm:resnet18.a1_in1k (sha256 1a2b3c4d...)" (parts joined by "; ")."""
        if not self.config.pretrained:
            return "random (no --pretrained)"
        return "; ".join(f"{part}: {source} (sha256 {self.config.pretrained_weights[part]['sha256'][:8]}...)"
                         for part, source in self.config.pretrained.items())

    def _new_method(self, stage: Stage, class_weights: torch.Tensor | None,
                    weights: dict[str, str] | None = None) -> AUMethod:
        """Stage `stage`'s method, fresh; `weights`: the --pretrained sources by part it loads."""
        try:
            method = self.method_cls(self.data.num_aus, with_weights(stage.preset, weights), class_weights)
        except WeightsError as err:
            raise UserError(f"--pretrained {err}") from None
        method.preset = stage.preset
        method.set_training_data(self.data.au_names, self.label_statistics)
        if self.config.channels_last:
            method = method.to(memory_format=torch.channels_last)
        return method.to(self.device)

    def _build_first_method(self, stage: Stage, class_weights: torch.Tensor | None) -> tuple[AUMethod, str]:
        """The first stage's method with its --pretrained parts, or all of it from an aubench
        checkpoint (resolve_pretrained's CHECKPOINT_PART); and the run's initialisation_text."""
        path = (self.config.pretrained or {}).get(CHECKPOINT_PART)
        if path is None:
            return self._new_method(stage, class_weights, self.part_weights), self.initialisation_text()
        try:
            payload = read_weights_file(path)
        except UserError as err:
            raise UserError(f"--pretrained {err}") from None
        method = self._new_method(stage, class_weights)
        self._check_compatible(payload, path, same_run=False)
        try:
            missing, unexpected = method.load_state_dict(payload.get("model", {}), strict=False)
        except (RuntimeError, TypeError, AttributeError) as err:  # shapes of another preset, or no state dict
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            first = next((line for line in lines if "size mismatch" in line), lines[0] if lines else "")
            raise UserError(f"--pretrained {path} was saved by a different model ({first[:200]})") from None
        if missing or unexpected:
            raise UserError(f"--pretrained {path} was saved by a different model "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        return method, self.initialisation_text()

    def _check_compatible(self, payload: dict, path, same_run: bool) -> None:
        saved = payload.get("config", {})
        if list(saved.get("au_names", [])) != list(self.data.au_names):
            raise UserError(f"AU set mismatch: {path} was trained on AUs {saved.get('au_names')}, "
                            f"{self.config.data} has {list(self.data.au_names)}")
        if saved.get("method") != self.config.method:
            raise UserError(f"{path} holds method {saved.get('method')!r}, not {self.config.method!r}")
        if same_run:
            # The run's identity (aubench.engine.identity, stages included) and the world size,
            # which the per-rank RNG states of an exact resume need; the AU set was compared above.
            diffs = identity_differences(saved, self.checkpoint_config(), "checkpoint", ignore=("au_names", "dataset"))
            if diffs:
                raise UserError(f"--resume: {path} belongs to a different run ({differences_text(diffs)}); "
                                f"use --overwrite instead of --resume to start it again")

    def checkpoint_config(self) -> dict[str, Any]:
        return {**self.identity, "au_names": list(self.data.au_names), "world_size": self.env.world_size,
                "dataset": self.data.dataset}

    # -- data -----------------------------------------------------------------------------
    def per_rank_batch_size(self) -> int:
        return max(1, self.stage.preset.batch_size // self.env.world_size)

    def train_dataset(self):
        """The current stage's training set: the frames or clips whose labels the protocol keeps;
        every training frame for a stage that uses no labels. Occluded by the run's training
        occlusion unless the stage is not (Stage.occluded)."""
        stage, cfg = self.stage, self.config
        # A preset may turn augmentation off (model setting "augment"); --no-augment always does.
        augment = cfg.augment and bool(stage.preset.model.get("augment", True))
        if augment:
            from aubench.data import ClipAugment

            augment = self.method.train_augment() or ClipAugment(degrees=stage.preset.rotation)
        if stage.pretraining and self.pretrain is not None:
            return self.pretrain.dataset(stage.preset, augment, landmarks=self.method.uses_landmarks,
                                         views=self.method.views)
        return self.data.train_dataset(self.method.input_kind, stage.preset,
                                       cfg.label_ratio if stage.uses_labels else 1.0, augment=augment,
                                       key_view=self.method.key_view, labeled_only=stage.uses_labels,
                                       occlusion=self.train_occlusion if stage.occluded else None,
                                       landmarks=self.method.uses_landmarks, views=self.method.views,
                                       windows=self.method.window_training)

    def train_loader(self, dataset, sampler: DistributedSampler, skip_batches: int) -> DataLoader:
        batch_size = self.per_rank_batch_size()
        drop_last = len(sampler) > batch_size  # a lone 1-sample batch would break batch norm
        if self.method.input_kind == "clip" and not self.method.window_training:
            from aubench.data import KeyPositionBatchSampler

            batches = KeyPositionBatchSampler(sampler, batch_size, self.stage.preset.clip_len, drop_last=drop_last)
        else:
            batches = BatchSampler(sampler, batch_size, drop_last=drop_last)
        generator = torch.Generator().manual_seed(sampler.seed * 100_003 + sampler.epoch)
        return DataLoader(dataset, batch_sampler=SkipBatches(batches, skip_batches), num_workers=self.workers,
                          pin_memory=self.device.type == "cuda", generator=generator)

    # -- checkpoints ----------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    def save(self, optimizer, scheduler, scaler) -> None:
        rng = self._gather_rng()
        if not self.env.is_main:
            return
        save_checkpoint(self.checkpoint_path, keep_previous=True, payload={
            "config": self.checkpoint_config(),
            "stage": {"index": self.stage_index, "name": self.stage.name},
            "finished_stages": self.records,
            "selection": self.selection,
            "model": self.method.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng,
            "train_state": {"epoch": self.state.epoch, "step": self.state.step,
                            "batch_in_epoch": self.state.batch_in_epoch},
            "progress": self.progress_now(),
        })

    def _gather_rng(self) -> list[dict[str, Any]]:
        mine = capture_rng_state(self.method)
        if not self.env.distributed:
            return [mine]
        import torch.distributed as dist

        everyone: list[Any] = [None] * self.env.world_size
        dist.all_gather_object(everyone, mine)
        return everyone

    def read_resume_checkpoint(self) -> dict[str, Any]:
        """The checkpoint to resume from, once it is known to be this run's."""
        if not self.checkpoint_path.is_file():
            raise UserError(f"--resume: no checkpoint at {self.checkpoint_path} (run without --resume to start)")
        payload = load_checkpoint_or_previous(self.checkpoint_path, map_location=self.device)
        self._check_compatible(payload, self.checkpoint_path, same_run=True)
        return payload

    def restore(self, payload: dict[str, Any], optimizer, scheduler, scaler) -> None:
        """The current stage's state from a checkpoint of this stage (read_resume_checkpoint)."""
        load_model_state(self.method, payload["model"], self.checkpoint_path)
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        scaler.load_state_dict(payload["scaler"])
        restore_rng_state(payload["rng"][self.env.rank], self.method)
        ts = payload["train_state"]
        self.state.epoch, self.state.step, self.state.batch_in_epoch = ts["epoch"], ts["step"], ts["batch_in_epoch"]
        saved = payload.get("progress", {})  # checkpoints made before stages existed have none
        self.progress = {"seconds": saved.get("seconds", 0.0), "samples": saved.get("samples", 0),
                         "losses": saved.get("losses", {}), "initialisation": saved.get("initialisation",
                                                                                        self.initialisation)}
        self.logger.write({"event": "resume", "stage": self.stage.name, **ts})
        if self.stage.name in self.selected_stages:
            self._check_best_file()

    def progress_now(self) -> dict[str, Any]:
        """Time, samples and last losses of the current stage so far (resumed runs included)."""
        return {**self.progress, "seconds": self.progress["seconds"] + time.perf_counter() - self.segment_started}

    def _save_stage_weights(self) -> None:
        if self.env.is_main:
            save_checkpoint(self.out / stage_file_name(self.stage.name), {
                "config": self.checkpoint_config(), "stage": {"index": self.stage_index, "name": self.stage.name},
                "model": self.method.state_dict()})

    def _load_stage_weights(self, index: int) -> AUMethod:
        """The trained method of finished stage `index`, from its final-weights file."""
        stage = self.stages[index]
        path = self.out / stage_file_name(stage.name)
        if not path.is_file():
            raise UserError(f"--resume: {path} (the final weights of stage {stage.name!r}) is missing; "
                            f"use --overwrite instead of --resume to train the run again")
        payload = load_checkpoint(path, map_location=self.device)
        self._check_compatible(payload, path, same_run=True)
        method = self._new_method(stage, self.class_weights if stage.uses_labels else None)
        load_model_state(method, payload["model"], path)
        return method

    def _needed(self, first: int, restoring: bool) -> set[str]:
        """Names of the stages before `first` whose trained methods the stages from `first` on
        read (frozen inputs, init_from); when `restoring` stage `first` from its checkpoint, its
        own init_from is not needed (the checkpoint holds its weights)."""
        names = set()
        for i, stage in enumerate(self.stages[first:], first):
            names.update(stage.frozen_inputs)
            if stage.init_from and not (restoring and i == first):
                names.add(stage.init_from)
        return names & {stage.name for stage in self.stages[:first]}

    # -- training -------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train every stage not finished yet; the training summary of the run."""
        payload = self.read_resume_checkpoint() if self.config.resume else None
        first = int(payload.get("stage", {}).get("index", 0)) if payload else 0
        self.trained = {}
        if payload is not None:
            self.records = list(payload.get("finished_stages", []))
            self.selection = dict(payload.get("selection", {}))
            needed = self._needed(first, restoring=True)
            self.trained = {self.stages[i].name: self._load_stage_weights(i) for i in range(first)
                            if self.stages[i].name in needed}
        for index in range(first, len(self.stages)):
            if index != self.stage_index:
                self.method = self._build_stage(index, self.trained,
                                                restoring=payload is not None and index == first)
                self.stage_index = index
            # Hold on only to what later stages read (this stage's frozen inputs it holds itself).
            needed = self._needed(index + 1, restoring=False)
            self.trained = {name: method for name, method in self.trained.items() if name in needed}
            self.records.append(self._fit_stage(payload if index == first else None))
            if index + 1 < len(self.stages):
                self._save_stage_weights()
                self.trained[self.stage.name] = self.method
        labels = self.data.label_report(self.config.label_ratio)
        seconds = sum(r["train_seconds"] for r in self.records)
        samples = sum(r["samples_seen"] for r in self.records)
        final = self.records[-1]
        summary = {"epochs": sum(r["epochs"] for r in self.records), "steps": sum(r["steps"] for r in self.records),
                   "steps_per_epoch": final["steps_per_epoch"], "labels": labels,
                   "initialisation": self.records[0]["initialisation"], "train_samples": final["train_samples"],
                   "train_seconds": seconds, "final_loss": final["final_loss"],
                   "samples_per_second_per_rank": samples / seconds if seconds > 0 and samples else None}
        self.logger.write({"event": "trained", **summary})
        return summary

    def _fit_stage(self, payload: dict[str, Any] | None) -> dict[str, Any]:
        """Train the current stage (from `payload`, a checkpoint inside it, when given); its record."""
        cfg, env, stage = self.config, self.env, self.stage
        preset = stage.preset
        dataset = self.train_dataset()
        if len(dataset) == 0:
            raise UserError(f"{cfg.data} fold {cfg.fold}: no labeled training samples at label ratio {cfg.label_ratio}")
        labels = self.data.label_report(cfg.label_ratio) if stage.uses_labels else None
        first_labeled = next((s for s in self.stages if s.uses_labels), None)
        if labels and labels["sequences_without_label"] and env.is_main and stage is first_labeled:
            print(f"[aubench] note: at label ratio {cfg.label_ratio:g}, {labels['sequences_without_label']} of "
                  f"{labels['sequences']} training sequences of fold {cfg.fold} are too short to hold a kept "
                  f"label (shorter than 1/r frames at their place in the spacing); the split as a whole keeps "
                  f"{labels['realised_label_ratio']:.2%} of its labels", flush=True)
        sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                     seed=stage_seed(cfg.seed, self.stage_index), drop_last=False)
        steps_per_epoch = len(self.train_loader(dataset, sampler, 0))
        total_steps = steps_per_epoch * preset.epochs
        optimizer = build_optimizer(self.method, preset)
        warmup = preset.warmup_epochs * steps_per_epoch
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, total_steps, warmup, preset.schedule))
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.state = TrainState(epochs=preset.epochs, stage=stage.name, total_steps=total_steps)
        self.progress = {"seconds": 0.0, "samples": 0, "losses": {}, "initialisation": self.initialisation}
        if payload is not None:
            self.restore(payload, optimizer, scheduler, scaler)
        self.segment_started = time.perf_counter()
        step_module: nn.Module = _StepModule(self.method)
        if env.distributed:
            from torch.nn.parallel import DistributedDataParallel

            step_module = DistributedDataParallel(
                step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        self.logger.write({"event": "start", "stage": stage.name, "stage_index": self.stage_index,
                           "config": asdict(cfg), "preset": preset.__dict__, "stage_settings": stage.settings(),
                           "labels": labels, "precision": self.precision, "device": str(self.device),
                           "world_size": env.world_size, "train_samples": len(dataset),
                           "steps_per_epoch": steps_per_epoch})
        where = f"{cfg.method} fold{cfg.fold}" + (f" {stage.name}" if len(self.stages) > 1 else "")
        while self.state.epoch < preset.epochs:
            epoch = self.state.epoch
            sampler.set_epoch(epoch)
            loader = self.train_loader(dataset, sampler, self.state.batch_in_epoch)
            self._train_mode()
            self.method.on_epoch_start(self.state)
            sums: dict[str, float] = {}
            count = frames = 0
            epoch_started = time.perf_counter()
            bar = tqdm(loader, desc=f"{where} epoch {epoch + 1}/{preset.epochs}",
                       disable=not (cfg.progress and env.is_main), leave=False, dynamic_ncols=True)
            for batch in bar:
                if not stage.uses_labels:  # a self-supervised stage never sees a label
                    batch = {k: v for k, v in batch.items() if k not in ("label", "labeled")}
                doing = f"training stage {stage.name} (epoch {self.state.epoch}, step {self.state.step})"
                with out_of_memory_stops(doing, "--batch-size", self.per_rank_batch_size(),
                                         kept_checkpoint_text(self.checkpoint_path)):
                    parts = self._train_step(step_module, move_batch(batch, self.device), optimizer, scheduler, scaler)
                self.progress["samples"] += batch["image"].shape[0]
                self.progress["losses"] = parts
                count += 1
                frames += batch["image"].shape[0]
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                if env.is_main:
                    bar.set_postfix(loss=f"{parts['loss']:.4f}")
                if cfg.log_every and self.state.step % cfg.log_every == 0:
                    self.logger.write({"event": "step", "stage": stage.name, "epoch": epoch, "step": self.state.step,
                                       "lr": scheduler.get_last_lr()[0], **parts})
                if cfg.checkpoint_every and self.state.step % cfg.checkpoint_every == 0:
                    self.save(optimizer, scheduler, scaler)
                if self.step_callback is not None:
                    self.step_callback(self.state, parts)
            self.state.epoch += 1
            self.state.batch_in_epoch = 0
            means = {k: v / max(count, 1) for k, v in sums.items()}
            self.logger.write({"event": "epoch", "stage": stage.name, "epoch": epoch, "step": self.state.step,
                               **{f"mean_{k}": v for k, v in means.items()}})
            if cfg.progress and env.is_main:  # one line per epoch that stays on screen (stderr)
                tqdm.write(epoch_summary(f"{cfg.method} fold{cfg.fold} stage {stage.name}", epoch, preset.epochs, means,
                                         scheduler.get_last_lr()[0], time.perf_counter() - epoch_started, frames,
                                         self.progress_now()["seconds"]), file=sys.stderr)
            best = self._score_epoch() if stage.name in self.selected_stages else False
            self.save(optimizer, scheduler, scaler)
            if best:  # after the checkpoint that records it (see _check_best_file)
                self._save_best()
        progress = self.progress_now()
        losses = progress["losses"]
        record = {"name": stage.name, "epochs": preset.epochs, "steps": self.state.step,
                  "steps_per_epoch": steps_per_epoch, "train_samples": len(dataset),
                  "initialisation": progress["initialisation"], "train_seconds": progress["seconds"],
                  "samples_seen": progress["samples"],
                  "samples_per_second_per_rank": (progress["samples"] / progress["seconds"]
                                                  if progress["seconds"] > 0 and progress["samples"] else None),
                  "final_loss": losses.get("loss", float("nan")), "final_losses": losses}
        if labels is not None:
            record["labels"] = labels
        record = plain(record)
        self.logger.write({"event": "stage_trained", **record})
        return record

    def _train_mode(self) -> None:
        """Train mode for the stage's method, eval mode for what it keeps frozen."""
        self.method.train()
        for module in self.frozen_modules:
            module.eval()

    def _train_step(self, step_module, batch, optimizer, scheduler, scaler) -> dict[str, float]:
        with autocast_context(self.device, self.precision):
            out = step_module(batch, self.state)
        loss = out["loss"]
        if not torch.isfinite(loss.detach()).all():
            raise TrainingStopped(f"{self.config.method}: loss is {loss.item()} at step {self.state.step} "
                                  f"(stage {self.stage.name}, epoch {self.state.epoch}); try a lower learning rate "
                                  f"or --precision fp32{kept_checkpoint_text(self.checkpoint_path)}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        self._schedule_weight_decay(optimizer)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        self.state.step += 1
        self.state.batch_in_epoch += 1
        self.method.on_step_end(self.state)
        return {k: float(v.detach().float().mean()) if isinstance(v, torch.Tensor) else float(v)
                for k, v in out.items()}

    def _schedule_weight_decay(self, optimizer) -> None:
        """Preset.weight_decay_end: the step's weight decay on a half cosine from weight_decay."""
        preset = self.stage.preset
        if preset.weight_decay_end is None:
            return
        progress = min(self.state.step / max(1, self.state.total_steps - 1), 1.0)
        decay = preset.weight_decay_end + (preset.weight_decay - preset.weight_decay_end) * 0.5 * (
            1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["weight_decay"] = decay

    def _stage_index(self, name: str) -> int:
        names = [stage.name for stage in self.stages]
        if name not in names:
            raise ValueError(f"{self.config.method} has no stage {name!r} (stages: {', '.join(names)})")
        return names.index(name)

    def stage_method(self, name: str) -> AUMethod:
        """The trained method of stage `name` (after fit(): the last stage, or an earlier one, to
        test a leaderboard row), ready to predict: the current stage's; one the trainer still
        holds (read by a later stage); else loaded from its final-weights file. Its own frozen
        inputs are attached as in training, found or loaded the same way."""
        index = self._stage_index(name)
        if index == self.stage_index:
            return self.method
        held = {**self.method.frozen_inputs, **self.trained}
        method = held[name] if name in held else self._load_stage_weights(index)
        missing = [source for source in self.stages[index].frozen_inputs if source not in method.frozen_inputs]
        if missing:  # loaded from its file: its own frozen inputs are not attached yet
            method.frozen_inputs = {**method.frozen_inputs,
                                    **{source: freeze(self.stage_method(source)) for source in missing}}
        self.trained[name] = method  # kept for the next test condition
        return method

    # -- checkpoint selection (--select) ------------------------------------------------------
    def _score_epoch(self) -> bool:
        """Score the current stage's method after its epoch self.state.epoch on the split it is
        selected on (--select best-val: validation; best-test: test, and validation too when the
        run has one), clean images, mean F1; add the scores to self.selection. True when this
        epoch is the best so far (strictly better than every earlier one). Every random state is
        restored afterwards, so training goes on exactly as without the scoring."""
        from aubench.engine.evaluator import evaluate_with_predictions

        cfg, stage = self.config, self.stage
        split = "validation" if cfg.select == "best-val" else "test"
        splits = ["validation", "test"] if split == "test" and self.data.validation_subjects else [split]
        rng = capture_rng_state(self.method)
        scores: dict[str, Any] = {"epoch": self.state.epoch}
        for name in splits:
            metrics, _ = evaluate_with_predictions(self.method, self.data, stage.preset, self.env,
                                                   precision=self.precision, workers=self.workers, split=name,
                                                   label_ratio=cfg.label_ratio)
            scores[f"{name}_mean_f1"] = metrics["mean_f1"]
        restore_rng_state(rng, self.method)
        record = self.selection.setdefault(stage.name, {"split": split, "epochs": [], "best_epoch": None,
                                                        "best_score": None})
        record["epochs"].append(scores)
        best = record["best_score"] is None or scores[f"{split}_mean_f1"] > record["best_score"]
        if best:
            record["best_epoch"], record["best_score"] = self.state.epoch, scores[f"{split}_mean_f1"]
        self.logger.write({"event": "select", "stage": stage.name, **scores, "best_epoch": record["best_epoch"]})
        return best

    def _save_best(self) -> None:
        """The current stage's weights as its selected epoch's (best_<stage>.pt)."""
        if self.env.is_main:
            save_checkpoint(self.out / best_file_name(self.stage.name), {
                "config": self.checkpoint_config(), "stage": {"index": self.stage_index, "name": self.stage.name},
                "epoch": self.state.epoch, "model": self.method.state_dict()})

    def _check_best_file(self) -> None:
        """On resume inside a selected stage (after restore): its best-epoch file must hold the
        epoch the checkpoint's scores name. A run killed after the checkpoint of its best epoch
        and before that file was written gets the file again from the checkpoint, which holds
        that epoch's weights; anything else is a UserError."""
        record = self.selection.get(self.stage.name)
        if not record or record["best_epoch"] is None or not self.env.is_main:
            return
        path = self.out / best_file_name(self.stage.name)
        saved = load_checkpoint(path, map_location="cpu").get("epoch") if path.is_file() else None
        if saved == record["best_epoch"]:
            return
        if self.state.epoch == record["best_epoch"] and self.state.batch_in_epoch == 0:
            self._save_best()
            return
        raise UserError(f"--resume: {path} does not hold epoch {record['best_epoch']} of stage {self.stage.name!r}, "
                        f"its best so far; use --overwrite instead of --resume to train the run again")

    def tested_method(self, name: str) -> AUMethod:
        """The method tested for stage `name`: with --select last, or a stage that is not tested,
        its trained method (stage_method); else its selected epoch's weights (best_<stage>.pt),
        with the frozen inputs it trained with (the earlier stages' final weights)."""
        if name not in self.selected_stages:
            return self.stage_method(name)
        if name not in self.selected:
            stage = self.stages[self._stage_index(name)]
            path = self.out / best_file_name(name)
            if not path.is_file():
                raise UserError(f"{path} (the weights of stage {name!r}'s selected epoch) is missing; use "
                                f"--overwrite instead of --resume to train the run again")
            payload = load_checkpoint(path, map_location=self.device)
            self._check_compatible(payload, path, same_run=True)
            if payload.get("epoch") != self.selection.get(name, {}).get("best_epoch"):
                raise UserError(f"{path} holds epoch {payload.get('epoch')}, not stage {name!r}'s selected epoch; "
                                f"use --overwrite instead of --resume to train the run again")
            method = self._new_method(stage, self.class_weights if stage.uses_labels else None)
            load_model_state(method, payload["model"], path)
            method.frozen_inputs = {source: freeze(self.stage_method(source)) for source in stage.frozen_inputs}
            self.selected[name] = method
        return self.selected[name]

    def selection_record(self, name: str) -> dict[str, Any]:
        """What a result of tested stage `name` records of its checkpoint: {"checkpoint": the
        --select value, "stage", "epoch": the tested epoch, "epochs": the stage's}, and with a
        selection the split it was made on and every epoch's scores."""
        stage = self.stages[self._stage_index(name)]
        if name not in self.selected_stages:
            return {"checkpoint": "last", "stage": name, "epoch": stage.preset.epochs, "epochs": stage.preset.epochs}
        record = self.selection[name]
        return {"checkpoint": self.config.select, "stage": name, "epoch": record["best_epoch"],
                "epochs": stage.preset.epochs, "split": record["split"], "scores": record["epochs"]}

    # -- testing --------------------------------------------------------------------------------
    def evaluate(self, occlusion: tuple[str, float] | None = None, stage: str | None = None) -> dict[str, Any]:
        """Metrics of stage `stage`'s tested method (default: the current one, after fit() the
        last; tested_method: its selected epoch's under --select) on the fold's test split, with
        that stage's preset (image size, batch, clip length), its images occluded by `occlusion`
        (a parsed condition) when given."""
        return self.evaluate_with_predictions(occlusion, stage)[0]

    def evaluate_with_predictions(self, occlusion: tuple[str, float] | None = None, stage: str | None = None,
                                  split: str = "test"):
        """(metrics, per-frame predictions: aubench.engine.predictions.Predictions) of `evaluate`;
        `split` "validation": on the run's validation split (scored on the labels the protocol
        keeps), which leaves test_landmark_counts alone."""
        from aubench.engine.evaluator import evaluate_with_predictions

        tested = self.stage if stage is None else self.stages[self._stage_index(stage)]
        method = self.tested_method(tested.name)
        # landmarks re-detected on occluded test images (--occluded-landmarks detect): counted
        detect = (self.config.occluded_landmarks == "detect" and occlusion is not None
                  and "landmarks" in method.test_inputs())
        counts = {"detected": 0, "mean_shape": 0} if detect else None
        if split == "test":
            self.test_landmark_counts = counts
        metrics, predictions = evaluate_with_predictions(method, self.data, tested.preset, self.env,
                                                         precision=self.precision, workers=self.workers,
                                                         progress=self.config.progress, occlusion=occlusion,
                                                         landmark_counts=counts, split=split,
                                                         label_ratio=self.config.label_ratio)
        self.logger.write({"event": "evaluate", "stage": tested.name, "split": split,
                           "test_occlusion": condition_name(occlusion), "mean_f1": metrics["mean_f1"],
                           "all_positive_mean_f1": metrics["all_positive_mean_f1"]})
        return metrics, predictions
