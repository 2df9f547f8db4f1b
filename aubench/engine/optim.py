"""The optimiser of a preset and its schedules: learning rate (warm-up, then cosine, step,
constant or SGDR) and weight decay (Preset.weight_decay_end), per optimiser step."""
from __future__ import annotations

import math

import torch
from torch import nn

from aubench.errors import UserError
from aubench.models.base import Preset


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


def build_scheduler(optimizer: torch.optim.Optimizer, preset: Preset, steps_per_epoch: int):
    """The preset's learning-rate schedule over its epochs of `steps_per_epoch` optimiser steps
    (lr_factor; warm-up of Preset.warmup_epochs), stepped once per optimiser step."""
    total_steps = steps_per_epoch * preset.epochs
    warmup = preset.warmup_epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, preset.schedule))


def schedule_weight_decay(optimizer: torch.optim.Optimizer, preset: Preset, step: int, total_steps: int) -> None:
    """Preset.weight_decay_end: the weight decay of optimiser step `step` (of `total_steps`) on a
    half cosine from weight_decay; nothing without it."""
    if preset.weight_decay_end is None:
        return
    progress = min(step / max(1, total_steps - 1), 1.0)
    decay = preset.weight_decay_end + (preset.weight_decay - preset.weight_decay_end) * 0.5 * (
        1 + math.cos(math.pi * progress))
    for group in optimizer.param_groups:
        group["weight_decay"] = decay
