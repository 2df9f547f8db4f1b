"""RunConfig: everything that defines one training run, as the command line gives it.

aubench.engine.planning resolves it against the method and the data file (its preset, stages,
training occlusion, --pretrained weights); the resolved config is what checkpoints and results keep.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunConfig:
    """Everything that defines one training run (saved in checkpoints and results)."""

    method: str
    data: str
    variant: str | None = None         # a named variant of the method (AUMethod.variants): its model settings
    fold: int = 1
    preset: str = "tiny"               # `paper`: the method's preset for the data file's dataset (resolve_preset)
    label_ratio: float = 1.0
    train_occlusion: str | None = None  # occlusion of the training images: none, patches:<ratio>, block:<ratio>;
                                        # None = the preset's (Preset.train_occlusion)
    epochs: int | None = None          # None = the preset's
    batch_size: int | None = None      # global batch; None = the preset's
    image_size: int | None = None      # None = the preset's
    out: str = "runs/train"
    resume: bool = False
    overwrite: bool = False            # a fresh run may replace the run files already in `out`
    # --pretrained: a source (timm:<name>, hf-hub:<id> or a file) for the method's main part, or
    # part -> source (part "" a bare source); resolve_pretrained gives it as part -> source
    pretrained: str | dict[str, str] | None = None
    # set by resolve_pretrained: part -> {"name", "sha256"} of each source, the run's identity
    # (aubench.engine.identity.pretrained_identity) instead of the sources' paths
    pretrained_weights: dict[str, dict[str, str]] | None = None
    pretrain_data: str | None = None   # the frames of pre-training stages (Stage.pretraining); None = the fold's
    device: str | None = None          # None = cuda when available
    seed: int = 0
    precision: str = "auto"            # auto = bf16 (fp16 without bf16 support) on GPU, fp32 on CPU
    workers: int | None = None         # None = 0 on CPU, 4 on GPU
    checkpoint_every: int = 0          # also checkpoint every N optimiser steps (0 = epochs only)
    # --accumulate: micro-batches per optimiser step (gradient accumulation); the preset's global
    # batch = per-process batch x processes x accumulate (planning.check_stage_preset)
    accumulate: int = 1
    sync_bn: bool = False              # --sync-bn: BatchNorm as SyncBatchNorm under torchrun (GPUs)
    log_every: int = 10
    augment: bool = True
    channels_last: bool = False        # convolution weights (and so activations) in channels-last layout
    progress: bool = True
    # --tensorboard: also write the logged scalars as TensorBoard events here (rank 0; under
    # `aubench evaluate`, each run in <DIR>/<its folder under OUT/runs>); bookkeeping, not identity
    tensorboard: str | None = None
    deterministic: bool = True
    # landmarks of an occluded test image, for methods that read them (AUMethod.test_inputs):
    # "clean" = the data file's, of the clean frame (privileged: results say so); "detect" =
    # detected on the occluded image (the faces extra), the training faces' mean shape where no
    # face is found
    occluded_landmarks: str = "clean"
    # --validation: the share of the fold's training subjects held out as a validation split,
    # drawn with `seed` (aubench.engine.data_access.validation_subjects); 0 = none
    validation: float = 0.0
    select: str = "last"               # SELECTIONS: the tested checkpoint of each tested stage
    thresholds: str = "fixed"          # THRESHOLDS: 0.5, or per AU chosen on the validation split
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's model settings
