"""Occlusion masks for the occlusion-robustness protocol.

`("patches", ratio)`: random cells of a 16 px grid, together covering `ratio` of the image.
`("block", ratio)`: one rectangle of area `ratio` * H * W, random aspect ratio and position.
Masked pixels are set to zero after normalisation, i.e. to the ImageNet mean colour (on the
uint8 fast path, to that colour in uint8, `IMAGENET_MEAN_UINT8`, which normalises to about 0).
"""
from __future__ import annotations

import math

import torch

OCCLUSION_KINDS = ("patches", "block")
PATCH_SIZE = 16
# Block aspect ratios (height / width) are drawn log-uniformly from this range.
BLOCK_ASPECT = (1 / 3, 3.0)


def parse_occlusion(occlusion) -> tuple[str, float] | None:
    """Validate an occlusion spec: None or (kind, ratio) with kind in OCCLUSION_KINDS and
    ratio in [0, 1]."""
    if occlusion is None:
        return None
    try:
        kind, ratio = occlusion
        ratio = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"occlusion must be None or (kind, ratio), got {occlusion!r}") from None
    if kind not in OCCLUSION_KINDS:
        raise ValueError(f"unknown occlusion kind {kind!r}; expected one of "
                         f"{', '.join(OCCLUSION_KINDS)}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"occlusion ratio must be in [0, 1], got {ratio}")
    return kind, ratio


def patch_mask(height: int, width: int, ratio: float, patch: int = PATCH_SIZE,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool (H, W) mask of random grid cells (patch x patch px) covering about `ratio` of it.

    Cells at the right and bottom edges may be smaller when H or W is not a multiple of
    `patch`; cells are taken in random order until the covered area is closest to the target.
    """
    gh, gw = math.ceil(height / patch), math.ceil(width / patch)
    ys = torch.arange(gh) * patch
    xs = torch.arange(gw) * patch
    cell_h = (torch.clamp(height - ys, max=patch))
    cell_w = (torch.clamp(width - xs, max=patch))
    area = (cell_h[:, None] * cell_w[None, :]).reshape(-1)
    order = torch.randperm(gh * gw, generator=generator)
    covered = torch.cumsum(area[order], 0)
    target = ratio * height * width
    # number of cells whose total area is closest to the target (0 cells allowed)
    candidates = torch.cat([torch.zeros(1, dtype=covered.dtype), covered])
    count = int(torch.argmin((candidates - target).abs()))
    grid = torch.zeros(gh * gw, dtype=torch.bool)
    grid[order[:count]] = True
    grid = grid.view(gh, gw)
    mask = grid.repeat_interleave(patch, 0).repeat_interleave(patch, 1)
    return mask[:height, :width].contiguous()


def block_mask(height: int, width: int, ratio: float,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool (H, W) mask of one rectangle of area about `ratio` * H * W at a random place."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    area = ratio * height * width
    if area <= 0:
        return mask
    u = torch.rand(3, generator=generator).tolist()
    lo, hi = math.log(BLOCK_ASPECT[0]), math.log(BLOCK_ASPECT[1])
    aspect = math.exp(lo + (hi - lo) * u[0])
    h = math.sqrt(area * aspect)
    w = math.sqrt(area / aspect)
    # keep the area when one side would not fit
    if h > height:
        h, w = height, area / height
    if w > width:
        w, h = width, area / width
    h = min(height, max(1, round(h)))
    w = min(width, max(1, round(w)))
    top = int(u[1] * (height - h + 1))
    left = int(u[2] * (width - w + 1))
    mask[top:top + h, left:left + w] = True
    return mask


def occlusion_mask(kind: str, ratio: float, height: int, width: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool (H, W) occlusion mask of the given kind ("patches" | "block") and area ratio."""
    kind, ratio = parse_occlusion((kind, ratio))
    if kind == "patches":
        return patch_mask(height, width, ratio, generator=generator)
    return block_mask(height, width, ratio, generator=generator)
