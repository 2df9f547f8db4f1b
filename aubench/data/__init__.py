"""HDF5-backed AU datasets: file access, frame and clip datasets, sparse labels, occlusion.

See INTERFACES.md for the HDF5 schema and the item layouts.
"""
from .datasets import ClipDataset, FrameDataset
from .h5file import SCHEMA_VERSION, AUFile, decode_jpeg
from .occlusion import block_mask, occlusion_mask, patch_mask
from .samplers import KeyPositionBatchSampler, label_stride, sparse_label_mask
from .transforms import IMAGENET_MEAN, IMAGENET_STD, ClipAugment, to_normalized_tensor

__all__ = [
    "AUFile", "SCHEMA_VERSION", "decode_jpeg",
    "FrameDataset", "ClipDataset",
    "KeyPositionBatchSampler", "sparse_label_mask", "label_stride",
    "ClipAugment", "to_normalized_tensor", "IMAGENET_MEAN", "IMAGENET_STD",
    "occlusion_mask", "patch_mask", "block_mask",
]
