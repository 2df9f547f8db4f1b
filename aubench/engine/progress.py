"""How far training has come: the time, samples and last losses of the stage being trained
(carried across resumes by the checkpoint), each finished stage's record, and the run's
training summary (a result's "training" and "stages")."""
from __future__ import annotations

import time
from typing import Any

from aubench.engine.logging import plain
from aubench.models.base import Stage


class StageProgress:
    """The stage's training time, samples seen and last step's losses, counted from `saved` (the
    progress a checkpoint holds, StageProgress.now; None for a fresh stage) and the time of creation."""

    def __init__(self, initialisation: str, saved: dict[str, Any] | None = None):
        saved = saved or {}  # checkpoints made before stages existed have none
        self.seconds = saved.get("seconds", 0.0)
        self.samples = saved.get("samples", 0)
        self.losses = saved.get("losses", {})
        self.initialisation = saved.get("initialisation", initialisation)
        self.started = time.perf_counter()

    def step(self, frames: int, losses: dict[str, float]) -> None:
        """One training step of `frames` samples done, with these losses."""
        self.samples += frames
        self.losses = losses

    def now(self) -> dict[str, Any]:
        """{"seconds", "samples", "losses", "initialisation"} so far (resumed runs included)."""
        return {"seconds": self.seconds + time.perf_counter() - self.started, "samples": self.samples,
                "losses": self.losses, "initialisation": self.initialisation}


def stage_record(stage: Stage, steps: int, steps_per_epoch: int, train_samples: int, progress: dict[str, Any],
                 labels: dict[str, Any] | None) -> dict[str, Any]:
    """The record of a finished stage (JSON-safe): its epochs, steps, samples, time, throughput,
    final losses, initialisation, and the labels it trained on (a stage that uses labels)."""
    losses = progress["losses"]
    record = {"name": stage.name, "epochs": stage.preset.epochs, "steps": steps,
              "steps_per_epoch": steps_per_epoch, "train_samples": train_samples,
              "initialisation": progress["initialisation"], "train_seconds": progress["seconds"],
              "samples_seen": progress["samples"],
              "samples_per_second_per_rank": (progress["samples"] / progress["seconds"]
                                              if progress["seconds"] > 0 and progress["samples"] else None),
              "final_loss": losses.get("loss", float("nan")), "final_losses": losses}
    if labels is not None:
        record["labels"] = labels
    return plain(record)


def training_summary(records: list[dict[str, Any]], labels: dict[str, Any]) -> dict[str, Any]:
    """The run's training summary from its stages' records (stage_record): epochs, steps, time and
    throughput over all stages; steps per epoch, samples and final loss of the last; the first's
    initialisation; `labels`: the run's label report."""
    seconds = sum(r["train_seconds"] for r in records)
    samples = sum(r["samples_seen"] for r in records)
    final = records[-1]
    return {"epochs": sum(r["epochs"] for r in records), "steps": sum(r["steps"] for r in records),
            "steps_per_epoch": final["steps_per_epoch"], "labels": labels,
            "initialisation": records[0]["initialisation"], "train_samples": final["train_samples"],
            "train_seconds": seconds, "final_loss": final["final_loss"],
            "samples_per_second_per_rank": samples / seconds if seconds > 0 and samples else None}


def run_seconds_left(records: list[dict[str, Any]], stages: list[Stage], index: int, epochs_done: int,
                     stage_seconds: float) -> float | None:
    """The time left of a run of several stages (None for one stage: its ETA is the stage's),
    after `epochs_done` epochs of stage `index` in `stage_seconds`: this stage's epochs left at
    its mean epoch time, each later stage's at the mean epoch time of every epoch trained so far
    (finished stages' `records` included; a stage's own pace is known only once it runs)."""
    if len(stages) == 1:
        return None
    this_stage = (stages[index].preset.epochs - epochs_done) * stage_seconds / max(epochs_done, 1)
    per_epoch = ((sum(r["train_seconds"] for r in records) + stage_seconds)
                 / max(sum(r["epochs"] for r in records) + epochs_done, 1))
    return this_stage + per_epoch * sum(stage.preset.epochs for stage in stages[index + 1:])
