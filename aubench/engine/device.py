"""Device helpers shared by the training loop and the evaluator: the precision a run computes
in, its autocast context, batches moved (and normalised) onto the device, and global seeding."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from aubench.data import normalize_images
from aubench.errors import UserError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global random generators (torch: every device's)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_precision(name: str, device: torch.device) -> str:
    """The precision a run computes in (--precision): "auto" is bf16 on a GPU that supports it,
    else fp16 there, and fp32 on a CPU; UserError for a name that is not one of PRECISIONS."""
    if name not in PRECISIONS:
        raise UserError(f"--precision {name!r} is not one of {', '.join(PRECISIONS)}")
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return name


def autocast_context(device: torch.device, precision: str):
    """Autocast to fp16 / bf16 on `device` for those precisions; nothing for fp32."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch on `device`, with uint8 images (the engine's datasets) ImageNet-normalised there."""
    non_blocking = device.type == "cuda"
    batch = {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
             for k, v in batch.items()}
    for key in ("image", "image2", "key_image"):
        if key in batch and batch[key].dtype == torch.uint8:
            batch[key] = normalize_images(batch[key])
    return batch
