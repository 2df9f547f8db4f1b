"""Train + test one (method, fold, protocol): one result record per tested stage and test
condition (read by the leaderboard), each with the per-frame predictions it was computed from
(written beside it: aubench.engine.predictions.write_result)."""
from __future__ import annotations

import platform
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

import numpy as np
import torch

from aubench.data.occlusion import condition_name
from aubench.engine.predictions import Predictions
from aubench.engine.trainer import RunConfig, Trainer, parse_occlusion_option
from aubench.leaderboard import RESULT_SCHEMA
from aubench.models.base import method_label, row_method_name, tested_stages


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


def train_and_evaluate(config: RunConfig, bench: Mapping[str, dict[str, Any]] | None = None, step_callback=None,
                       test_occlusions: Sequence[str] = ("none",),
                       only: Collection[tuple[str, str]] | None = None
                       ) -> list[tuple[dict[str, Any], Predictions]]:
    """Train (every stage not finished yet), then test each tested stage's method (the last
    stage's; for a method whose stages are leaderboard rows, every row's: tested_stages) on the
    fold's test split under each test occlusion condition; one result record per (tested stage,
    condition), stage by stage, conditions in order (all ranks), each with its per-frame
    predictions: (result, Predictions) pairs. `bench`: the size / speed record
    of each tested stage, by stage name; `only`: the (stage name, condition name) pairs to test
    (default: all). A row's result is the method "<method>-<row>"; every result names its
    "tested_stage"."""
    conditions = [parse_occlusion_option("--test-occlusion", text) for text in test_occlusions]
    trainer = Trainer(config, step_callback=step_callback)
    training = trainer.fit()
    from aubench.bench import cpu_info, device_name

    config = trainer.config
    train = condition_name(trainer.train_occlusion)
    stages = [{**stage.settings(), **record} for stage, record in zip(trainer.stages, trainer.records)]
    results = []
    for stage in tested_stages(trainer.stages):
        for occlusion in conditions:
            test = condition_name(occlusion)
            if only is not None and (stage.name, test) not in only:
                continue
            metrics, predictions = trainer.evaluate_with_predictions(occlusion, stage.name)
            results.append(({
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
                "occlusion": {"train": train, "test": test},
                "initialisation": training["initialisation"],
                "au_names": trainer.data.au_names,
                "metrics": metrics,
                "mean_f1": metrics["mean_f1"],
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
            }, predictions))
    return results


def result_row(result: dict[str, Any]) -> str | None:
    """The leaderboard row name (Stage.row) of a result of train_and_evaluate; None for a method without rows."""
    return next(stage["row"] for stage in result["stages"] if stage["name"] == result["tested_stage"])
