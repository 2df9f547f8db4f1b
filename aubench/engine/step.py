"""The optimiser steps of one stage: its optimiser, learning-rate schedule and grad scaler
(aubench.engine.optim), and one training step: the method's losses under autocast, checked
finite, backpropagated, then the optimiser step with the step's weight decay and learning rate.

Gradient accumulation (--accumulate K): an optimiser step is made of K micro-batches, each loss
divided by the number of micro-batches of its step, their gradients summed; under DDP the
gradients are all-reduced once per step (no_sync on the micro-batches before the last). The
learning-rate schedule and the method's on_step_end hook move per optimiser step, and
TrainState.step counts optimiser steps, TrainState.batch_in_epoch micro-batches.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from aubench.engine.checkpoint import kept_checkpoint_text
from aubench.engine.device import autocast_context
from aubench.engine.optim import build_optimizer, build_scheduler, schedule_weight_decay
from aubench.errors import TrainingStopped
from aubench.models.base import AUMethod, Preset, TrainState


class StageSteps:
    """The optimiser, schedule and grad scaler of a stage's `method` (its `preset`, epochs of
    `steps_per_epoch` optimiser steps) on `device` at `precision`; `checkpoint`: the run's
    training checkpoint, which a stopped run's message points to when it exists."""

    def __init__(self, method: AUMethod, preset: Preset, steps_per_epoch: int, device: torch.device, precision: str,
                 checkpoint: Path):
        self.method, self.preset, self.device, self.precision = method, preset, device, precision
        self.checkpoint = checkpoint
        self.optimizer = build_optimizer(method, preset)
        self.scheduler = build_scheduler(self.optimizer, preset, steps_per_epoch)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.accumulated = 0  # micro-batches whose gradients wait for the optimiser step

    def lr(self) -> float:
        """The learning rate of the next step (the first parameter group's)."""
        return self.scheduler.get_last_lr()[0]

    def step(self, module: nn.Module, batch: dict, state: TrainState, micro_batches: int = 1,
             last: bool = True) -> dict[str, float]:
        """One training step on `batch` (on the device) through `module` (the method's training
        step, DDP-wrapped under torchrun): of an optimiser step made of `micro_batches` micro-batches
        (gradient accumulation), `last` when it is the step's last, which makes the optimiser step;
        `state` counts it (batch_in_epoch per micro-batch, step per optimiser step) and the method's
        on_step_end hook sees each optimiser step. The micro-batch's losses as numbers;
        TrainingStopped for a loss that is not finite."""
        with module.no_sync() if not last and hasattr(module, "no_sync") else nullcontext():
            with autocast_context(self.device, self.precision):
                out = module(batch, state)
            loss = out["loss"]
            if not torch.isfinite(loss.detach()).all():
                raise TrainingStopped(f"{self.method.name}: loss is {loss.item()} at step {state.step} "
                                      f"(stage {state.stage}, epoch {state.epoch}); try a lower learning rate "
                                      f"or --precision fp32{kept_checkpoint_text(self.checkpoint)}")
            if self.accumulated == 0:
                self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss / micro_batches if micro_batches > 1 else loss).backward()
        state.batch_in_epoch += 1
        self.accumulated += 1
        if not last:
            return self._numbers(out)
        self.accumulated = 0
        schedule_weight_decay(self.optimizer, self.preset, state.step, state.total_steps)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        state.step += 1
        self.method.on_step_end(state)
        return self._numbers(out)

    @staticmethod
    def _numbers(out: dict) -> dict[str, float]:
        return {k: float(v.detach().float().mean()) if isinstance(v, torch.Tensor) else float(v)
                for k, v in out.items()}
