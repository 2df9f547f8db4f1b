"""Image transforms: resize, ImageNet normalisation and clip-consistent augmentation.

Images travel as RGB uint8 (..., H, W, 3) numpy arrays until `to_normalized_tensor` turns them
into float32 (..., 3, H, W) tensors, or `to_uint8_tensor` into uint8 (..., 3, H, W) tensors for
the uint8 fast path (datasets with normalize=False), which `normalize_images` later normalises
on any device, e.g. the GPU after the host-to-device copy (4x fewer bytes to move and collate).
Both routes give the same values: `normalize_images(to_uint8_tensor(x))` equals
`to_normalized_tensor(x)` bit for bit in float32.
Augmentation works on float tensors in [0, 1] or on uint8 tensors with
torchvision.transforms.v2 functional ops; its parameters are drawn once per sample, so every
frame of a clip gets the same rotation, flip and colour change. The papers' crop protocol
(resize to 256, then a random 224 crop in training and the centre one at test) is
`crop_source_size`, `crop_offset` and `crop_images`, one offset per sample. Landmarks (68-point
scheme, datasets_tools.landmarks) follow the pixels through `resize_points`, `crop_points` and
`ClipAugment.apply_points`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from datasets_tools.landmarks import MIRROR, scale_points

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The ImageNet mean colour as uint8 pixels: normalises to about 0 (|x| < 0.01), the value the
# float path gives occluded pixels.
IMAGENET_MEAN_UINT8 = tuple(round(255 * m) for m in IMAGENET_MEAN)


def parse_image_size(image_size) -> tuple[int, int] | None:
    """None, an int (square) or (H, W) -> None or (H, W); raises ValueError otherwise."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        size = (int(image_size), int(image_size))
    else:
        size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be a positive int or (H, W), got {image_size!r}")
    return size


def resize_points(points: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """(..., 2) pixel coordinates of an image of from_size (H, W) resized to to_size (pixel
    centres at whole numbers: x -> (x + 0.5) * W' / W - 0.5, as OpenCV resizes)."""
    (h, w), (h2, w2) = from_size, to_size
    if (h, w) == (h2, w2):
        return points
    return scale_points(points, (w2 / w, h2 / h))


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize RGB uint8 (H, W, 3) or (n, H, W, 3) images to size (H, W) with OpenCV.

    INTER_AREA when shrinking (no aliasing), bilinear when enlarging.
    """
    h, w = size
    if images.shape[-3:-1] == (h, w):
        return images
    shrink = h * w < images.shape[-3] * images.shape[-2]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    if images.ndim == 3:
        return cv2.resize(images, (w, h), interpolation=interp)
    return np.stack([cv2.resize(im, (w, h), interpolation=interp) for im in images])


def crop_source_size(size: tuple[int, int], crop_fraction: float | None) -> tuple[int, int]:
    """The size (H, W) a face is resized to before a crop of `size` that is `crop_fraction` of
    its side (224 at 0.875: 256, the papers' protocol); `size` itself without a crop (None)."""
    if crop_fraction is None:
        return size
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction!r}")
    return round(size[0] / crop_fraction), round(size[1] / crop_fraction)


def crop_offset(from_size: tuple[int, int], to_size: tuple[int, int],
                generator: torch.Generator | None = None, random: bool = True) -> tuple[int, int]:
    """(top, left) of a `to_size` crop of an image of `from_size`: drawn uniformly over every
    whole-pixel position (from torch's default generator when `generator` is None) when
    `random`, else the centre crop's ((H - h) // 2, (W - w) // 2)."""
    (h, w), (h2, w2) = from_size, to_size
    if h2 > h or w2 > w:
        raise ValueError(f"a {h2} x {w2} crop does not fit in a {h} x {w} image")
    if not random:
        return (h - h2) // 2, (w - w2) // 2
    top, left = (int(torch.randint(0, extent + 1, (1,), generator=generator)) for extent in (h - h2, w - w2))
    return top, left


def crop_images(images: np.ndarray, offset: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """The `size` (H, W) crop at `offset` (top, left) of RGB (H, W, 3) or (n, H, W, 3) images."""
    (top, left), (h, w) = offset, size
    return images[..., top:top + h, left:left + w, :]


def crop_points(points: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    """(..., 2) pixel coordinates (x, y) moved into a crop at `offset` (top, left); NaN stays NaN."""
    top, left = offset
    return points - np.asarray([left, top], dtype=points.dtype)


# Normalisation folded into one multiply-add on uint8 pixels: (p / 255 - mean) / std.
_SCALE = (1.0 / (255.0 * np.asarray(IMAGENET_STD, dtype=np.float32))).reshape(3, 1, 1)
_SHIFT = (-np.asarray(IMAGENET_MEAN, dtype=np.float32) / np.asarray(IMAGENET_STD, dtype=np.float32)
          ).reshape(3, 1, 1)


def _channels_first(images: np.ndarray) -> np.ndarray:
    """RGB uint8 (..., H, W, 3) -> contiguous (..., 3, H, W).

    cv2.split writes each frame's planes straight into the output, about 4x faster than
    numpy's strided copy (np.moveaxis), which costs as much as reading a raw frame."""
    h, w = images.shape[-3:-1]
    out = np.empty((*images.shape[:-3], 3, h, w), dtype=np.uint8)
    frames = np.ascontiguousarray(images).reshape(-1, h, w, 3)
    planes = out.reshape(-1, 3, h, w)
    for frame, plane in zip(frames, planes):
        cv2.split(frame, [plane[0], plane[1], plane[2]])
    return out


# The uint8 -> float conversions run in NumPy: single-threaded, so they neither fight over
# torch's intra-op thread pool on a busy machine nor depend on its size.
def to_float_tensor(images: np.ndarray) -> torch.Tensor:
    """RGB uint8 (..., H, W, 3) numpy -> float32 (..., 3, H, W) tensor in [0, 1]."""
    return torch.from_numpy(np.multiply(_channels_first(images), np.float32(1 / 255.0),
                                        dtype=np.float32))


def to_uint8_tensor(images: np.ndarray) -> torch.Tensor:
    """RGB uint8 (..., H, W, 3) numpy -> uint8 (..., 3, H, W) tensor (no normalisation)."""
    return torch.from_numpy(_channels_first(images))


def normalize_images(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (..., 3, H, W) images (any device, any leading dims) -> ImageNet-normalised `dtype`.

    The second half of the uint8 fast path: datasets built with normalize=False return uint8
    images; call this on the batch (best after moving it to the GPU) to get exactly what the
    default float path returns (identical float32 values for the same uint8 pixels).
    Half-precision outputs are computed in float32 and rounded once.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise TypeError("normalize_images: images must be a uint8 torch.Tensor, got "
                        f"{getattr(images, 'dtype', type(images).__name__)}")
    if images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError("normalize_images: images must be shaped (..., 3, H, W), got "
                         f"{tuple(images.shape)}")
    dtype = torch.empty((), dtype=dtype).dtype  # validates dtype
    if not dtype.is_floating_point:
        raise ValueError(f"normalize_images: dtype must be a floating type, got {dtype}")
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    if compute == torch.float64:
        scale = 1.0 / (255.0 * np.asarray(IMAGENET_STD, dtype=np.float64))
        shift = -np.asarray(IMAGENET_MEAN, dtype=np.float64) / np.asarray(IMAGENET_STD)
    else:
        scale, shift = _SCALE.reshape(3), _SHIFT.reshape(3)
    scale = torch.as_tensor(scale, dtype=compute).to(images.device).view(3, 1, 1)
    shift = torch.as_tensor(shift, dtype=compute).to(images.device).view(3, 1, 1)
    # the same two float32 operations, in the same order, as to_normalized_tensor
    out = images.to(compute).mul_(scale).add_(shift)
    return out.to(dtype)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Float (..., 3, H, W) in [0, 1] -> ImageNet-normalised, in place."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype).view(3, 1, 1)
    return images.sub_(mean).div_(std)


def to_normalized_tensor(images: np.ndarray) -> torch.Tensor:
    """RGB uint8 (..., H, W, 3) -> ImageNet-normalised float32 (..., 3, H, W)."""
    out = np.multiply(_channels_first(images), _SCALE, dtype=np.float32)
    out += _SHIFT
    return torch.from_numpy(out)


@dataclass(frozen=True)
class ClipAugment:
    """Random rotation, horizontal flip and colour jitter, drawn once per sample.

    Args:
        degrees: rotation angle drawn uniformly from [-degrees, degrees].
        flip_p: probability of a horizontal flip.
        brightness, contrast, saturation: jitter strength s; each factor is drawn uniformly
            from [1 - s, 1 + s] (the AU literature uses 0.2-0.4).
    """

    degrees: float = 10.0
    flip_p: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3

    def draw(self, generator: torch.Generator | None = None) -> dict:
        """Draw one set of parameters (from torch's default generator when None)."""
        u = torch.rand(5, generator=generator).tolist()
        return {
            "angle": (2 * u[0] - 1) * self.degrees,
            "flip": u[1] < self.flip_p,
            "brightness": 1 + (2 * u[2] - 1) * self.brightness,
            "contrast": 1 + (2 * u[3] - 1) * self.contrast,
            "saturation": 1 + (2 * u[4] - 1) * self.saturation,
        }

    @staticmethod
    def apply_points(points: torch.Tensor, params: dict, size: tuple[int, int]) -> torch.Tensor:
        """Move (..., 68, 2) landmarks of images of `size` (H, W) as `apply` moves the pixels:
        a flip maps x to W - 1 - x and swaps each left point with its right twin
        (datasets_tools.landmarks.MIRROR: a left eye corner stays a left eye corner); a rotation
        turns them by the angle (counter-clockwise as displayed) about the pixel grid's centre
        ((W - 1) / 2, (H - 1) / 2), where torchvision turns the image. (torchvision's own
        keypoint rotation pivots half a pixel away from its image rotation, hence our own.)
        Colour changes leave them; NaN stays NaN."""
        height, width = size
        out = points.to(torch.float32).clone()
        if params["flip"]:
            out[..., 0] = width - 1 - out[..., 0]
            out = out[..., list(MIRROR), :]
        if params["angle"] != 0:
            theta = math.radians(params["angle"])
            cos, sin = math.cos(theta), math.sin(theta)
            dx, dy = out[..., 0] - (width - 1) / 2, out[..., 1] - (height - 1) / 2
            out = torch.stack([(width - 1) / 2 + cos * dx + sin * dy,
                               (height - 1) / 2 - sin * dx + cos * dy], dim=-1)
        return out

    @staticmethod
    def apply(images: torch.Tensor, params: dict) -> torch.Tensor:
        """Apply drawn parameters to float (..., 3, H, W) images in [0, 1], or to uint8 ones
        (0..255, results rounded back to uint8), every frame alike."""
        out = images
        if params["flip"]:
            out = TF.horizontal_flip(out)
        if params["angle"] != 0:
            out = TF.rotate(out, params["angle"], interpolation=InterpolationMode.BILINEAR,
                            fill=0.0)
        out = TF.adjust_brightness(out, params["brightness"])
        out = TF.adjust_contrast(out, params["contrast"])
        out = TF.adjust_saturation(out, params["saturation"])
        return out

    def __call__(self, images: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment float (..., 3, H, W) images in [0, 1] (or uint8) with one draw for all."""
        return self.apply(images, self.draw(generator))


@dataclass(frozen=True)
class ViewAugment:
    """One view's augmentation for self-supervised pre-training, drawn once per sample: BYOL's
    recipe without its random crops (they cut AUs away): horizontal flip, colour jitter
    (brightness, contrast, saturation, hue) with probability `jitter_p`, greyscale with
    probability `grey_p`, Gaussian blur with probability `blur_p` (sigma drawn from `blur_sigma`
    px at 224 px, scaled with the image; kernel a tenth of the side). Two views take two of
    these with different values (BYOL: blur 1.0 and 0.1). Landmarks follow the flip."""

    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grey_p: float = 0.2
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def draw(self, generator: torch.Generator | None = None) -> dict:
        u = torch.rand(9, generator=generator).tolist()
        jitter = u[1] < self.jitter_p
        return {
            "flip": u[0] < self.flip_p, "angle": 0.0,
            "brightness": 1 + (2 * u[2] - 1) * self.brightness if jitter else 1.0,
            "contrast": 1 + (2 * u[3] - 1) * self.contrast if jitter else 1.0,
            "saturation": 1 + (2 * u[4] - 1) * self.saturation if jitter else 1.0,
            "hue": (2 * u[5] - 1) * self.hue if jitter else 0.0,
            "grey": u[6] < self.grey_p,
            "blur": self.blur_sigma[0] + u[8] * (self.blur_sigma[1] - self.blur_sigma[0]) if u[7] < self.blur_p else 0.0,
        }

    @staticmethod
    def apply(images: torch.Tensor, params: dict) -> torch.Tensor:
        """Apply drawn parameters to float (..., 3, H, W) images in [0, 1] or uint8 ones."""
        out = ClipAugment.apply(images, params)   # flip and brightness / contrast / saturation
        if params["hue"]:
            out = TF.adjust_hue(out, params["hue"])
        if params["grey"]:
            out = TF.rgb_to_grayscale(out, num_output_channels=3)
        if params["blur"]:
            side = max(out.shape[-2:])
            sigma = params["blur"] * side / 224
            kernel = max(3, int(side * 0.1) // 2 * 2 + 1)
            out = TF.gaussian_blur(out, [kernel, kernel], [sigma, sigma])
        return out

    apply_points = staticmethod(ClipAugment.apply_points)  # only the flip moves points

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(images, self.draw(generator))
