"""Input checks shared by the token-gather and temporal-shuffle ops.

Every check raises ValueError / TypeError naming the argument before any kernel runs. The
index checks are vectorised and synchronise with the device once (one `bool()`); only when they
fail is the slower diagnosis run to name the offending row and value.
"""
import warnings

import torch

from aubench.ops._extension import have_cuda_kernels, have_extension

FEATURE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int64, torch.int32)

_warned_no_cuda_kernels = False


def use_kernels(tensor: torch.Tensor) -> bool:
    """True when torch.ops.aubench has a kernel for this tensor's device (else: the reference)."""
    global _warned_no_cuda_kernels
    if not have_extension():
        return False
    if tensor.device.type == "cpu":
        return True
    if tensor.device.type == "cuda" and have_cuda_kernels():
        return True
    if not _warned_no_cuda_kernels:
        _warned_no_cuda_kernels = True
        warnings.warn(
            f"aubench._C has no kernels for {tensor.device.type} tensors (it was built without "
            "CUDA); using the pure-PyTorch reference ops there.",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


def check_features(tensor, name: str, ndim: int) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(tensor.shape)}")
    if tensor.dtype not in FEATURE_DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16, float32 or float64, got {tensor.dtype}"
        )


def check_index(ids, name: str, shape: tuple, device: torch.device) -> None:
    """ids is an int64/int32 tensor of `shape` (None = any size) on `device`."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(ids).__name__}")
    if ids.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name} must be int64 (or int32), got {ids.dtype}")
    if ids.dim() != len(shape) or any(
        want is not None and got != want for got, want in zip(ids.shape, shape)
    ):
        wanted = ", ".join("*" if s is None else str(s) for s in shape)
        raise ValueError(f"{name} must have shape ({wanted}), got {tuple(ids.shape)}")
    if ids.device != device:
        raise ValueError(f"{name} is on {ids.device} but the features are on {device}")


def check_distinct_in_range(ids: torch.Tensor, name: str, limit: int) -> None:
    """Every row of ids (B, K) holds distinct values in [0, limit).

    With K == limit this says every row is a permutation of 0..limit-1.
    """
    if ids.numel() == 0:
        return
    ordered = ids.sort(dim=1).values
    ok = (ordered[:, 0] >= 0).all() & (ordered[:, -1] < limit).all()
    if ids.shape[1] > 1:
        ok &= (ordered[:, 1:] != ordered[:, :-1]).all()
    if bool(ok):
        return
    # Slow path, only on failure: name the first bad row and value.
    outside = (ids < 0) | (ids >= limit)
    if outside.any():
        row, col = (int(i) for i in outside.nonzero()[0])
        raise ValueError(
            f"{name}[{row}, {col}] = {int(ids[row, col])} is outside [0, {limit})"
        )
    repeated = (ordered[:, 1:] == ordered[:, :-1]).nonzero()[0]
    row, col = int(repeated[0]), int(repeated[1])
    what = "a permutation of 0..{}".format(limit - 1) if ids.shape[1] == limit else "distinct"
    raise ValueError(
        f"{name} row {row} repeats the value {int(ordered[row, col])}; each row must be {what}"
    )
