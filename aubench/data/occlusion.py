"""Occlusion masks for the occlusion-robustness protocol (Jiang et al., MAE-FAU, Section 4.1).

Masks are made of cells of a GRID_CELLS x GRID_CELLS grid over the image: the paper's 16 x 16
px patches at 224 px are 1/14 of the face side, so a cell is 1/14 of the side at every image
size, and a 64 px preset sees the same pattern (in cells) as a 224 px one. When a side is not a
multiple of 14, cell k spans pixels [round(k * side / 14), round((k + 1) * side / 14)) (rounding
half up), so cells differ by at most one pixel and tile the side exactly.
- `("patches", ratio)`: round(ratio * 196) random cells (the paper's ~50% random small patches).
- `("block", ratio)`: one rectangle of whole cells whose area is within 1% of the image of
  `ratio` (the closest area when none is), aspect ratio (height / width) in [1/3, 3], chosen at
  random among those shapes, at a random place (the paper's 30% large block).
Masked pixels are set to zero after normalisation, i.e. to the ImageNet mean colour (on the
uint8 fast path, to that colour in uint8, `IMAGENET_MEAN_UINT8`, which normalises to about 0).

Test masks are fixed per frame (`frame_occlusion_mask`): a function of the frame's row in the
file and the condition only, so every method is scored on the same occluded images. One frame's
masks of one kind are nested across ratios (its patches:0.3 cells are among its patches:0.5
cells; its blocks share shape and place as far as the area allows), which keeps an F1-vs-ratio
sweep free of mask-to-mask noise.

Conditions as the command line and result files spell them: `parse_condition("patches:0.5")`
-> ("patches", 0.5); `condition_name(("patches", 0.5))` -> "patches0.5"; "none" both ways.
"""
from __future__ import annotations

import math

import numpy as np
import torch

OCCLUSION_KINDS = ("patches", "block")
GRID_CELLS = 14  # cells per image side: 224 px / 16 px patches
# Block aspect ratios (height / width) allowed, and how far (in fractions of the image) a
# block's area may be from the asked one.
BLOCK_ASPECT = (1 / 3, 3.0)
BLOCK_AREA_TOLERANCE = 0.01
# Mixed into the seed of the fixed test masks, so they share no stream with any training seed.
_TEST_MASK_TAG = 0x0CC1


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


def parse_condition(text: str) -> tuple[str, float] | None:
    """An occlusion condition as the command line writes it: "none" -> None,
    "patches:0.5" -> ("patches", 0.5), "block:0.3" -> ("block", 0.3) (ratio in (0, 1])."""
    accepted = ("expected 'none', 'patches:<ratio>' or 'block:<ratio>' with a ratio in (0, 1], "
                "e.g. 'patches:0.5'")
    value = text.strip() if isinstance(text, str) else ""
    if value == "none":
        return None
    kind, sep, ratio_text = value.partition(":")
    try:
        ratio = float(ratio_text)
    except ValueError:
        ratio = math.nan
    if not sep or kind not in OCCLUSION_KINDS or not 0.0 < ratio <= 1.0:
        raise ValueError(f"occlusion condition {text!r}: {accepted}")
    return kind, ratio


def condition_name(occlusion) -> str:
    """The name results and the leaderboard use: None -> "none", ("patches", 0.5) ->
    "patches0.5", ("block", 0.3) -> "block0.3"."""
    spec = parse_occlusion(occlusion)
    return "none" if spec is None else f"{spec[0]}{spec[1]:g}"


def cell_edges(side: int, cells: int = GRID_CELLS) -> torch.Tensor:
    """Pixel edges (cells + 1,) of `cells` cells over `side` pixels: round(k * side / cells),
    rounding half up (cells of a side shorter than `cells` px may be empty)."""
    k = torch.arange(cells + 1)
    return (2 * k * side + cells) // (2 * cells)


def _cells_to_pixels(grid: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bool (H, W) mask from a bool (cells, cells) grid of cells."""
    rows = torch.diff(cell_edges(height, grid.shape[0]))
    cols = torch.diff(cell_edges(width, grid.shape[1]))
    return grid.repeat_interleave(rows, 0).repeat_interleave(cols, 1).contiguous()


def patch_cells(ratio: float, generator: torch.Generator | None = None,
                cells: int = GRID_CELLS) -> torch.Tensor:
    """Bool (cells, cells) grid with round(ratio * cells^2) random cells set."""
    count = math.floor(ratio * cells * cells + 0.5)
    order = torch.randperm(cells * cells, generator=generator)
    grid = torch.zeros(cells * cells, dtype=torch.bool)
    grid[order[:count]] = True
    return grid.view(cells, cells)


def block_cells(ratio: float, generator: torch.Generator | None = None,
                cells: int = GRID_CELLS) -> torch.Tensor:
    """Bool (cells, cells) grid with one random rectangle of cells of area about `ratio`."""
    grid = torch.zeros(cells, cells, dtype=torch.bool)
    # three draws whatever the ratio, so one generator state gives nested blocks across ratios
    u = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
    target = ratio * cells * cells
    if target < 0.5:
        return grid
    shapes = [(h, w) for h in range(1, cells + 1) for w in range(1, cells + 1)
              if BLOCK_ASPECT[0] <= h / w <= BLOCK_ASPECT[1]]
    best = min(abs(h * w - target) for h, w in shapes)
    tolerance = max(best, BLOCK_AREA_TOLERANCE * cells * cells)
    # ordered by aspect, so one draw gives a similar shape at another ratio
    fitting = sorted((s for s in shapes if abs(s[0] * s[1] - target) <= tolerance),
                     key=lambda s: (s[0] / s[1], s[0]))
    h, w = fitting[min(int(u[0] * len(fitting)), len(fitting) - 1)]
    top = int(u[1] * (cells - h + 1))
    left = int(u[2] * (cells - w + 1))
    grid[top:top + h, left:left + w] = True
    return grid


def patch_mask(height: int, width: int, ratio: float,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool (H, W) mask of round(ratio * 196) random cells of the 14 x 14 grid."""
    return _cells_to_pixels(patch_cells(ratio, generator), height, width)


def block_mask(height: int, width: int, ratio: float,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool (H, W) mask of one rectangle of grid cells of area about `ratio` * H * W."""
    return _cells_to_pixels(block_cells(ratio, generator), height, width)


def occlusion_mask(kind: str, ratio: float, height: int, width: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool (H, W) occlusion mask of the given kind ("patches" | "block") and area ratio."""
    kind, ratio = parse_occlusion((kind, ratio))
    if kind == "patches":
        return patch_mask(height, width, ratio, generator=generator)
    return block_mask(height, width, ratio, generator=generator)


def frame_occlusion_mask(kind: str, ratio: float, row: int, height: int, width: int) -> torch.Tensor:
    """The fixed test mask of frame `row` (its row in the HDF5 file) under (kind, ratio): the
    same for every run, seed, method, batch, worker and clip the frame is read in."""
    kind, ratio = parse_occlusion((kind, ratio))
    entropy = [_TEST_MASK_TAG, OCCLUSION_KINDS.index(kind), int(row)]
    state = np.random.SeedSequence(entropy).generate_state(2)
    generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    return occlusion_mask(kind, ratio, height, width, generator=generator)
