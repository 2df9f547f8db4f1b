"""AU attention maps from 68-point landmarks (EAC-Net's AU centres, as RRL uses them).

Each AU has two centres on the 68-point scheme (datasets_tools.landmarks), each a landmark moved
vertically by a multiple of r, the distance between the inner eye corners |x39 - x42|
(negative = up). The centres are those of EAC-Net (Li et al., FG 2017) as JAA-Net lists them;
BP4D's 12 AUs and DISFA's 8 are covered, other AUs raise a clear error.

`au_attention_maps` turns landmarks into one map per AU: an ellipse around each of the AU's two
centres (semi-axes `AXES` in units of r, wider than tall: the AU's skin region; our choice, the
paper gives no size), the two ellipses united, Gaussian-smoothed with sigma 3 px at 224 px (the
paper's value, scaled with the image), then area-averaged down to the feature map and scaled to a
maximum of 1. The ellipses are drawn on a grid `RASTER` times finer than the feature map (not at
full image resolution: a batch of 48 x 12 maps at 224 px would take a quarter of a gigabyte). A
frame without landmarks (NaN) gets a uniform map, so its AU vectors fall back to the global
average.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

# AU -> ((landmark, landmark), vertical offset of both centres in units of r)
AU_CENTRES: dict[str, tuple[tuple[int, int], float]] = {
    "AU1": ((21, 22), -1 / 2), "AU2": ((18, 25), -1 / 3), "AU4": ((19, 24), 1 / 3),
    "AU6": ((41, 46), 1.0), "AU7": ((38, 43), 0.0), "AU9": ((32, 34), -1 / 2),
    "AU10": ((61, 63), 0.0), "AU12": ((48, 54), 0.0), "AU14": ((48, 54), 0.0),
    "AU15": ((48, 54), 0.0), "AU17": ((56, 58), 1 / 2), "AU23": ((51, 57), 0.0),
    "AU24": ((51, 57), 0.0), "AU25": ((51, 57), 0.0), "AU26": ((56, 58), 1 / 2),
}
AXES = (0.6, 0.4)           # semi-axes (horizontal, vertical) of a centre's ellipse, in units of r
SIGMA_AT_224 = 3.0          # Gaussian smoothing (px) at a 224 px face
RASTER = 4                  # the ellipses are drawn on a grid this many times finer than the map


def check_aus(au_names) -> None:
    """ValueError naming the AUs that have no EAC-Net centres."""
    missing = [au for au in au_names if au not in AU_CENTRES]
    if missing:
        raise ValueError(f"no AU attention centres for {', '.join(missing)} (EAC-Net defines them for "
                         f"{', '.join(AU_CENTRES)}); use a file whose AUs are among those")


def inner_eye_distance(landmarks: torch.Tensor) -> torch.Tensor:
    """r = |x39 - x42| (B,): the unit of the centres' offsets and of the ellipses' axes."""
    return (landmarks[:, 39, 0] - landmarks[:, 42, 0]).abs()


def au_centres(landmarks: torch.Tensor, au_names) -> torch.Tensor:
    """(B, 68, 2) landmarks -> (B, K, 2, 2) centres (x, y) of each AU."""
    check_aus(au_names)
    r = inner_eye_distance(landmarks)                                  # (B,)
    pairs = torch.tensor([AU_CENTRES[au][0] for au in au_names], device=landmarks.device)   # (K, 2)
    shift = torch.tensor([AU_CENTRES[au][1] for au in au_names], dtype=landmarks.dtype,
                         device=landmarks.device)                      # (K,)
    centres = landmarks[:, pairs]                                      # (B, K, 2, 2)
    offset = torch.zeros_like(centres)
    offset[..., 1] = (shift[None, :] * r[:, None])[..., None]
    return centres + offset


@functools.lru_cache(maxsize=32)   # a run asks for the same few shapes at every step
def smooth_and_pool_matrix(size: int, out: int, sigma: float, device: torch.device | None = None) -> torch.Tensor:
    """(out, size) on `device` (cached there, so no copy per call): a 1-D Gaussian blur of `sigma`
    cells (edges replicated) followed by the area average down to `out` cells
    (F.adaptive_avg_pool1d's bins). Both are linear, so a map's blur and pooling is
    `rows_matrix @ map @ cols_matrix.T`: two small matrix products instead of two convolutions
    over every single-channel map, which cost more than a tiny encoder."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    blur = torch.zeros(size, size, dtype=torch.float64)
    source = (torch.arange(size)[:, None] + offsets.long()[None]).clamp(0, size - 1)   # replicate
    blur.scatter_add_(1, source, kernel.expand(size, -1).contiguous())
    pool = F.adaptive_avg_pool1d(torch.eye(size, dtype=torch.float64)[None], out)[0].T   # (out, size)
    return (pool @ blur).float().to(device)


def au_attention_maps(landmarks: torch.Tensor, au_names, image_size: tuple[int, int],
                      map_size: tuple[int, int]) -> torch.Tensor:
    """(B, 68, 2) landmarks in pixels of (H, W) images -> (B, K, h, w) attention maps in [0, 1]
    on the feature map's grid (see the module docstring)."""
    height, width = image_size
    rows, cols = (min(RASTER * m, s) for m, s in zip(map_size, image_size))
    landmarks = landmarks.float()
    centres = au_centres(torch.nan_to_num(landmarks), au_names)        # (B, K, 2, 2), image pixels
    r = inner_eye_distance(landmarks).nan_to_num(0.0).clamp(min=1.0)
    # the raster's cell centres, in image pixels (pixel centres at whole numbers)
    ys = (torch.arange(rows, dtype=torch.float32, device=landmarks.device) + 0.5) * height / rows - 0.5
    xs = (torch.arange(cols, dtype=torch.float32, device=landmarks.device) + 0.5) * width / cols - 0.5
    dx = (xs.view(1, 1, 1, 1, -1) - centres[..., 0, None, None]) / (AXES[0] * r.view(-1, 1, 1, 1, 1))
    dy = (ys.view(1, 1, 1, -1, 1) - centres[..., 1, None, None]) / (AXES[1] * r.view(-1, 1, 1, 1, 1))
    inside = ((dx ** 2 + dy ** 2) <= 1.0).any(dim=2).float()            # (B, K, H, W): either centre
    sigma = SIGMA_AT_224 / 224 * max(rows, cols)                        # 3 px at 224, in raster cells
    to_rows = smooth_and_pool_matrix(rows, map_size[0], sigma, landmarks.device)
    to_cols = smooth_and_pool_matrix(cols, map_size[1], sigma, landmarks.device)
    maps = to_rows @ inside @ to_cols.T                                 # blurred, area-averaged
    peak = maps.amax(dim=(2, 3), keepdim=True)
    maps = torch.where(peak > 0, maps / peak.clamp(min=1e-12), torch.ones_like(maps))
    missing = ~torch.isfinite(landmarks).all(dim=2).all(dim=1)         # frames without landmarks
    return torch.where(missing.view(-1, 1, 1, 1), torch.ones_like(maps), maps)
