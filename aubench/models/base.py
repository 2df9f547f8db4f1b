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
    with its own augmentation draw. A training clip holds one label: its key frame's.
"index" holds the frames' rows in the HDF5 file; the evaluator uses it to score every frame
once (predictions of a frame seen in several clips are averaged).
"""
from __future__ import annotations

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
    epochs: int = 1         # total epochs of this run


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
    schedule: str = "cosine"          # "cosine" | "step" | "constant"
    warmup_epochs: int = 0
    clip_len: int = 1                 # frames per sample; 1 for frame methods
    rotation: float = 10.0            # training augmentation: rotation drawn from [-r, r] degrees
    model: dict[str, Any] = field(default_factory=dict)  # method-specific settings


class AUMethod(nn.Module):
    """Base class of the four methods."""

    name: str = ""
    input_kind: str = "frame"  # "frame" | "clip"
    key_view: bool = False     # clip methods: batches also carry "key_image", a second view of the key frame
    presets: dict[str, Preset] = {}

    def __init__(self, num_aus: int, preset: Preset, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.num_aus = num_aus
        self.preset = preset
        weights = torch.ones(num_aus) if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights.clone(), persistent=False)

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

    def inference_model(self) -> nn.Module:
        """The network used at test time (for parameter counts, FLOPs and throughput)."""
        return self

    @classmethod
    def min_image_size(cls, preset: Preset) -> int:
        """The smallest image side (px) the method can learn from with this preset. A method on
        a strided backbone returns the backbone's total stride; the default sets no limit."""
        return 1


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
