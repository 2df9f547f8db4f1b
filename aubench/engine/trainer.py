"""One trainer for every method: optimiser, schedule, mixed precision, checkpoints, resume, DDP.

A method only says what one training step computes (AUMethod.training_step) and how it
predicts; the trainer owns the loop. Exact resume: the checkpoint holds model, optimiser,
scheduler, grad-scaler and RNG states (torch / CUDA / numpy / python / method generators, per
rank) and the position in the epoch. Batches come from a DistributedSampler whose order depends
only on (seed, epoch), so a resumed run skips the batches already done (at the index level, no
images are decoded) and sees exactly the batches the killed run would have seen next. The
DataLoader draws its worker seeds from its own generator, seeded per epoch, never from the
global RNG, so creating a loader mid-epoch does not shift the random stream. With
`num_workers=0` a resumed run is bit-identical to an uninterrupted one; with workers the data
order is the same but augmentation draws come from re-seeded workers.
"""
from __future__ import annotations

import itertools
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler
from tqdm.auto import tqdm

from aubench.data import normalize_images
from aubench.engine.checkpoint import (capture_rng_state, is_checkpoint_payload, load_checkpoint,
                                       read_weights_file, restore_rng_state, save_checkpoint)
from aubench.engine.data_access import RunData, open_run_data
from aubench.engine.distributed import DistEnv, setup_distributed
from aubench.engine.identity import differences_text, identity_differences, run_identity
from aubench.engine.logging import JsonlLogger
from aubench.errors import UserError
from aubench.models.backbones import BackboneError
from aubench.models.base import AUMethod, Preset, TrainState, check_image_size, create_method, method_class

CHECKPOINT_NAME = "last.pt"
RESULT_NAME = "result.json"  # written beside the checkpoint by `aubench train`
LOG_NAME = "log.jsonl"
# Every file a run writes into its directory: a fresh run replaces them together, so a new
# checkpoint never sits beside an old result or log.
RUN_FILES = (CHECKPOINT_NAME, RESULT_NAME, LOG_NAME)
# Files that make a directory hold a run worth keeping (a log alone is a run that died before
# its first checkpoint: nothing to resume or to lose).
KEPT_RUN_FILES = (CHECKPOINT_NAME, RESULT_NAME)
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


@dataclass
class RunConfig:
    """Everything that defines one training run (saved in checkpoints and results)."""

    method: str
    data: str
    fold: int = 1
    preset: str = "tiny"
    label_ratio: float = 1.0
    epochs: int | None = None          # None = the preset's
    batch_size: int | None = None      # global batch; None = the preset's
    image_size: int | None = None      # None = the preset's
    out: str = "runs/train"
    resume: bool = False
    overwrite: bool = False            # a fresh run may replace the run files already in `out`
    pretrained: str | None = None
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
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's model settings


def kept_run_files(out: str | Path) -> list[str]:
    """Names of the files of an earlier run in `out` that a fresh run would replace."""
    return [name for name in KEPT_RUN_FILES if (Path(out) / name).exists()]


def clear_run_files(out: str | Path) -> None:
    """Remove every run file in `out`, with the temporaries a killed atomic write left behind."""
    out = Path(out)
    for name in RUN_FILES:
        for path in [out / name, *out.glob(f"{name}.*.tmp")]:
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


def resolve_preset(method_cls: type[AUMethod], config: RunConfig) -> Preset:
    """The method's preset with the run's overrides (epochs, batch size, image size, model settings)."""
    if config.preset not in method_cls.presets:
        raise UserError(f"method {config.method!r} has no preset {config.preset!r}; "
                        f"presets: {', '.join(sorted(method_cls.presets))}")
    base = method_cls.presets[config.preset]
    return Preset(**{**base.__dict__, "model": {**base.model, **config.model},
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
    raise UserError(f"unknown learning-rate schedule {schedule!r} (cosine, step, constant)")


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
    for key in ("image", "key_image"):
        if key in batch and batch[key].dtype == torch.uint8:
            batch[key] = normalize_images(batch[key])
    return batch


class Trainer:
    """Trains one method on one fold; `fit()` then `evaluate()` (see aubench.engine.evaluator)."""

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
        self.preset = resolve_preset(self.method_cls, config)
        if not 0 < config.label_ratio <= 1:
            raise UserError(f"--label-ratio must be in (0, 1], got {config.label_ratio}")
        if self.preset.epochs < 1:
            raise UserError(f"--epochs must be at least 1, got {self.preset.epochs}")
        if self.preset.batch_size // self.env.world_size < 2:  # batch norm cannot train on one sample
            raise UserError(f"--batch-size {self.preset.batch_size} leaves fewer than 2 samples per training step "
                            f"on each of {self.env.world_size} process(es); use at least {2 * self.env.world_size}")
        check_image_size(self.method_cls, self.preset)
        self.precision = resolve_precision(config.precision, self.device)
        self.data: RunData = open_run_data(config.data, config.fold)
        self.identity = run_identity(asdict(config), self.preset.__dict__, self.data.fingerprint, self.precision)
        if self.device.type == "cpu" and config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(config.seed)  # same initial weights on every rank
        self.method = self._build_method()
        seed_everything(config.seed + 1000 * self.env.rank)  # per-rank randomness from here on
        self.state = TrainState(epochs=self.preset.epochs)
        self.workers = config.workers if config.workers is not None else (4 if self.device.type == "cuda" else 0)
        # Last, once everything else is known to be usable: an --overwrite never loses the old
        # run to a mistake found later.
        claim_run_dir(self.out, config.resume, config.overwrite, self.env.is_main)
        self.logger = JsonlLogger(self.out / LOG_NAME, enabled=self.env.is_main)

    # -- construction --------------------------------------------------------------------
    def _build_method(self) -> AUMethod:
        cfg = self.config
        overrides = {}
        full_checkpoint = None
        self.initialisation = "random (no --pretrained)"
        if cfg.pretrained is not None:
            self.initialisation = f"pretrained: {cfg.pretrained}"
            path = Path(cfg.pretrained)
            if not path.is_file():
                raise UserError(f"--pretrained {path} does not exist")
            try:
                payload = read_weights_file(path)
            except UserError as err:
                raise UserError(f"--pretrained {err}") from None
            if is_checkpoint_payload(payload):
                full_checkpoint = payload
            else:
                overrides["pretrained_path"] = str(path)  # backbone weights; the method passes them to create_backbone
        # Class weights from the labels this run may see: under a label ratio < 1 the kept labels
        # only, never the file's dense per-fold statistics.
        stats = self.data.train_label_statistics(cfg.label_ratio)
        class_weights = torch.as_tensor(stats["class_weight"], dtype=torch.float32)
        try:
            method = create_method(cfg.method, self.data.num_aus, self.method_cls.presets[cfg.preset], class_weights,
                                   **cfg.model, **overrides)
        except BackboneError as err:
            raise UserError(f"--pretrained {err}" if "pretrained_path" in overrides else str(err)) from None
        method.preset = self.preset
        if full_checkpoint is not None:
            self._check_compatible(full_checkpoint, cfg.pretrained, same_run=False)
            try:
                missing, unexpected = method.load_state_dict(full_checkpoint.get("model", {}), strict=False)
            except (RuntimeError, TypeError, AttributeError) as err:  # shapes of another preset, or no state dict
                lines = [line.strip() for line in str(err).splitlines() if line.strip()]
                first = next((line for line in lines if "size mismatch" in line), lines[0] if lines else "")
                raise UserError(f"--pretrained {cfg.pretrained} was saved by a different model ({first[:200]})") from None
            if missing or unexpected:
                raise UserError(f"--pretrained {cfg.pretrained} was saved by a different model "
                                f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        if cfg.channels_last:
            method = method.to(memory_format=torch.channels_last)
        return method.to(self.device)

    def _check_compatible(self, payload: dict, path, same_run: bool) -> None:
        saved = payload.get("config", {})
        if list(saved.get("au_names", [])) != list(self.data.au_names):
            raise UserError(f"AU set mismatch: {path} was trained on AUs {saved.get('au_names')}, "
                            f"{self.config.data} has {list(self.data.au_names)}")
        if saved.get("method") != self.config.method:
            raise UserError(f"{path} holds method {saved.get('method')!r}, not {self.config.method!r}")
        if same_run:
            # The run's identity (aubench.engine.identity) and the world size, which the per-rank
            # RNG states of an exact resume need; the AU set was compared above.
            diffs = identity_differences(saved, self.checkpoint_config(), "checkpoint", ignore=("au_names", "dataset"))
            if diffs:
                raise UserError(f"--resume: {path} belongs to a different run ({differences_text(diffs)}); "
                                f"use --overwrite instead of --resume to start it again")

    def checkpoint_config(self) -> dict[str, Any]:
        return {**self.identity, "au_names": list(self.data.au_names), "world_size": self.env.world_size,
                "dataset": self.data.dataset}

    # -- data -----------------------------------------------------------------------------
    def per_rank_batch_size(self) -> int:
        return max(1, self.preset.batch_size // self.env.world_size)

    def train_dataset(self):
        # A preset may turn augmentation off (model setting "augment"); --no-augment always does.
        augment = self.config.augment and bool(self.preset.model.get("augment", True))
        if augment:
            from aubench.data import ClipAugment

            augment = ClipAugment(degrees=self.preset.rotation)
        return self.data.train_dataset(self.method_cls.input_kind, self.preset, self.config.label_ratio,
                                       augment=augment, key_view=self.method_cls.key_view)

    def train_loader(self, dataset, sampler: DistributedSampler, skip_batches: int) -> DataLoader:
        batch_size = self.per_rank_batch_size()
        drop_last = len(sampler) > batch_size  # a lone 1-sample batch would break batch norm
        if self.method_cls.input_kind == "clip":
            from aubench.data import KeyPositionBatchSampler

            batches = KeyPositionBatchSampler(sampler, batch_size, self.preset.clip_len, drop_last=drop_last)
        else:
            batches = BatchSampler(sampler, batch_size, drop_last=drop_last)
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + sampler.epoch)
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
        save_checkpoint(self.checkpoint_path, {
            "config": self.checkpoint_config(),
            "model": self.method.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng,
            "train_state": {"epoch": self.state.epoch, "step": self.state.step,
                            "batch_in_epoch": self.state.batch_in_epoch},
        })

    def _gather_rng(self) -> list[dict[str, Any]]:
        mine = capture_rng_state(self.method)
        if not self.env.distributed:
            return [mine]
        import torch.distributed as dist

        everyone: list[Any] = [None] * self.env.world_size
        dist.all_gather_object(everyone, mine)
        return everyone

    def restore(self, optimizer, scheduler, scaler) -> None:
        if not self.checkpoint_path.is_file():
            raise UserError(f"--resume: no checkpoint at {self.checkpoint_path} (run without --resume to start)")
        payload = load_checkpoint(self.checkpoint_path, map_location=self.device)
        self._check_compatible(payload, self.checkpoint_path, same_run=True)
        self.method.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        scaler.load_state_dict(payload["scaler"])
        restore_rng_state(payload["rng"][self.env.rank], self.method)
        ts = payload["train_state"]
        self.state.epoch, self.state.step, self.state.batch_in_epoch = ts["epoch"], ts["step"], ts["batch_in_epoch"]
        self.logger.write({"event": "resume", **ts})

    # -- training -------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg, preset, env = self.config, self.preset, self.env
        dataset = self.train_dataset()
        if len(dataset) == 0:
            raise UserError(f"{cfg.data} fold {cfg.fold}: no labeled training samples at label ratio {cfg.label_ratio}")
        labels = self.data.label_report(cfg.label_ratio)
        if labels["sequences_without_label"] and env.is_main:
            print(f"[aubench] note: at label ratio {cfg.label_ratio:g}, {labels['sequences_without_label']} of "
                  f"{labels['sequences']} training sequences of fold {cfg.fold} are too short to hold a kept "
                  f"label (shorter than 1/r frames at their place in the spacing); the split as a whole keeps "
                  f"{labels['realised_label_ratio']:.2%} of its labels", flush=True)
        sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                     seed=cfg.seed, drop_last=False)
        steps_per_epoch = len(self.train_loader(dataset, sampler, 0))
        total_steps = steps_per_epoch * preset.epochs
        optimizer = build_optimizer(self.method, preset)
        warmup = preset.warmup_epochs * steps_per_epoch
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, total_steps, warmup, preset.schedule))
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        if cfg.resume:
            self.restore(optimizer, scheduler, scaler)
        step_module: nn.Module = _StepModule(self.method)
        if env.distributed:
            from torch.nn.parallel import DistributedDataParallel

            step_module = DistributedDataParallel(
                step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        self.logger.write({"event": "start", "config": asdict(cfg), "preset": preset.__dict__, "labels": labels,
                           "precision": self.precision, "device": str(self.device), "world_size": env.world_size,
                           "train_samples": len(dataset), "steps_per_epoch": steps_per_epoch})
        started = time.perf_counter()
        samples_seen = 0
        last_loss = float("nan")
        while self.state.epoch < preset.epochs:
            epoch = self.state.epoch
            sampler.set_epoch(epoch)
            loader = self.train_loader(dataset, sampler, self.state.batch_in_epoch)
            self.method.train()
            self.method.on_epoch_start(self.state)
            sums: dict[str, float] = {}
            count = 0
            bar = tqdm(loader, desc=f"{cfg.method} fold{cfg.fold} epoch {epoch + 1}/{preset.epochs}",
                       disable=not (cfg.progress and env.is_main), leave=False, dynamic_ncols=True)
            for batch in bar:
                parts = self._train_step(step_module, move_batch(batch, self.device), optimizer, scheduler, scaler)
                samples_seen += batch["image"].shape[0]
                count += 1
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                last_loss = parts["loss"]
                if env.is_main:
                    bar.set_postfix(loss=f"{parts['loss']:.4f}")
                if cfg.log_every and self.state.step % cfg.log_every == 0:
                    self.logger.write({"event": "step", "epoch": epoch, "step": self.state.step,
                                       "lr": scheduler.get_last_lr()[0], **parts})
                if cfg.checkpoint_every and self.state.step % cfg.checkpoint_every == 0:
                    self.save(optimizer, scheduler, scaler)
                if self.step_callback is not None:
                    self.step_callback(self.state, parts)
            self.state.epoch += 1
            self.state.batch_in_epoch = 0
            self.logger.write({"event": "epoch", "epoch": epoch, "step": self.state.step,
                               **{f"mean_{k}": v / max(count, 1) for k, v in sums.items()}})
            self.save(optimizer, scheduler, scaler)
        elapsed = time.perf_counter() - started
        summary = {"epochs": preset.epochs, "steps": self.state.step, "steps_per_epoch": steps_per_epoch,
                   "labels": labels, "initialisation": self.initialisation,
                   "train_samples": len(dataset), "train_seconds": elapsed, "final_loss": last_loss,
                   "samples_per_second_per_rank": samples_seen / elapsed if elapsed > 0 and samples_seen else None}
        self.logger.write({"event": "trained", **summary})
        return summary

    def _train_step(self, step_module, batch, optimizer, scheduler, scaler) -> dict[str, float]:
        with autocast_context(self.device, self.precision):
            out = step_module(batch, self.state)
        loss = out["loss"]
        if not torch.isfinite(loss.detach()).all():
            raise FloatingPointError(f"{self.config.method}: loss is {loss.item()} at step {self.state.step} "
                                     f"(epoch {self.state.epoch}); try a lower learning rate or --precision fp32")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        self.state.step += 1
        self.state.batch_in_epoch += 1
        return {k: float(v.detach().float().mean()) if isinstance(v, torch.Tensor) else float(v)
                for k, v in out.items()}

    def evaluate(self) -> dict[str, Any]:
        from aubench.engine.evaluator import evaluate_method

        result = evaluate_method(self.method, self.data, self.preset, self.env, precision=self.precision,
                                 workers=self.workers, progress=self.config.progress)
        self.logger.write({"event": "evaluate", "mean_f1": result["mean_f1"],
                           "all_positive_mean_f1": result["all_positive_mean_f1"]})
        return result
