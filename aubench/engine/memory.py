"""Running out of memory: refused before a run where it can be foreseen, one line where it happens.

`check_batch_fits` compares the bytes of one batch's input images (float32, three channels: a
lower bound of what a step needs) with the device's memory, before anything trains.
`out_of_memory_stops` turns an allocation failure inside its block (torch's OutOfMemoryError on
a GPU, the CPU allocator's RuntimeError, Python's MemoryError) into TrainingStopped: one line
naming what ran and its batch size, exit code 3. (Where the operating system kills the process
instead, nothing can be said: the check beforehand is what helps.)
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch

from aubench.engine.checkpoint import kept_checkpoint_text
from aubench.errors import TrainingStopped, UserError

GB = 1024 ** 3
CPU_OUT_OF_MEMORY = "can't allocate memory"  # the CPU allocator's RuntimeError


def device_memory_bytes(device: torch.device) -> int | None:
    """The memory of `device` in bytes (a GPU's total, the machine's RAM for the CPU); None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_batch_fits(option: str, batch_size: int, image_size: int, device: torch.device) -> None:
    """UserError naming `option` when one batch of input images alone is larger than the device's memory."""
    needed = batch_size * 3 * image_size * image_size * 4
    available = device_memory_bytes(torch.device(device))
    if available is not None and needed > available:
        raise UserError(f"{option} {batch_size}: one batch of {batch_size} images at {image_size} px is "
                        f"{needed / GB:.1f} GB of input alone, more than the {available / GB:.1f} GB of memory of "
                        f"the device ({torch.device(device).type}); use a smaller {option}")


def is_out_of_memory(err: BaseException) -> bool:
    return (isinstance(err, (MemoryError, torch.OutOfMemoryError))
            or isinstance(err, RuntimeError) and CPU_OUT_OF_MEMORY in str(err))


@contextmanager
def out_of_memory_stops(what: str, option: str, batch_size: int, checkpoint: str | Path | None = None):
    """An out-of-memory error in the block -> TrainingStopped: "out of memory while WHAT at
    OPTION BATCH_SIZE (...); try a smaller OPTION" (+ whether the run's `checkpoint` is kept,
    when the block trains a run: checkpoint.kept_checkpoint_text, looked at only then)."""
    try:
        yield
    except BaseException as err:
        if not is_out_of_memory(err):
            raise
        said = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        kept = kept_checkpoint_text(checkpoint) if checkpoint is not None else ""
        raise TrainingStopped(f"out of memory while {what} at {option} {batch_size} ({said}); try a smaller "
                              f"{option}{kept}") from None
