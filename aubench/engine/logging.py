"""A JSON-lines run log: one object per line, with wall-clock time; written by rank 0 only."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def minutes(seconds: float) -> str:
    """"2 min 05 s", "45 s"."""
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def epoch_summary(where: str, epoch: int, epochs: int, losses: dict[str, float], lr: float, seconds: float,
                  frames: int, stage_seconds: float) -> str:
    """The line a finished epoch leaves on screen: where, epoch / epochs, each loss part (the
    epoch's mean), lr, seconds, frames/s, and the stage's ETA at the mean epoch time so far
    (stage_seconds over the `epoch` + 1 epochs done, from this run or a resumed one)."""
    parts = " ".join(f"{name} {value:.4g}" for name, value in losses.items())
    left = (epochs - epoch - 1) * stage_seconds / (epoch + 1)
    return (f"[train] {where} epoch {epoch + 1}/{epochs}: {parts}, lr {lr:.3g}, {minutes(seconds)}, "
            f"{frames / seconds if seconds > 0 else float('nan'):.1f} frames/s"
            + (f", stage done in about {minutes(left)}" if epoch + 1 < epochs else ", stage done"))


def plain(value: Any) -> Any:
    """JSON-safe copy: tensors / numpy scalars to numbers, paths to strings."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class JsonlLogger:
    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps(plain({"time": time.time(), **record}), allow_nan=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
