"""HDF5-backed AU datasets: file access, frame and clip datasets, sparse labels, occlusion.

See docs/hdf5_schema.md for the HDF5 schema and the item layouts. Datasets built with
normalize=False return uint8 images (the fast path); `normalize_images` turns a batch of them,
on any device, into exactly what the default float path returns.
"""
from .datasets import ClipDataset, FrameDataset
from .h5file import SCHEMA_VERSION, AUFile, decode_jpeg
from .occlusion import (block_mask, condition_name, frame_occlusion_mask, occlusion_mask, parse_condition,
                        patch_mask)
from .samplers import (KeyPositionBatchSampler, sparse_label_mask, sparse_label_report,
                       visible_label_statistics)
from .transforms import (IMAGENET_MEAN, IMAGENET_MEAN_UINT8, IMAGENET_STD, ClipAugment, ViewAugment,
                         normalize_images, to_normalized_tensor, to_uint8_tensor)

__all__ = [
    "AUFile", "SCHEMA_VERSION", "decode_jpeg",
    "FrameDataset", "ClipDataset",
    "KeyPositionBatchSampler", "sparse_label_mask", "sparse_label_report", "visible_label_statistics",
    "ClipAugment", "ViewAugment", "to_normalized_tensor", "to_uint8_tensor", "normalize_images",
    "IMAGENET_MEAN", "IMAGENET_STD", "IMAGENET_MEAN_UINT8",
    "occlusion_mask", "patch_mask", "block_mask", "frame_occlusion_mask", "parse_condition",
    "condition_name",
]
