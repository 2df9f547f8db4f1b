"""Checkpoint selection (--select; docs/validation.md).

With `select` "best-val" each tested stage (the last stage, or every stage that is a leaderboard
row) is scored on the validation split after each of its epochs (mean F1, clean images, the
labels the protocol keeps) and the weights of its best epoch (the earliest of equal scores) are
kept in `best_<stage>.pt`; that stage is then tested with them, while later stages read the
weights each stage ended with, as they trained. "best-test" does the same on the test split,
only to measure how optimistic choosing on the test set is (its results say so); "last" (the
default) tests the last epoch. The scoring saves and restores every random state around itself,
so a run trains the same whatever it selects. The training checkpoint holds the scores so far
("selection"); it is written before the best-epoch file, and a resume finds that file from its
epoch or writes it again from the checkpoint of that epoch.
"""
from __future__ import annotations

from typing import Any, Callable

from aubench.engine.checkpoint import capture_rng_state, load_checkpoint, load_model_state, restore_rng_state
from aubench.engine.data_access import RunData
from aubench.engine.distributed import DistEnv
from aubench.engine.evaluator import evaluate_with_predictions
from aubench.engine.logging import JsonlLogger
from aubench.engine.run_files import best_file_name
from aubench.engine.stage_methods import StageMethods, freeze
from aubench.errors import UserError
from aubench.models.base import AUMethod, Stage, TrainState, tested_stages


class Selection:
    """The --select choice of one run: the stages it scores, their scores so far (`scores`: stage
    name -> {"split", "epochs": [{"epoch", "<split>_mean_f1"...}], "best_epoch", "best_score"}),
    and the tested methods with their selected weights, once loaded."""

    def __init__(self, select: str, methods: StageMethods, logger: JsonlLogger):
        self.select, self.methods, self.logger = select, methods, logger
        self.stages = [] if select == "last" else [stage.name for stage in tested_stages(methods.stages)]
        self.scores: dict[str, dict[str, Any]] = {}
        self.selected: dict[str, AUMethod] = {}

    def score_epoch(self, method: AUMethod, stage: Stage, epoch: int, data: RunData, env: DistEnv, precision: str,
                    workers: int, label_ratio: float) -> bool:
        """Score stage `stage`'s method after its epoch `epoch` (counted from 1) on the split it is
        selected on (best-val: validation; best-test: test, and validation too when the run has
        one), clean images, mean F1; add the scores to `scores`. True when this epoch is the best
        so far (strictly better than every earlier one). Every random state is restored
        afterwards, so training goes on exactly as without the scoring."""
        split = "validation" if self.select == "best-val" else "test"
        splits = ["validation", "test"] if split == "test" and data.validation_subjects else [split]
        rng = capture_rng_state(method)
        scores: dict[str, Any] = {"epoch": epoch}
        for name in splits:
            metrics, _ = evaluate_with_predictions(method, data, stage.preset, env, precision=precision,
                                                   workers=workers, split=name, label_ratio=label_ratio)
            scores[f"{name}_mean_f1"] = metrics["mean_f1"]
        restore_rng_state(rng, method)
        record = self.scores.setdefault(stage.name, {"split": split, "epochs": [], "best_epoch": None,
                                                     "best_score": None})
        record["epochs"].append(scores)
        best = record["best_score"] is None or scores[f"{split}_mean_f1"] > record["best_score"]
        if best:
            record["best_epoch"], record["best_score"] = epoch, scores[f"{split}_mean_f1"]
        self.logger.write({"event": "select", "stage": stage.name, **scores, "best_epoch": record["best_epoch"]})
        return best

    def save_best(self, index: int, method: AUMethod, epoch: int) -> None:
        """Stage `index`'s weights as its selected epoch's (best_<stage>.pt)."""
        name = self.methods.stages[index].name
        self.methods.checkpoints.save_weights(best_file_name(name), index, name, method, epoch=epoch)

    def check_best_file(self, index: int, method: AUMethod, state: TrainState) -> None:
        """On resume inside a selected stage (after its checkpoint is restored into `method` and
        `state`): its best-epoch file must hold the epoch the checkpoint's scores name. A run
        killed after the checkpoint of its best epoch and before that file was written gets the
        file again from the checkpoint, which holds that epoch's weights; anything else is a UserError."""
        name = self.methods.stages[index].name
        record = self.scores.get(name)
        if not record or record["best_epoch"] is None or not self.methods.env.is_main:
            return
        path = self.methods.checkpoints.out / best_file_name(name)
        saved = load_checkpoint(path, map_location="cpu").get("epoch") if path.is_file() else None
        if saved == record["best_epoch"]:
            return
        if state.epoch == record["best_epoch"] and state.batch_in_epoch == 0:
            self.save_best(index, method, state.epoch)
            return
        raise UserError(f"--resume: {path} does not hold epoch {record['best_epoch']} of stage {name!r}, "
                        f"its best so far; use --overwrite instead of --resume to train the run again")

    def tested_method(self, name: str, stage_method: Callable[[str], AUMethod]) -> AUMethod:
        """The method tested for stage `name`: with --select last, or a stage that is not tested,
        its trained method (`stage_method`); else its selected epoch's weights (best_<stage>.pt),
        with the frozen inputs it trained with (the earlier stages' final weights)."""
        if name not in self.stages:
            return stage_method(name)
        if name not in self.selected:
            stage = self.methods.stages[self.methods.index(name)]
            path = self.methods.checkpoints.out / best_file_name(name)
            if not path.is_file():
                raise UserError(f"{path} (the weights of stage {name!r}'s selected epoch) is missing; use "
                                f"--overwrite instead of --resume to train the run again")
            payload = self.methods.checkpoints.load_weights(path, self.methods.env.device)
            if payload.get("epoch") != self.scores.get(name, {}).get("best_epoch"):
                raise UserError(f"{path} holds epoch {payload.get('epoch')}, not stage {name!r}'s selected epoch; "
                                f"use --overwrite instead of --resume to train the run again")
            method = self.methods.new_method(stage, self.methods.stage_class_weights(stage))
            load_model_state(method, payload["model"], path)
            method.frozen_inputs = {source: freeze(stage_method(source)) for source in stage.frozen_inputs}
            self.selected[name] = method
        return self.selected[name]

    def record(self, name: str) -> dict[str, Any]:
        """What a result of tested stage `name` records of its checkpoint: {"checkpoint": the
        --select value, "stage", "epoch": the tested epoch, "epochs": the stage's}, and with a
        selection the split it was made on and every epoch's scores."""
        stage = self.methods.stages[self.methods.index(name)]
        if name not in self.stages:
            return {"checkpoint": "last", "stage": name, "epoch": stage.preset.epochs, "epochs": stage.preset.epochs}
        record = self.scores[name]
        return {"checkpoint": self.select, "stage": name, "epoch": record["best_epoch"],
                "epochs": stage.preset.epochs, "split": record["split"], "scores": record["epochs"]}
