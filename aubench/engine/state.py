"""A run's state on disk: the training checkpoint (last.pt) saved and restored, the random
states it captures, and the weights files of stages (final_<stage>.pt, best_<stage>.pt), each
checked to belong to the run before it is used.

Exact resume: the checkpoint (`last.pt`, replaced atomically) holds the stage being trained
(its index and name), the records of the stages already finished, and that stage's model,
optimiser, scheduler, grad-scaler and RNG states (torch / CUDA / numpy / python / method
generators, per rank) and the position in the epoch. A finished stage is never trained again:
a resumed run continues inside the stage the checkpoint names, and the final weights of every
finished stage but the last are kept in `final_<stage>.pt`, from which a later stage's frozen
inputs are restored. The file format (checksums, atomic writes, the safe loader) is
aubench.engine.checkpoint's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from aubench.engine.checkpoint import (capture_rng_state, load_checkpoint, load_checkpoint_or_previous,
                                       load_model_state, restore_rng_state, save_checkpoint)
from aubench.engine.data_access import RunData
from aubench.engine.distributed import DistEnv
from aubench.engine.identity import differences_text, identity_differences
from aubench.engine.run_files import CHECKPOINT_NAME
from aubench.engine.step import StageSteps
from aubench.errors import UserError
from aubench.models.base import TrainState


def gather_rng(method: nn.Module, env: DistEnv) -> list[dict[str, Any]]:
    """Every rank's random states (capture_rng_state), in rank order, on every rank."""
    mine = capture_rng_state(method)
    if not env.distributed:
        return [mine]
    import torch.distributed as dist

    everyone: list[Any] = [None] * env.world_size
    dist.all_gather_object(everyone, mine)
    return everyone


class RunCheckpoints:
    """The checkpoint files of one run in `out`. `record`: what each file records of the run
    (its identity, aubench.engine.identity, with the AU set, world size and dataset), which a
    file must match to be this run's."""

    def __init__(self, out: Path, method: str, data: RunData, data_path: str, identity: dict[str, Any],
                 env: DistEnv):
        self.out, self.method, self.data, self.data_path, self.env = Path(out), method, data, data_path, env
        self.record = {**identity, "au_names": list(data.au_names), "world_size": env.world_size,
                       "dataset": data.dataset}
        self.path = self.out / CHECKPOINT_NAME

    def check(self, payload: dict, path, same_run: bool) -> None:
        """UserError when the checkpoint `payload` read from `path` was trained on another AU set
        or method; with `same_run`, when it belongs to another run than this one."""
        saved = payload.get("config", {})
        if list(saved.get("au_names", [])) != list(self.data.au_names):
            raise UserError(f"AU set mismatch: {path} was trained on AUs {saved.get('au_names')}, "
                            f"{self.data_path} has {list(self.data.au_names)}")
        if saved.get("method") != self.method:
            raise UserError(f"{path} holds method {saved.get('method')!r}, not {self.method!r}")
        if same_run:
            # The run's identity (aubench.engine.identity, stages included) and the world size,
            # which the per-rank RNG states of an exact resume need; the AU set was compared above.
            diffs = identity_differences(saved, self.record, "checkpoint", ignore=("au_names", "dataset"))
            if diffs:
                raise UserError(f"--resume: {path} belongs to a different run ({differences_text(diffs)}); "
                                f"use --overwrite instead of --resume to start it again")

    def save_training(self, stage: dict[str, Any], method: nn.Module, steps: StageSteps, state: TrainState,
                      finished_stages: list[dict[str, Any]], selection: dict[str, Any],
                      progress: dict[str, Any]) -> None:
        """The training checkpoint (every rank gathers its random states; rank 0 writes), the one
        before it kept (checkpoint.previous_path). `stage`: {"index", "name"} of the stage being trained."""
        rng = gather_rng(method, self.env)
        if not self.env.is_main:
            return
        save_checkpoint(self.path, keep_previous=True, payload={
            "config": self.record,
            "stage": stage,
            "finished_stages": finished_stages,
            "selection": selection,
            "model": method.state_dict(),
            "optimizer": steps.optimizer.state_dict(),
            "scheduler": steps.scheduler.state_dict(),
            "scaler": steps.scaler.state_dict(),
            "rng": rng,
            "train_state": {"epoch": state.epoch, "step": state.step, "batch_in_epoch": state.batch_in_epoch},
            "progress": progress,
        })

    def read_resume(self, device: torch.device) -> dict[str, Any]:
        """The checkpoint to resume from (or the one before it, when it is damaged), once it is
        known to be this run's."""
        if not self.path.is_file():
            raise UserError(f"--resume: no checkpoint at {self.path} (run without --resume to start)")
        payload = load_checkpoint_or_previous(self.path, map_location=device)
        self.check(payload, self.path, same_run=True)
        return payload

    def restore_training(self, payload: dict[str, Any], method: nn.Module, steps: StageSteps,
                         state: TrainState) -> dict[str, Any]:
        """The stage's model, optimiser, scheduler, scaler, this rank's random states and the
        position (into `state`) from a checkpoint of this stage (read_resume); the progress it
        saved (time, samples, losses; {} for a checkpoint made before stages existed)."""
        load_model_state(method, payload["model"], self.path)
        steps.optimizer.load_state_dict(payload["optimizer"])
        steps.scheduler.load_state_dict(payload["scheduler"])
        steps.scaler.load_state_dict(payload["scaler"])
        restore_rng_state(payload["rng"][self.env.rank], method)
        ts = payload["train_state"]
        state.epoch, state.step, state.batch_in_epoch = ts["epoch"], ts["step"], ts["batch_in_epoch"]
        return payload.get("progress", {})

    def save_weights(self, name: str, stage_index: int, stage_name: str, method: nn.Module, **extra) -> None:
        """A stage's weights into file `name` (rank 0), with what else the file records (`extra`)."""
        if self.env.is_main:
            save_checkpoint(self.out / name, {"config": self.record, "stage": {"index": stage_index, "name": stage_name},
                                              **extra, "model": method.state_dict()})

    def load_weights(self, path: Path, device: torch.device | str) -> dict[str, Any]:
        """A stage's weights file of this run (save_weights), checked to be this run's."""
        payload = load_checkpoint(path, map_location=device)
        self.check(payload, path, same_run=True)
        return payload
