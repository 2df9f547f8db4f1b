"""Train + test one (method, fold, protocol): one result record per tested stage and test
condition (read by the leaderboard), each with the per-frame predictions it was computed from
(written beside it: aubench.engine.predictions.write_result), and in a run with a validation
split (--validation) its predictions on that split, made under the same test condition.

What was chosen, and on what, is recorded in every result (docs/validation.md): "selection" (the
tested checkpoint: --select, the stage and epoch, each epoch's scores when selected),
"thresholds" (0.5, or per AU chosen on the validation predictions: --thresholds best-val, which
then apply to the test predictions too), "validation" (the held-out subjects and the validation
mean F1), and in words "chosen_on_test" (what was chosen on the test set: --select best-test;
the leaderboard marks such rows) and "choices" (the other choices and how they were made)."""
from __future__ import annotations

import platform
import sys
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Collection, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from aubench.data.occlusion import condition_name
from aubench.engine.config import RunConfig
from aubench.engine.planning import parse_occlusion_option
from aubench.engine.postprocess import THRESHOLDS_CHOICE, thresholds_record, with_best_thresholds
from aubench.engine.predictions import Predictions
from aubench.engine.results import RESULT_SCHEMA
from aubench.engine.trainer import Trainer
from aubench.models.base import method_label, row_method_name, tested_stages, trained_under


def protocol_name(label_ratio: float, train_occlusion: str = "none", test_occlusion: str = "none") -> str:
    """"full" with every training label, "sparse<r>" under the sparse-label protocol; then
    "_train-<condition>" / "_test-<condition>" when the training / test images are occluded
    (condition names, aubench.data.occlusion: "full_test-patches0.5")."""
    name = "full" if label_ratio >= 1.0 else f"sparse{label_ratio:g}"
    if train_occlusion != "none":
        name += f"_train-{train_occlusion}"
    if test_occlusion != "none":
        name += f"_test-{test_occlusion}"
    return name


def versions() -> dict[str, str]:
    import aubench
    import h5py
    import timm

    out = {"aubench": aubench.__version__, "python": sys.version.split()[0], "torch": torch.__version__,
           "timm": timm.__version__, "numpy": np.__version__, "h5py": h5py.__version__,
           "platform": platform.platform()}
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    try:
        from aubench.ops import have_cuda_kernels, have_extension

        out["aubench_extension"] = str(have_extension())
        out["aubench_cuda_kernels"] = str(have_cuda_kernels())
    except Exception:  # the ops package is optional for frame methods
        pass
    return out


def inputs_read_at_test(inputs: Sequence[str], test: str, occluded_landmarks: str = "clean",
                       landmark_counts: Mapping[str, int] | None = None) -> tuple[dict[str, str], list[str]]:
    """(what a tested method read at test time besides the image, by input; the part of it a
    deployed detector would not have, in words). `inputs`: AUMethod.test_inputs(); `test`: the
    test condition's name. Under an occluded condition the data file's landmarks are those of
    the clean frame (privileged), unless `occluded_landmarks` is "detect" (re-detected on the
    occluded image; `landmark_counts`: {"detected", "mean_shape"} frames); the occlusion mask is
    privileged under any occluded condition. On clean faces the file's landmarks are the test
    frame's own: recorded, not privileged."""
    record, privileged = {}, []
    occluded = test != "none"
    if "landmarks" in inputs:
        if occluded and occluded_landmarks == "detect":
            counts = landmark_counts or {}
            record["landmarks"] = (f"detected on the occluded test image ({counts.get('detected', 0)} frames; the "
                                   f"training faces' mean shape on {counts.get('mean_shape', 0)} frames without a "
                                   f"face found)")
        elif occluded:
            record["landmarks"] = "the data file's, of the clean frame"
            privileged.append("landmarks of the clean frame")
        else:
            record["landmarks"] = "the data file's, of the test frame"
    if "occlusion_mask" in inputs:
        record["occlusion_mask"] = "which pixels are occluded"
        if occluded:
            privileged.append("which patches are occluded")
    return record, privileged


# How a result's checkpoint was chosen, in its "chosen_on_test" / "choices" (--select)
CHECKPOINT_ON_TEST = "checkpoint: the epoch of the best test mean F1 (--select best-test)"
CHECKPOINT_ON_VALIDATION = "checkpoint: the epoch of the best validation mean F1"


class TestedResult(NamedTuple):
    """One result of train_and_evaluate with the per-frame predictions it was computed from (on
    the test split, and on the run's validation split: None without one)."""

    result: dict[str, Any]
    predictions: Predictions
    validation: Predictions | None


def choices_made(config: RunConfig) -> tuple[list[str], list[str]]:
    """(what a run's results chose on the test set, the other choices and how they were made),
    in words, from its --select and --thresholds."""
    on_test = [CHECKPOINT_ON_TEST] if config.select == "best-test" else []
    choices = [CHECKPOINT_ON_VALIDATION] if config.select == "best-val" else []
    if config.thresholds == "best-val":
        choices.append(THRESHOLDS_CHOICE)
    return on_test, choices


def train_and_evaluate(config: RunConfig, bench: Mapping[str, dict[str, Any]] | None = None, step_callback=None,
                       test_occlusions: Sequence[str] = ("none",),
                       only: Collection[tuple[str, str]] | None = None) -> list[TestedResult]:
    """Train (every stage not finished yet), then test each tested stage's method (the last
    stage's; for a method whose stages are leaderboard rows, every row's: tested_stages; under
    --select its selected epoch's weights) on the fold's test split under each test occlusion
    condition; one result record per (tested stage, condition), stage by stage, conditions in
    order (all ranks), each with its per-frame predictions, and with a validation split its
    predictions there under the same condition (with --thresholds best-val the per-AU thresholds
    chosen on them are the test predictions' too): TestedResult triples. `bench`: the size /
    speed record of each tested stage, by stage name; `only`: the (stage name, condition name)
    pairs to test (default: all). A row's result is the method "<method>-<row>"; every result
    names its "tested_stage"."""
    conditions = [parse_occlusion_option("--test-occlusion", text) for text in test_occlusions]
    trainer = Trainer(config, step_callback=step_callback)
    training = trainer.fit()
    from aubench.bench import cpu_info, device_name

    config = trainer.config
    train = condition_name(trainer.train_occlusion)
    stages = [{**stage.settings(), **record} for stage, record in zip(trainer.stages, trainer.records)]
    on_test, choices = choices_made(config)
    results = []
    for stage in tested_stages(trainer.stages):
        for occlusion in conditions:
            test = condition_name(occlusion)
            if only is not None and (stage.name, test) not in only:
                continue
            metrics, predictions = trainer.evaluate_with_predictions(occlusion, stage.name)
            inputs, privileged = inputs_read_at_test(trainer.tested_method(stage.name).test_inputs(), test,
                                                    config.occluded_landmarks, trainer.test_landmark_counts)
            validation, validation_record = None, {}
            if trainer.data.validation_subjects:
                _, validation = trainer.evaluate_with_predictions(occlusion, stage.name, split="validation")
                labels = trainer.data.scoring_labels("validation", config.label_ratio)
                if config.thresholds == "best-val":
                    validation = with_best_thresholds(validation, labels)
                    predictions = replace(predictions, threshold=validation.threshold)
                    metrics = predictions.metrics(trainer.data.file.labels)
                validation_metrics = validation.metrics(labels)
                validation_record = {"validation": {**trainer.data.validation_record(config.label_ratio),
                                                    "mean_f1": validation_metrics["mean_f1"],
                                                    "f1": validation_metrics["f1"]}}
            results.append(TestedResult({
                "schema": RESULT_SCHEMA,
                "method": row_method_name(method_label(config.method, config.variant), stage),
                "tested_stage": stage.name,
                "dataset": trainer.data.dataset,
                "fold": config.fold,
                # the label protocol (and how the method is evaluated: "+linear-probe"); the occlusion
                # conditions have their own field (file names carry both)
                "protocol": protocol_name(config.label_ratio) + (f"+{trainer.method_cls.evaluation}"
                                                                 if trainer.method_cls.evaluation else ""),
                "label_ratio": config.label_ratio,
                "realised_label_ratio": training["labels"]["realised_label_ratio"],
                # the tested row's own training condition (trained_under: MAE-FAU's reconstruction
                # baseline trains clean in a run whose teacher trains occluded)
                "occlusion": {"train": trained_under(trainer.stages, stage, train), "test": test},
                "initialisation": training["initialisation"],
                # what it read at test time besides the image; "privileged_test_inputs": what a
                # deployed detector would not have (the leaderboard marks such rows)
                "test_inputs": inputs, "privileged_test_inputs": privileged,
                "au_names": trainer.data.au_names,
                "metrics": metrics,
                "mean_f1": metrics["mean_f1"],
                # the tested checkpoint, the decision thresholds, the validation split; what was
                # chosen on the test set (the leaderboard marks such rows) and how else choices were made
                "selection": trainer.selection_record(stage.name),
                "thresholds": thresholds_record(predictions.threshold, trainer.data.au_names, config.thresholds),
                **validation_record,
                "chosen_on_test": on_test, "choices": choices,
                "bench": (bench or {}).get(stage.name, {}),
                "training": training,
                "stages": stages,
                "config": asdict(config),
                "preset": trainer.preset.__dict__,
                "precision": trainer.precision,
                "data": {"path": str(Path(config.data).resolve()), "fingerprint": trainer.data.fingerprint,
                         "num_test_frames": metrics["num_frames"],
                         # how the file's folds split it, where the dataset has several ways (Aff-Wild2)
                         **({"split_scheme": str(trainer.data.file.attrs["split_scheme"])}
                            if "split_scheme" in trainer.data.file.attrs else {}),
                         **({"pretrain_path": str(trainer.pretrain.path.resolve()),
                             "pretrain_fingerprint": trainer.pretrain.fingerprint} if trainer.pretrain else {})},
                "device": device_name(trainer.device),
                "cpu": cpu_info(),  # CPU figures depend on its kernels (AVX2 / AVX512) and threads
                "world_size": trainer.env.world_size,
                "versions": versions(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }, predictions, validation))
    return results


def result_row(result: dict[str, Any]) -> str | None:
    """The leaderboard row name (Stage.row) of a result of train_and_evaluate; None for a method without rows."""
    return next(stage["row"] for stage in result["stages"] if stage["name"] == result["tested_stage"])
