"""One trainer for every method: the run planned, its stages trained in order by one loop, then tested.

A method only says what one training step computes (AUMethod.training_step) and how it
predicts; the trainer owns the loop (steps, epochs, stages, the method's hooks). A method that
trains in stages declares them (AUMethod.stages, aubench.models.base.Stage); the trainer runs
them in order through the same loop, each with a fresh optimiser and its own schedule
(aubench.engine.optim), and tests the last stage's method (or, for a method whose stages are
leaderboard rows, each row's: `Trainer.stage_method`). A single-stage method is one stage: the
preset as it is. The training occlusion (--train-occlusion, else the preset's train_occlusion)
applies to every stage but those with `occluded=False`.

Where each concern lives: the plan and its checks, aubench.engine.planning; building each
stage's method, aubench.engine.stage_methods; its batches, aubench.engine.training_data; one
optimiser step (gradient accumulation), aubench.engine.step; the checkpoint and exact resume,
aubench.engine.state; --select, aubench.engine.selection; precision and batches on the device,
aubench.engine.device; testing, aubench.engine.evaluator.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from aubench.data.occlusion import condition_name
from aubench.engine.config import RunConfig
from aubench.engine.device import move_batch
from aubench.engine.distributed import DistEnv, setup_distributed, step_module
from aubench.engine.evaluator import evaluate_with_predictions
from aubench.engine.logging import JsonlLogger, TensorboardScalars, epoch_summary
from aubench.engine.memory import out_of_memory_stops
from aubench.engine.planning import plan_run, stage_seed
from aubench.engine.progress import StageProgress, run_seconds_left, stage_record, training_summary
from aubench.engine.run_files import LOG_NAME, claim_run_dir, stage_file_name
from aubench.engine.selection import Selection
from aubench.engine.stage_methods import StageMethods, train_mode
from aubench.engine.state import RunCheckpoints
from aubench.engine.step import StageSteps
from aubench.engine.training_data import stage_dataset, stage_loader
from aubench.errors import UserError
from aubench.models.base import AUMethod, Stage, TrainState


class Trainer:
    """Trains one method on one fold, stage by stage; `fit()` then `evaluate()` (aubench.engine.evaluator)."""

    def __init__(self, config: RunConfig, env: DistEnv | None = None,
                 step_callback: Callable[[TrainState, dict[str, float]], None] | None = None):
        self.env = env or setup_distributed(config.device)
        self.device = self.env.device
        self.step_callback = step_callback
        plan = plan_run(config, self.env.world_size, self.device)
        self.config, self.method_cls, self.data, self.preset = plan.config, plan.method_cls, plan.data, plan.preset
        self.stages, self.train_occlusion, self.precision = plan.stages, plan.train_occlusion, plan.precision
        self.pretrain, self.identity = plan.pretrain, plan.identity
        config = self.config
        if self.device.type == "cpu" and config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        # Class weights from the labels this run may see: under a label ratio < 1 the kept labels
        # only, never the file's dense per-fold statistics.
        self.label_statistics = self.data.train_label_statistics(config.label_ratio)
        self.class_weights = torch.as_tensor(self.label_statistics["class_weight"], dtype=torch.float32)
        self.checkpoints = RunCheckpoints(config.out, config.method, self.data, config.data, self.identity, self.env)
        self.methods = StageMethods(self.method_cls, config, self.data, self.stages, self.label_statistics,
                                    self.class_weights, self.env, self.checkpoints)
        self.records: list[dict[str, Any]] = []  # one per finished stage
        # Trained methods of earlier stages the trainer holds (what later stages read, and after
        # fit() the tested stages it has loaded), by stage name.
        self.trained: dict[str, AUMethod] = {}
        self.test_landmark_counts: dict[str, int] | None = None
        self.stage_index = 0
        self.method = self.build_stage(0, {})
        self.state = TrainState(epochs=self.stage.preset.epochs, stage=self.stage.name)
        self.workers = config.workers if config.workers is not None else (4 if self.device.type == "cuda" else 0)
        # Last, once everything else is known to be usable: an --overwrite never loses the old
        # run to a mistake found later.
        self.tensorboard = TensorboardScalars(config.tensorboard, enabled=self.env.is_main and bool(config.tensorboard))
        claim_run_dir(config.out, config.resume, config.overwrite, self.env.is_main)
        self.logger = JsonlLogger(self.checkpoints.out / LOG_NAME, enabled=self.env.is_main)
        self.selector = Selection(config.select, self.methods, self.logger)

    @property
    def stage(self) -> Stage:
        """The stage being trained (after fit(): the last, whose method is tested)."""
        return self.stages[self.stage_index]

    @property
    def selection(self) -> dict[str, dict[str, Any]]:
        """--select's scores so far, by stage name (Selection.scores)."""
        return self.selector.scores

    def build_stage(self, index: int, trained: dict[str, AUMethod], restoring: bool = False) -> AUMethod:
        """The method of stage `index` (StageMethods.build); its initialisation and frozen parts noted."""
        method, self.initialisation, self.frozen_modules = self.methods.build(index, trained, restoring)
        return method

    def per_rank_batch_size(self) -> int:
        """The batch of one training step of one process: the stage's global batch over the
        processes and the micro-batches of an optimiser step (--accumulate)."""
        return max(1, self.stage.preset.batch_size // (self.env.world_size * self.config.accumulate))

    def train_dataset(self):
        """The current stage's training set (training_data.stage_dataset)."""
        return stage_dataset(self.stage, self.config, self.method, self.data, self.pretrain, self.train_occlusion)

    def train_loader(self, dataset, sampler: DistributedSampler, skip_batches: int) -> DataLoader:
        return stage_loader(dataset, sampler, self.per_rank_batch_size(), self.method, self.stage.preset.clip_len,
                            skip_batches, self.workers, self.device, self.config.accumulate)

    # -- state ------------------------------------------------------------------------------
    def save(self, steps: StageSteps) -> None:
        self.checkpoints.save_training({"index": self.stage_index, "name": self.stage.name}, self.method, steps,
                                       self.state, self.records, self.selection, self.progress.now())

    def restore(self, payload: dict[str, Any], steps: StageSteps) -> None:
        """The current stage's state from a checkpoint of this stage (RunCheckpoints.read_resume)."""
        saved = self.checkpoints.restore_training(payload, self.method, steps, self.state)
        self.progress = StageProgress(self.initialisation, saved)
        self.logger.write({"event": "resume", "stage": self.stage.name, **payload["train_state"]})
        if self.stage.name in self.selector.stages:
            self.selector.check_best_file(self.stage_index, self.method, self.state)

    # -- training -------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train every stage not finished yet; the training summary of the run."""
        try:
            return self._fit()
        finally:
            self.tensorboard.close()  # its events on disk, also when training stops

    def _fit(self) -> dict[str, Any]:
        payload = self.checkpoints.read_resume(self.device) if self.config.resume else None
        first = int(payload.get("stage", {}).get("index", 0)) if payload else 0
        self.trained = {}
        if payload is not None:
            self.records = list(payload.get("finished_stages", []))
            self.selector.scores = dict(payload.get("selection", {}))
            needed = self.methods.needed(first, restoring=True)
            self.trained = {self.stages[i].name: self.methods.load_final(i) for i in range(first)
                            if self.stages[i].name in needed}
        for index in range(first, len(self.stages)):
            if index != self.stage_index:
                self.method = self.build_stage(index, self.trained, restoring=payload is not None and index == first)
                self.stage_index = index
            # Hold on only to what later stages read (this stage's frozen inputs it holds itself).
            needed = self.methods.needed(index + 1, restoring=False)
            self.trained = {name: method for name, method in self.trained.items() if name in needed}
            self.records.append(self._fit_stage(payload if index == first else None))
            if index + 1 < len(self.stages):
                self.checkpoints.save_weights(stage_file_name(self.stage.name), index, self.stage.name, self.method)
                self.trained[self.stage.name] = self.method
        summary = training_summary(self.records, self.data.label_report(self.config.label_ratio))
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
        note = labels and self.data.label_note(labels)
        if note and env.is_main and stage is next((s for s in self.stages if s.uses_labels), None):
            print(note, flush=True)
        sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                     seed=stage_seed(cfg.seed, self.stage_index), drop_last=False)
        accumulate = cfg.accumulate
        micro_batches = len(self.train_loader(dataset, sampler, 0))  # per epoch
        steps_per_epoch = -(-micro_batches // accumulate)
        steps = StageSteps(self.method, preset, steps_per_epoch, self.device, self.precision, self.checkpoints.path)
        self.state = TrainState(epochs=preset.epochs, stage=stage.name, total_steps=steps_per_epoch * preset.epochs)
        self.progress = StageProgress(self.initialisation)
        if payload is not None:
            self.restore(payload, steps)
        module = step_module(self.method, env)
        sampler.set_epoch(self.state.epoch)
        loader = self.train_loader(dataset, sampler, 0)  # one per stage: its workers persist
        self.logger.write({"event": "start", "stage": stage.name, "stage_index": self.stage_index,
                           "config": asdict(cfg), "preset": preset.__dict__, "stage_settings": stage.settings(),
                           "labels": labels, "precision": self.precision, "device": str(self.device),
                           "world_size": env.world_size, "train_samples": len(dataset),
                           "steps_per_epoch": steps_per_epoch})
        where = f"{cfg.method} fold{cfg.fold}" + (f" {stage.name}" if len(self.stages) > 1 else "")
        while self.state.epoch < preset.epochs:
            epoch = self.state.epoch
            sampler.set_epoch(epoch)
            loader.batch_sampler.skip = self.state.batch_in_epoch  # done before a resume (checkpoints: whole steps)
            train_mode(self.method, self.frozen_modules)
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
                position = self.state.batch_in_epoch  # micro-batches of the optimiser step: first .. first + size - 1
                first = position - position % accumulate
                size = min(accumulate, micro_batches - first)
                last = position + 1 == first + size  # the step's last micro-batch: the optimiser steps
                with out_of_memory_stops(doing, "--batch-size", self.per_rank_batch_size(), self.checkpoints.path):
                    parts = steps.step(module, move_batch(batch, self.device), self.state, size, last=last)
                self.progress.step(batch["image"].shape[0], parts)
                count += 1
                frames += batch["image"].shape[0]
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                if env.is_main:
                    bar.set_postfix(loss=f"{parts['loss']:.4f}")
                if not last:
                    continue  # a micro-batch before its step's last: no optimiser step yet
                if cfg.log_every and self.state.step % cfg.log_every == 0:
                    self.logger.write({"event": "step", "stage": stage.name, "epoch": epoch, "step": self.state.step,
                                       "lr": steps.lr(), **parts})
                    self.tensorboard.add(self.state.step, {"lr": steps.lr(), **parts}, stage.name)
                if cfg.checkpoint_every and self.state.step % cfg.checkpoint_every == 0:
                    self.save(steps)
                if self.step_callback is not None:
                    self.step_callback(self.state, parts)
            self.state.epoch += 1
            self.state.batch_in_epoch = 0
            means = {k: v / max(count, 1) for k, v in sums.items()}
            self.logger.write({"event": "epoch", "stage": stage.name, "epoch": epoch, "step": self.state.step,
                               **{f"mean_{k}": v for k, v in means.items()}})
            self.tensorboard.add(self.state.step, {f"mean_{k}": v for k, v in means.items()}, stage.name)
            if cfg.progress and env.is_main:  # one line per epoch that stays on screen (stderr)
                seconds = self.progress.now()["seconds"]
                run_left = run_seconds_left(self.records, self.stages, self.stage_index, epoch + 1, seconds)
                tqdm.write(epoch_summary(f"{cfg.method} fold{cfg.fold} stage {stage.name}", epoch, preset.epochs, means,
                                         steps.lr(), time.perf_counter() - epoch_started, frames, seconds, run_left),
                           file=sys.stderr)
            best = (stage.name in self.selector.stages
                    and self.selector.score_epoch(self.method, stage, self.state.epoch, self.data, env, self.precision,
                                                  self.workers, cfg.label_ratio))
            self.save(steps)
            if best:  # after the checkpoint that records it (see Selection.check_best_file)
                self.selector.save_best(self.stage_index, self.method, self.state.epoch)
        record = stage_record(stage, self.state.step, steps_per_epoch, len(dataset), self.progress.now(), labels)
        self.logger.write({"event": "stage_trained", **record})
        return record

    # -- testing --------------------------------------------------------------------------------
    def stage_method(self, name: str) -> AUMethod:
        """The trained method of stage `name` (after fit(): the last stage, or an earlier one, to
        test a leaderboard row), ready to predict: the current stage's, else one the trainer
        holds or loads (StageMethods.trained_method)."""
        if self.methods.index(name) == self.stage_index:
            return self.method
        held = {**self.method.frozen_inputs, **self.trained}
        return self.methods.trained_method(name, held, self.stage_method, keep=self.trained)

    def tested_method(self, name: str) -> AUMethod:
        """The method tested for stage `name` (Selection.tested_method: its selected epoch's under --select)."""
        return self.selector.tested_method(name, self.stage_method)

    def selection_record(self, name: str) -> dict[str, Any]:
        """What a result of tested stage `name` records of its checkpoint (Selection.record)."""
        return self.selector.record(name)

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
        tested = self.stage if stage is None else self.stages[self.methods.index(stage)]
        method = self.tested_method(tested.name)
        # landmarks re-detected on occluded test images (--occluded-landmarks detect): counted
        detect = (self.config.occluded_landmarks == "detect" and occlusion is not None
                  and "landmarks" in method.test_inputs())
        counts = {"detected": 0, "mean_shape": 0} if detect else None
        if split == "test":
            self.test_landmark_counts = counts
        metrics, predictions = evaluate_with_predictions(
            method, self.data, tested.preset, self.env, precision=self.precision, workers=self.workers,
            progress=self.config.progress, occlusion=occlusion, landmark_counts=counts, split=split,
            label_ratio=self.config.label_ratio)
        self.logger.write({"event": "evaluate", "stage": tested.name, "split": split,
                           "test_occlusion": condition_name(occlusion), "mean_f1": metrics["mean_f1"],
                           "all_positive_mean_f1": metrics["all_positive_mean_f1"]})
        return metrics, predictions
