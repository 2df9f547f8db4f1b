"""`aubench evaluate --dry-run`: build everything a run needs and try one training step per stage,
without training or writing anything.

For each method (and label ratio) of the request, on the first fold it names (default: fold 1):
the data file is opened, the preset resolved (`paper` by the file's dataset), --pretrained loaded,
and every stage's method and optimiser built in order by the engine's own Trainer (a later stage
initialised from the earlier one and given its frozen inputs, as in training); each stage then
runs one training step (forward, backward, optimiser step) on one real batch of its training
data. Per stage it reports the parameters, the batch, the steps per epoch, the epochs and the
memory one GPU needs at the preset's (per-GPU) batch and the run's precision:
- on a GPU, measured: torch.cuda.max_memory_allocated over the step at the per-GPU batch, with
  every network the stage holds resident (its own, its frozen inputs, earlier stages kept for
  later ones);
- on a CPU, estimated: the step runs at a batch of `probe_batch` frames or clips (2 by default;
  batch norm needs two), or for a method that trains on windows (`vivit`: 256 frames each) on one
  window of `probe_frames` frames (its model takes windows up to clip_len long), and the estimate
  is the weights of the stage's networks + the gradients of its trained parameters + its
  optimiser state (as allocated after the step) + the tensors autograd saved for the backward
  pass (counted through saved-tensor hooks, the weights left out), the last scaled linearly from
  the trial step's frames to the per-GPU batch's (the saved tensors grow with the frames; the
  temporal attention's, which grow with their square, are a small part). It leaves out the
  allocator's cache, cuDNN workspaces and the temporaries of the backward pass, so it is a lower
  bound; under a GPU's bf16 autocast the saved tensors are about half their fp32 size.
The stages are built and stepped by the Trainer's own methods (build_stage, train_dataset,
train_loader) and StageSteps, so a dry run builds and steps what a run does.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DistributedSampler

from aubench.engine.device import move_batch
from aubench.engine.distributed import StepModule
from aubench.engine.evaluate import EvaluateRequest, check_data_and_folds, file_folds, resolve_methods
from aubench.engine.planning import stage_seed
from aubench.engine.stage_methods import train_mode
from aubench.engine.step import StageSteps
from aubench.engine.trainer import Trainer
from aubench.errors import UserError
from aubench.models.base import TrainState, method_label, split_method

GIB = 1024 ** 3


@dataclass
class StageCheck:
    """What one stage of a run needs (dry_run)."""

    method: str               # the method (with its variant)
    preset: str               # the preset used (paper resolved: paper-disfa ...)
    initialisation: str       # what the stage starts from: --pretrained or random (the first), an earlier stage
    fold: int
    label_ratio: float
    stage: str
    params: int               # parameters of the stage's method
    trained_params: int       # of which the optimiser trains
    batch: int                # the preset's global batch
    clip_len: int             # frames per clip or window of the preset (1 for frame methods)
    batch_per_gpu: int
    steps_per_epoch: int
    epochs: int
    precision: str
    device: str
    step_batch: int           # the batch the trial step ran at
    step_frames: int          # frames per clip or window of the trial step (1 for frame methods)
    memory: int               # bytes per GPU at batch_per_gpu: measured on a GPU, estimated on a CPU
    measured: bool
    parts: dict[str, int]     # the estimate's parts (weights, gradients, optimiser, activations); {} when measured


def _storages(tensors) -> dict[int, int]:
    """data pointer -> bytes of the storages under `tensors` (each storage once)."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def _resident(method: nn.Module) -> list[torch.Tensor]:
    """Parameters and buffers of a stage's method and of its frozen inputs (a teacher)."""
    modules = [method, *getattr(method, "frozen_inputs", {}).values()]
    return [t for m in modules for t in (*m.parameters(), *m.buffers())]


def _saved_tensor_counter(skip: set[int]) -> tuple[dict[int, int], Callable, Callable]:
    """(bytes by storage, pack hook, unpack hook): the storages autograd saves for the backward
    pass, those in `skip` (the weights) left out."""
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # a tensor without plain storage
            return tensor
        if storage.data_ptr() not in skip:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    return saved, pack, lambda tensor: tensor


def _check_stage(trainer: Trainer, probe_batch: int, probe_frames: int) -> StageCheck:
    """Build the current stage's data, loader and optimiser and run one training step (see the
    module docstring); the stage's check."""
    stage, env, device = trainer.stage, trainer.env, trainer.device
    preset = stage.preset
    dataset = trainer.train_dataset()
    if len(dataset) == 0:
        raise UserError(f"{trainer.config.data} fold {trainer.config.fold}: no labeled training samples at label "
                        f"ratio {trainer.config.label_ratio}")
    sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                 seed=stage_seed(trainer.config.seed, trainer.stage_index), drop_last=False)
    steps_per_epoch = -(-len(trainer.train_loader(dataset, sampler, 0)) // trainer.config.accumulate)
    per_gpu = trainer.per_rank_batch_size()
    on_gpu = device.type == "cuda"
    windows = trainer.method.window_training and not on_gpu
    step_batch = per_gpu if on_gpu else min(1 if windows else probe_batch, per_gpu)
    step_frames = min(probe_frames, preset.clip_len) if windows else preset.clip_len
    index = trainer.stage_index
    trainer.stages[index] = replace(stage, preset=replace(
        preset, batch_size=step_batch * env.world_size * trainer.config.accumulate, clip_len=step_frames))
    try:  # one batch of the trial step's size, drawn by the run's own dataset and loader
        if windows:  # windows of the trial step's frames: a dataset of their own
            dataset = trainer.train_dataset()
            sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                         seed=sampler.seed, drop_last=False)
        batch = next(iter(trainer.train_loader(dataset, sampler, 0)))
    finally:
        trainer.stages[index] = stage
    if not stage.uses_labels:
        batch = {k: v for k, v in batch.items() if k not in ("label", "labeled")}
    step_batch = int(batch["image"].shape[0])
    method = trainer.method
    steps = StageSteps(method, preset, steps_per_epoch, device, trainer.precision, trainer.checkpoints.path)
    trainer.state = TrainState(epochs=preset.epochs, stage=stage.name, total_steps=steps_per_epoch * preset.epochs)
    train_mode(trainer.method, trainer.frozen_modules)
    method.on_epoch_start(trainer.state)
    resident = _storages(_resident(method))
    saved, pack, unpack = _saved_tensor_counter(set(resident))
    if on_gpu:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        steps.step(StepModule(method), move_batch(batch, device), trainer.state)
    trained = [p for p in method.parameters() if p.requires_grad]
    parts: dict[str, int] = {}
    if on_gpu:
        torch.cuda.synchronize(device)
        memory = torch.cuda.max_memory_allocated(device)
    else:
        optimiser_state = [t for state in steps.optimizer.state.values() for t in state.values()
                           if isinstance(t, torch.Tensor)]
        scale = per_gpu * preset.clip_len / (step_batch * step_frames)  # frames of the GPU's batch / the step's
        parts = {"weights": sum(resident.values()), "gradients": sum(_storages(trained).values()),
                 "optimiser": sum(_storages(optimiser_state).values()),
                 "activations": round(sum(saved.values()) * scale)}
        memory = sum(parts.values())
    config = trainer.config
    return StageCheck(method=method_label(config.method, config.variant), preset=trainer.preset.name,
                      initialisation=trainer.initialisation, fold=config.fold, label_ratio=config.label_ratio,
                      stage=stage.name,
                      params=sum(p.numel() for p in method.parameters()),
                      trained_params=sum(p.numel() for p in trained), batch=preset.batch_size,
                      clip_len=preset.clip_len, batch_per_gpu=per_gpu, steps_per_epoch=steps_per_epoch,
                      epochs=preset.epochs, precision=trainer.precision, device=str(device), step_batch=step_batch,
                      step_frames=step_frames, memory=memory, measured=on_gpu, parts=parts)


def check_run(trainer: Trainer, probe_batch: int = 2, probe_frames: int = 8) -> list[StageCheck]:
    """Every stage of `trainer`'s run in order (stage 0 is built by the Trainer itself), each
    built as in training and checked (_check_stage); earlier stages are held only while a later
    one reads them."""
    checks = []
    trained: dict[str, Any] = {}
    for index, stage in enumerate(trainer.stages):
        if index:
            trainer.method = trainer.build_stage(index, trained)
            trainer.stage_index = index
        needed = trainer.methods.needed(index + 1, restoring=False)
        trained = {name: method for name, method in trained.items() if name in needed}
        checks.append(_check_stage(trainer, probe_batch, probe_frames))
        if stage.name in needed:
            trained[stage.name] = trainer.method
    return checks


def dry_run(request: EvaluateRequest, probe_batch: int = 2, probe_frames: int = 8,
            report: Callable[[StageCheck], None] | None = None) -> list[StageCheck]:
    """Check every (method, label ratio) of `request` on its first fold (check_run); nothing is
    trained and nothing is written to request.out. `report` is called with each stage's check as
    it is made."""
    template = request.run
    methods = resolve_methods(request.methods)
    file = check_data_and_folds(template.data, request.folds)
    fold = file_folds(file, request.folds)[0]
    checks = []
    for spec in methods:
        name, variant = split_method(spec)
        for ratio in request.label_ratios:
            with tempfile.TemporaryDirectory(prefix="aubench-dry-run-") as scratch:  # the Trainer's log, unread
                config = replace(template, method=name, variant=variant, fold=fold, label_ratio=ratio, out=scratch,
                                 resume=False, overwrite=False, progress=False)
                for check in check_run(Trainer(config), probe_batch, probe_frames):
                    checks.append(check)
                    if report is not None:
                        report(check)
    return checks


def size_text(nbytes: int) -> str:
    """Bytes in GiB from 1 GiB on, else in MiB."""
    return f"{nbytes / GIB:.2f} GiB" if nbytes >= GIB else f"{nbytes / 1024 ** 2:.1f} MiB"


def describe(check: StageCheck) -> str:
    """One line for a stage's check."""
    frames = f" of {check.step_frames}-frame windows" if check.step_frames < check.clip_len else ""
    how = (f"measured on {check.device}" if check.measured else
           f"estimated on {check.device} from a step at batch {check.step_batch}{frames}: "
           + ", ".join(f"{part} {size_text(value)}" for part, value in check.parts.items()))
    return (f"{check.method:>10} {check.stage:>9}: {check.params / 1e6:.2f} M params "
            f"({check.trained_params / 1e6:.2f} M trained), batch {check.batch} ({check.batch_per_gpu} per GPU), "
            f"{check.steps_per_epoch} steps/epoch x {check.epochs} epochs; memory {size_text(check.memory)} per GPU "
            f"at batch {check.batch_per_gpu}, {check.precision} ({how})")
