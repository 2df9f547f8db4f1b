"""Mask makers for masked-token models: which patches an MAE encoder keeps.

Both return the official MAE convention: ids_keep (B, L_keep) int64 (the kept positions, in
random order: rows are NOT sorted), ids_restore (B, L) int64 (a permutation; position l of the
unshuffled sequence is token ids_restore[b, l] of [kept tokens, masked tokens]) and mask
(B, L) float32 (0 = keep, 1 = masked). Every sample keeps L_keep = int(L * (1 - mask_ratio))
patches. Randomness comes only from the given torch.Generator, so the same seed gives the same
masks (on the generator's device). Feed the outputs to `gather_tokens` / `restore_tokens`.
"""
import math

import torch


def _check_ratio(mask_ratio) -> float:
    if not isinstance(mask_ratio, (int, float)) or not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be a number in [0, 1], got {mask_ratio!r}")
    return float(mask_ratio)


def _check_count(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _draw_device(generator, device):
    return generator.device if generator is not None else device


def _masks_from_order(score: torch.Tensor, len_keep: int, device):
    """The lowest len_keep scores of each row are kept; MAE's argsort / unshuffle steps."""
    ids_shuffle = torch.argsort(score, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = torch.ones(score.shape, device=score.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    if device is not None:
        ids_keep, ids_restore, mask = ids_keep.to(device), ids_restore.to(device), mask.to(device)
    return ids_keep, ids_restore, mask


def random_masking(
    batch: int,
    length: int,
    mask_ratio: float,
    generator: torch.Generator | None = None,
    device=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-sample random masking: uniform noise, argsort, keep the lowest
    int(length * (1 - mask_ratio)). Returns (ids_keep, ids_restore, mask)."""
    _check_count(batch, "batch", 0)
    _check_count(length, "length", 1)
    len_keep = int(length * (1 - _check_ratio(mask_ratio)))
    noise = torch.rand(batch, length, generator=generator, device=_draw_device(generator, device))
    return _masks_from_order(noise, len_keep, device)


def block_masking(
    batch: int,
    grid_h: int,
    grid_w: int,
    mask_ratio: float,
    generator: torch.Generator | None = None,
    device=None,
    min_aspect: float = 0.3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Block (occlusion-like) masking on a grid_h x grid_w patch grid, row-major positions.

    Per sample one rectangle of at most the masked count of patches is masked, with its aspect
    ratio log-uniform in [min_aspect, 1 / min_aspect] and its position uniform on the grid;
    random extra patches then top the mask up so every sample masks exactly
    length - int(length * (1 - mask_ratio)) patches (the same L_keep as `random_masking`).
    Returns (ids_keep, ids_restore, mask) in MAE's convention.
    """
    _check_count(batch, "batch", 0)
    _check_count(grid_h, "grid_h", 1)
    _check_count(grid_w, "grid_w", 1)
    if not 0.0 < min_aspect <= 1.0:
        raise ValueError(f"min_aspect must be in (0, 1], got {min_aspect!r}")
    length = grid_h * grid_w
    len_keep = int(length * (1 - _check_ratio(mask_ratio)))
    num_mask = length - len_keep
    where = _draw_device(generator, device)

    def uniform(*shape):
        return torch.rand(*shape, generator=generator, device=where)

    # Rectangle of about num_mask patches: height from the aspect, width to fit the count.
    log_aspect = math.log(min_aspect) * (1 - 2 * uniform(batch))
    aspect = torch.exp(log_aspect)
    height = torch.sqrt(num_mask * aspect).round().clamp(1, grid_h).long()
    width = torch.sqrt(num_mask / aspect).round().long()
    width = torch.minimum(width, torch.minimum(num_mask // height, torch.full_like(height, grid_w)))
    top = (uniform(batch) * (grid_h - height + 1)).long()
    left = (uniform(batch) * (grid_w - width + 1)).long()
    rows = torch.arange(grid_h, device=where).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, device=where).repeat(grid_h)
    in_block = (
        (rows >= top[:, None]) & (rows < (top + height)[:, None])
        & (cols >= left[:, None]) & (cols < (left + width)[:, None])
    )
    # Block patches sort last (masked); the rest by noise, so the highest-noise ones top up.
    score = uniform(batch, length) + 2.0 * in_block
    return _masks_from_order(score, len_keep, device)
