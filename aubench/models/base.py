"""What every AU method provides to the engine, and the registry that builds them by name.

A method is an nn.Module that owns its networks and losses. The engine (aubench.engine) owns
everything else: data loading, optimiser steps, mixed precision, checkpoints, DDP, logging,
evaluation. Methods never touch any of that, so one engine runs all of them.

Batches (made by aubench.data, collated by the default collate function):
- frame batches  (method.input_kind == "frame"):
    {"image": float (B,3,H,W), "label": float (B,U) with -1 = unknown, "index": long (B,)}
- clip batches   (method.input_kind == "clip"):
    {"image": float (B,n,3,H,W), "label": float (B,n,U) with -1 = unknown (also for frames
     whose label is hidden by the sparse-label protocol), "labeled": bool (B,n),
     "key_position": long (B,) position of the labeled key frame, "index": long (B,n)}
    plus, for methods with key_view = True, "key_image": float (B,3,H,W), the key frame again
    with its own augmentation draw. A training clip holds one label: its key frame's; a method
    with window_training = True trains on windows tiling the training sequences instead, every
    frame with the label the protocol keeps ("key_position" unused).
"index" holds the frames' rows in the HDF5 file; the evaluator uses it to score every frame
once (predictions of a frame seen in several clips are averaged).

Stages: a method that trains in stages (ME-GraphAU: stage 1 -> stage 2; a masked autoencoder
fine-tuned, then a teacher, then a student distilled from the frozen teacher; self-supervised
pre-training, then a linear probe on the frozen encoder) returns them from `stages(preset)`;
the engine runs them in order with one loop (aubench.engine.trainer) and tests the last one.
Each stage's method is a fresh instance of the class built from the stage's preset, so one class
serves every stage and picks its network from the stage's model settings. The default is one
stage: the preset as it is. A method whose stages are worth comparing (a teacher and the student
distilled from it) names them as leaderboard rows (Stage.row): then every stage with a row is
tested, and its results are the method "<method>-<row>" (tested_stages, row_method_name).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


@dataclass
class TrainState:
    """Where training stands; the engine updates it and passes it to every training step."""

    epoch: int = 0          # 0-based epoch
    step: int = 0           # global optimiser step
    batch_in_epoch: int = 0
    epochs: int = 1         # total epochs of this stage
    stage: str = "train"    # the stage being trained (Stage.name)
    total_steps: int = 1    # optimiser steps of this stage (epochs x steps per epoch)


@dataclass
class Preset:
    """A method's configuration: `paper` reproduces the paper, `tiny` runs on a CPU in minutes."""

    name: str
    image_size: int
    epochs: int
    batch_size: int
    optimizer: str = "sgd"            # "sgd" | "adamw" | "adam"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"          # "cosine" | "step" | "constant" | "sgdr:<cycles>" (warm restarts)
    warmup_epochs: int = 0
    clip_len: int = 1                 # frames per sample; 1 for frame methods
    rotation: float = 10.0            # training augmentation: rotation drawn from [-r, r] degrees
    model: dict[str, Any] = field(default_factory=dict)  # method-specific settings
    # The run's training occlusion unless --train-occlusion says otherwise: a condition as the
    # command line writes it ("none", "patches:0.5", "block:0.3"; aubench.data.occlusion). The
    # engine reads the run's preset's (the one stages(preset) receives), never a stage preset's;
    # Stage.occluded keeps a stage's images clean.
    train_occlusion: str = "none"
    # None: constant weight decay. A value: the weight decay moves from weight_decay to this on a
    # half cosine over the stage's steps (DINO's and RRL's 0.04 -> 0.4).
    weight_decay_end: float | None = None
    # The papers' crop protocol: None resizes the stored face to image_size. A fraction f resizes
    # it to image_size / f and crops image_size from that: a random crop where the item is
    # augmented (training), the centre crop otherwise (test). 224 / 256 = 0.875 is the papers'
    # "random 224 crop of a 256 face". Landmarks and occlusion masks follow the crop.
    crop_fraction: float | None = None
    # What the paper's networks start from ("ImageNet"), "" where they start from random weights
    # or the preset is not a paper's: a run from random weights is then not comparable with the
    # paper's figures (the leaderboard marks it). Documentation, not part of a run's identity.
    paper_init: str = ""
    # Where the preset's settings come from (the paper's table or section, a reference README's
    # line), shown by `aubench methods`. Documentation, not part of a run's identity.
    source: str = ""


SINGLE_STAGE = "train"  # the name of the one stage of a method that does not train in stages
_STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class Stage:
    """One stage of a method's training (AUMethod.stages).

    name: unique within the method (letters, digits, "_", "-"); it names the stage in logs, in
        the result and in the file of its final weights.
    preset: the stage's epochs, batch size, image size, optimiser, learning rate, schedule,
        augmentation and model settings. The stage gets a fresh optimiser and its own schedule;
        its method is `cls(num_aus, preset, class_weights)`.
    init_from: an earlier stage whose trained method initialises this one
        (`method.init_from_stage(init_from, earlier_method)`); None: fresh weights. Either way
        the stage's method gets the --pretrained parts it loads (AUMethod.pretrained_parts).
    frozen: names of submodules of this stage's method that do not train (e.g. "net.backbone"):
        requires_grad off, kept in eval mode (BatchNorm statistics do not move), left out of
        the optimiser.
    uses_labels: False: the stage never sees a label. Its batches carry no "label" / "labeled",
        it trains on every training frame (the label ratio does not thin it), and its method
        gets no class weights.
    frozen_inputs: earlier stages whose trained methods this one reads (a teacher to distil
        from): frozen, in eval mode, given to the method as `self.frozen_inputs[name]`; they are
        not part of its parameters, optimiser or checkpoint.
    pretraining: True: a self-supervised pre-training stage. Given --pretrain-data FILE it
        learns from that file's frames (aubench.engine.data_access.open_pretrain_data) instead
        of the run's training frames; it must then use no labels.
    occluded: False: the run's training occlusion does not apply to this stage. Its training
        images are clean and its batches carry no "occlusion" (a masked autoencoder that masks
        clean faces itself, a detector that must learn from clean faces). True (the default):
        under a training occlusion its images are occluded and its batches carry "occlusion",
        bool (B,H,W) ((B,n,H,W) for clips), True = occluded.
    row: a leaderboard row name (same characters as a stage name). When any stage of a method
        has one, every stage with one is tested (after training, under every test condition)
        and its results are the method "<method>-<row>"; the last stage must then have one too.
        None on every stage: the last stage is tested, its results are the method's own.
    """

    name: str
    preset: Preset
    init_from: str | None = None
    frozen: tuple[str, ...] = ()
    uses_labels: bool = True
    frozen_inputs: tuple[str, ...] = ()
    occluded: bool = True
    row: str | None = None
    pretraining: bool = False

    def settings(self) -> dict[str, Any]:
        """What the stage trains, as plain values (part of a run's identity and of its result;
        the row names results and is left out of the identity, aubench.engine.identity)."""
        return {"name": self.name, "preset": {k: v for k, v in self.preset.__dict__.items() if k != "name"},
                "init_from": self.init_from, "frozen": list(self.frozen), "uses_labels": self.uses_labels,
                "frozen_inputs": list(self.frozen_inputs), "occluded": self.occluded, "row": self.row,
                "pretraining": self.pretraining}


def check_stages(method: str, stages: list[Stage]) -> list[Stage]:
    """`stages` when they can run in order; ValueError naming the method and stage otherwise."""
    if not stages:
        raise ValueError(f"{method}: stages() returned no stage")
    seen: list[str] = []
    for stage in stages:
        where = f"{method} stage {stage.name!r}"
        if not isinstance(stage.name, str) or not _STAGE_NAME.fullmatch(stage.name):
            raise ValueError(f"{where}: a stage name is letters, digits, '_' and '-'")
        if stage.name in seen:
            raise ValueError(f"{where}: two stages have this name")
        for earlier in ([stage.init_from] if stage.init_from else []) + list(stage.frozen_inputs):
            if earlier not in seen:
                raise ValueError(f"{where}: {earlier!r} is not an earlier stage (earlier: {seen or 'none'})")
        seen.append(stage.name)
    rows: list[str] = []
    for stage in (stage for stage in stages if stage.row is not None):
        where = f"{method} stage {stage.name!r}"
        if not isinstance(stage.row, str) or not _STAGE_NAME.fullmatch(stage.row):
            raise ValueError(f"{where}: row {stage.row!r}: a row name is letters, digits, '_' and '-'")
        if stage.row in rows:
            raise ValueError(f"{where}: two stages have the row name {stage.row!r}")
        rows.append(stage.row)
    if rows and stages[-1].row is None:
        raise ValueError(f"{method}: stages {', '.join(repr(s.name) for s in stages if s.row is not None)} are "
                         f"leaderboard rows, so the last stage {stages[-1].name!r} must be one too (Stage.row)")
    return stages


def tested_stages(stages: list[Stage]) -> list[Stage]:
    """The stages whose methods are tested: those with a row name when any has one, else the last."""
    rows = [stage for stage in stages if stage.row is not None]
    return rows or [stages[-1]]


def trained_under(stages: list[Stage], stage: Stage, condition: str) -> str:
    """The training occlusion condition of a tested stage's method: the run's `condition` when
    the stage, or a stage it is built from (init_from, frozen_inputs, recursively), trains
    under it (Stage.occluded), else "none". MAE-FAU's reconstruction baseline (recon1 -> recon2,
    from the clean-trained MAE) trains clean in a run whose teacher trains under 50% patches."""
    by_name = {s.name: s for s in stages}
    todo, seen = [stage], set()
    while todo:
        current = todo.pop()
        if current.name in seen:
            continue
        seen.add(current.name)
        if current.occluded:
            return condition
        todo += [by_name[name] for name in (current.init_from, *current.frozen_inputs) if name in by_name]
    return "none"


VARIANT_MARK = ":"  # "rrl:global" names the variant "global" of method "rrl"


def split_method(spec: str) -> tuple[str, str | None]:
    """ "rrl:global" -> ("rrl", "global"); "rrl" -> ("rrl", None)."""
    name, mark, variant = spec.partition(VARIANT_MARK)
    return name, (variant if mark else None)


def method_label(method: str, variant: str | None) -> str:
    """The name results and the leaderboard give a method's variant ("rrl:global")."""
    return method if variant is None else f"{method}{VARIANT_MARK}{variant}"


def variant_settings(cls: type["AUMethod"], variant: str | None) -> dict[str, Any]:
    """The model settings of a named variant of `cls` (AUMethod.variants); ValueError naming the
    variants there are."""
    if variant is None:
        return {}
    if variant not in cls.variants:
        known = ", ".join(method_label(cls.name, v) for v in cls.variants) or "none"
        raise ValueError(f"method {cls.name!r} has no variant {variant!r}; its variants: {known}")
    return dict(cls.variants[variant])


def row_method_name(method: str, stage: Stage) -> str:
    """The method name of a tested stage's results: "<method>-<row>", or the method's own without a row."""
    return method if stage.row is None else f"{method}-{stage.row}"


class AUMethod(nn.Module):
    """Base class of the four methods."""

    name: str = ""
    input_kind: str = "frame"  # "frame" | "clip"
    key_view: bool = False     # clip methods: batches also carry "key_image", a second view of the key frame
    # clip methods: train on windows tiling the training sequences, every frame with the label the
    # protocol keeps (frame-wise sequence models), instead of one clip per labeled key frame
    window_training: bool = False
    # batches also carry "landmarks" (68-point, moved with the pixels; "key_landmarks" with
    # key_view, "landmarks2" with views = 2): the data file must have them
    # (aubench.data.AUFile.require_landmarks)
    uses_landmarks: bool = False
    # frame methods: 2 = training batches carry two augmented views of each frame, "image" and
    # "image2", each with its own draw of `train_augment()` (self-supervised pre-training)
    views: int = 1
    # True when some trainable parameters of a stage's method can get no gradient in a training
    # step: data-parallel training must then look for them every step (DDP's
    # find_unused_parameters, which costs a graph walk per step and warns when nothing is unused).
    # Every method today uses all its trainable parameters in every step; the torchrun test of
    # every method (tests/test_engine_ddp.py) fails when a declaration is wrong.
    unused_parameters: bool = False
    presets: dict[str, Preset] = {}
    # where the paper gives settings per dataset: the data file's dataset (AUFile.dataset, e.g.
    # "DISFA") -> the preset holding them ("paper-disfa"); `paper` names that preset on that
    # dataset's files (dataset_preset_name) and stays `paper` on the others
    dataset_presets: dict[str, str] = {}
    # how the tested network is evaluated when that is not plain supervised training: results'
    # protocol gets "+<evaluation>" ("sparse0.2+linear-probe"), so the leaderboard puts such
    # rows (and the papers' rows of that protocol) in their own section
    evaluation: str | None = None

    def test_inputs(self) -> tuple[str, ...]:
        """What this method reads at test time besides the image: "landmarks" (the batch's
        68 points), "occlusion_mask" (which pixels are occluded). Results record them
        (aubench.engine.run.inputs_read_at_test), and the leaderboard marks rows that read, under
        an occluded test condition, what a deployed detector would not have."""
        return ("landmarks",) if self.uses_landmarks else ()
    # named variants (ablations): name -> model settings; `aubench evaluate --methods rrl:global`
    # runs one, and its results are the method "rrl:global"
    variants: dict[str, dict[str, Any]] = {}
    # the parts whose weights `--pretrained PART=SOURCE` gives: part -> what it is (`aubench
    # methods` lists them). The first is the main one, which a bare `--pretrained SOURCE` gives.
    # The engine hands every stage it builds fresh the sources as the model setting "pretrained"
    # (WEIGHTS_SETTING: part -> source, never part of a preset); the method loads the parts it
    # builds new (create_backbone(name, source)) and leaves those an earlier stage initialises.
    pretrained_parts: dict[str, str] = {}

    def __init__(self, num_aus: int, preset: Preset, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.num_aus = num_aus
        self.preset = preset
        weights = torch.ones(num_aus) if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights.clone(), persistent=False)
        # Earlier stages' trained methods this stage reads (Stage.frozen_inputs), set by the engine.
        # A plain dict, so they are not submodules: not trained, not saved with this method.
        self.frozen_inputs: dict[str, AUMethod] = {}

    @classmethod
    def stages(cls, preset: Preset) -> list[Stage]:
        """The stages of training with `preset` (run overrides applied), in order. Default: one."""
        return [Stage(SINGLE_STAGE, preset)]

    def init_from_stage(self, stage: str, source: "AUMethod") -> dict[str, Any]:
        """Initialise this stage's method from the trained method of the earlier stage `stage`
        (Stage.init_from). Returns a short report for the result. Default: every tensor, strictly
        (the two stages have the same network)."""
        self.load_state_dict(source.state_dict())
        return {"loaded": len(self.state_dict())}

    def training_step(self, batch: dict[str, torch.Tensor], state: TrainState) -> dict[str, torch.Tensor]:
        """Forward + losses of one batch. Returns {"loss": total, <part>: value, ...}; the engine
        backpropagates "loss" and logs the parts' values."""
        raise NotImplementedError(f"{type(self).__name__} must implement training_step")

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """AU probabilities in [0, 1], shaped like batch["label"] ((B,U) or (B,n,U))."""
        raise NotImplementedError(f"{type(self).__name__} must implement predict")

    def on_epoch_start(self, state: TrainState) -> None:
        """Hook for epoch-dependent behaviour (ramp-ups, gates); default does nothing."""

    def on_step_end(self, state: TrainState) -> None:
        """Hook after each optimiser step (state.step already counts it), e.g. to move a target
        network's exponential moving average; default does nothing."""

    def train_augment(self):
        """The training augmentation of this method's stage (an object with `draw(generator)`,
        `apply(images, params)` and `apply_points(points, params, size)`, as
        aubench.data.ClipAugment), or None for the engine's default ClipAugment."""
        return None

    def set_training_data(self, au_names: list[str], statistics: dict) -> None:
        """The engine hands every stage the run's AU names and the statistics of the training
        labels the protocol lets the run see ("au_rate", "class_weight", "cooccurrence" =
        P(AU_j | AU_i); numpy): never the labels a protocol hides. Default: ignores them."""

    def inference_model(self) -> nn.Module:
        """The network used at test time (for parameter counts, FLOPs and throughput)."""
        return self

    @classmethod
    def min_image_size(cls, preset: Preset) -> int:
        """The smallest image side (px) the method can learn from with this preset. A method on
        a strided backbone returns the backbone's total stride; the default sets no limit."""
        return 1


PAPER_PRESET = "paper"  # the preset name that picks the paper's settings for the run's dataset


def dataset_preset_name(cls: type[AUMethod], name: str, dataset: str | None) -> str:
    """The preset a run of `cls` on a file of `dataset` uses when asked for preset `name`: `paper`
    becomes the method's preset for that dataset where the paper gives one
    (AUMethod.dataset_presets: "paper-disfa" on DISFA); any other name, a dataset without its own
    settings, or no dataset leave `name` as it is."""
    if name != PAPER_PRESET or dataset is None:
        return name
    return cls.dataset_presets.get(dataset, name)


# The model setting in which the engine hands a stage's method its --pretrained sources
# (AUMethod.pretrained_parts): part -> source; every method's settings have it ({} without weights).
WEIGHTS_SETTING = "pretrained"
# Model settings that named weight files before --pretrained PART=SOURCE (the part that replaced
# each: None is the main part). Presets keep them at None, so stored results keep their settings;
# a value is refused.
RETIRED_WEIGHT_SETTINGS = {"pretrained_path": None, "backbone_pretrained_path": "backbone"}


def model_settings(method: str, preset: Preset, defaults: dict[str, Any]) -> dict[str, Any]:
    """The preset's model settings over the method's defaults, with WEIGHTS_SETTING; ValueError
    naming any setting the method does not know, or a retired weight-file setting given a value."""
    unknown = sorted(set(preset.model) - set(defaults) - {WEIGHTS_SETTING})
    if unknown:
        raise ValueError(f"{method}: unknown model settings {unknown}; known: {sorted(defaults)}")
    for key, part in RETIRED_WEIGHT_SETTINGS.items():
        if preset.model.get(key) is not None:
            raise ValueError(f"{method}: model setting {key} is retired; give the weights with --pretrained "
                             f"{part + '=' if part else ''}SOURCE (`aubench methods` lists each method's parts)")
    return {**defaults, WEIGHTS_SETTING: {}, **preset.model}


def check_image_size(cls: type[AUMethod], preset: Preset) -> None:
    """UserError when preset.image_size is below what the method's backbone can take."""
    from aubench.errors import UserError

    need = cls.min_image_size(preset)
    if preset.image_size < need:
        raise UserError(f"--image-size {preset.image_size} is too small for method {cls.name!r} (preset "
                        f"{preset.name!r}): its backbone downsamples by {need}, so images need at least {need} px")


_METHODS: dict[str, type[AUMethod]] = {}


def register_method(name: str) -> Callable[[type[AUMethod]], type[AUMethod]]:
    def add(cls: type[AUMethod]) -> type[AUMethod]:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return add


def available_methods() -> list[str]:
    return sorted(_METHODS)


def method_class(name: str) -> type[AUMethod]:
    if name not in _METHODS:
        known = ", ".join(available_methods()) or "none"
        raise KeyError(f"unknown method {name!r}; available methods: {known}")
    return _METHODS[name]


def create_method(name: str, num_aus: int, preset: str | Preset = "tiny",
                  class_weights: torch.Tensor | None = None, **overrides: Any) -> AUMethod:
    """Build a registered method by name with one of its presets (model settings overridable)."""
    cls = method_class(name)
    if isinstance(preset, str):
        if preset not in cls.presets:
            raise KeyError(f"method {name!r} has no preset {preset!r}; presets: {', '.join(sorted(cls.presets))}")
        preset = cls.presets[preset]
    if overrides:
        preset = Preset(**{**preset.__dict__, "model": {**preset.model, **overrides}})
    return cls(num_aus, preset, class_weights)
