"""A JSON-lines run log: one object per line, with wall-clock time; written by rank 0 only.
Also the per-epoch summary line, and the optional TensorBoard writer of the same scalars."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from aubench.errors import UserError
from aubench.files import why_unwritable


def minutes(seconds: float) -> str:
    """"2 min 05 s", "45 s"."""
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def epoch_summary(where: str, epoch: int, epochs: int, losses: dict[str, float], lr: float, seconds: float,
                  frames: int, stage_seconds: float, run_left: float | None = None) -> str:
    """The line a finished epoch leaves on screen: where, epoch / epochs, each loss part (the
    epoch's mean), lr, seconds, frames/s, and the stage's ETA at the mean epoch time so far
    (stage_seconds over the `epoch` + 1 epochs done, from this run or a resumed one); with
    `run_left` (a run of several stages: progress.run_seconds_left), the run's ETA too."""
    parts = " ".join(f"{name} {value:.4g}" for name, value in losses.items())
    left = (epochs - epoch - 1) * stage_seconds / (epoch + 1)
    line = (f"[train] {where} epoch {epoch + 1}/{epochs}: {parts}, lr {lr:.3g}, {minutes(seconds)}, "
            f"{frames / seconds if seconds > 0 else float('nan'):.1f} frames/s"
            + (f", stage done in about {minutes(left)}" if epoch + 1 < epochs else ", stage done"))
    return line + (f", run in about {minutes(run_left)}" if run_left is not None else "")


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


class TensorboardScalars:
    """`--tensorboard DIR`: the run's scalars as TensorBoard event files in DIR, one tag per
    stage and scalar ("<stage>/<name>", e.g. "stage1/loss", "stage1/lr"), against the stage's
    step; a no-op where not `enabled` (every rank but 0). tensorboard is an optional dependency
    (the aubench[tensorboard] extra): without it, or where DIR cannot be written, a one-line
    UserError."""

    def __init__(self, log_dir: str | Path, enabled: bool = True):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(f"--tensorboard {log_dir}: the tensorboard package is not installed "
                            f"(pip install tensorboard)") from None
        try:
            self.writer = SummaryWriter(log_dir=str(log_dir))
        except OSError as err:
            raise UserError(f"--tensorboard {log_dir}: cannot write ({why_unwritable(log_dir, err)})") from None

    def add(self, step: int, scalars: dict[str, float], stage: str) -> None:
        """Write each number of `scalars` at `step` under "<stage>/<name>"."""
        if self.writer is None:
            return
        for name, value in scalars.items():
            self.writer.add_scalar(f"{stage}/{name}", float(value), global_step=step)

    def close(self) -> None:
        """Flush the event file to disk and close it (safe to call twice)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
