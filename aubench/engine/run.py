"""Train + test one (method, fold, protocol) and write its result JSON (read by the leaderboard)."""
from __future__ import annotations

import platform
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aubench.engine.trainer import RunConfig, Trainer
from aubench.leaderboard import RESULT_SCHEMA


def protocol_name(label_ratio: float) -> str:
    """"full" with every training label, "sparse<r>" under the sparse-label protocol."""
    return "full" if label_ratio >= 1.0 else f"sparse{label_ratio:g}"


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


def train_and_evaluate(config: RunConfig, bench: dict[str, Any] | None = None, step_callback=None) -> dict[str, Any]:
    """Train, evaluate on the fold's test split, return the result record (all ranks)."""
    trainer = Trainer(config, step_callback=step_callback)
    training = trainer.fit()
    metrics = trainer.evaluate()
    from aubench.bench import device_name

    return {
        "schema": RESULT_SCHEMA,
        "method": config.method,
        "dataset": trainer.data.dataset,
        "fold": config.fold,
        "protocol": protocol_name(config.label_ratio),
        "label_ratio": config.label_ratio,
        "realised_label_ratio": training["labels"]["realised_label_ratio"],
        "initialisation": training["initialisation"],
        "au_names": trainer.data.au_names,
        "metrics": metrics,
        "mean_f1": metrics["mean_f1"],
        "bench": bench or {},
        "training": training,
        "config": asdict(config),
        "preset": trainer.preset.__dict__,
        "precision": trainer.precision,
        "data": {"path": str(Path(config.data).resolve()), "fingerprint": trainer.data.fingerprint,
                 "num_test_frames": metrics["num_frames"]},
        "device": device_name(trainer.device),
        "world_size": trainer.env.world_size,
        "versions": versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
