"""The training batches of a stage: its dataset (the frames or clips whose labels the protocol
keeps, occluded and augmented as the run says), and its loader over a DistributedSampler.

Batches come from a DistributedSampler whose order depends only on (stage seed, epoch), so a
resumed run skips the batches already done (SkipBatches: at the index level, no images are
decoded) and sees exactly the batches the killed run would have seen next. A stage builds its
DataLoader once and, each epoch, sets the sampler's epoch and the batches to skip (those a
resumed epoch has done; none after it); workers persist across the stage's epochs
(persistent_workers), and their seeds come from the loader's own generator, seeded by (stage
seed, the epoch the stage starts or resumes in), never from the global RNG, so building a loader
does not shift the random stream. With `num_workers=0` a resumed run is bit-identical to an
uninterrupted one; with workers the data order is the same but augmentation draws come from
re-seeded workers. Under gradient accumulation (--accumulate K) a batch is one of the K
micro-batches of an optimiser step, and an epoch that drops its last incomplete batch drops its
last incomplete group of K as well, so it trains on the samples it would train on in batches of K.
"""
from __future__ import annotations

import itertools
from typing import Iterator

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from aubench.engine.config import RunConfig
from aubench.engine.data_access import PretrainData, RunData
from aubench.models.base import AUMethod, Stage


class SkipBatches:
    """A batch sampler that leaves out its first `skip` batches (resuming mid-epoch; set it before
    each epoch) and, with `stop`, those from batch `stop` on."""

    def __init__(self, batch_sampler, skip: int = 0, stop: int | None = None):
        self.batch_sampler = batch_sampler
        self.skip = skip
        self.stop = stop

    def __iter__(self) -> Iterator:
        return itertools.islice(iter(self.batch_sampler), self.skip, self.stop)

    def __len__(self) -> int:
        total = len(self.batch_sampler) if self.stop is None else min(self.stop, len(self.batch_sampler))
        return max(0, total - self.skip)


def stage_dataset(stage: Stage, config: RunConfig, method: AUMethod, data: RunData, pretrain: PretrainData | None,
                  train_occlusion: tuple[str, float] | None) -> Dataset:
    """The stage's training set: the frames or clips whose labels the protocol keeps; every
    training frame for a stage that uses no labels (the --pretrain-data frames for a
    pre-training stage when given). Occluded by the run's `train_occlusion` unless the stage is
    not (Stage.occluded)."""
    # A preset may turn augmentation off (model setting "augment"); --no-augment always does.
    augment = config.augment and bool(stage.preset.model.get("augment", True))
    if augment:
        from aubench.data import ClipAugment

        augment = method.train_augment() or ClipAugment(degrees=stage.preset.rotation)
    if stage.pretraining and pretrain is not None:
        return pretrain.dataset(stage.preset, augment, landmarks=method.uses_landmarks, views=method.views)
    return data.train_dataset(method.input_kind, stage.preset, config.label_ratio if stage.uses_labels else 1.0,
                              augment=augment, key_view=method.key_view, labeled_only=stage.uses_labels,
                              occlusion=train_occlusion if stage.occluded else None,
                              landmarks=method.uses_landmarks, views=method.views, windows=method.window_training)


def stage_loader(dataset: Dataset, sampler: DistributedSampler, batch_size: int, method: AUMethod, clip_len: int,
                 skip_batches: int, workers: int, device: torch.device, accumulate: int = 1) -> DataLoader:
    """The loader of `dataset` in batches of `batch_size` (per rank; micro-batches of `accumulate`
    per optimiser step), its epoch the sampler's (sampler.set_epoch), leaving out the first
    `skip_batches` (loader.batch_sampler.skip); a clip method that does not train on windows gets
    batches of clips at one key position (KeyPositionBatchSampler). Workers persist from epoch to
    epoch; memory is pinned for a GPU."""
    drop_last = len(sampler) > batch_size * accumulate  # a lone 1-sample batch would break batch norm
    if method.input_kind == "clip" and not method.window_training:
        from aubench.data import KeyPositionBatchSampler

        batches = KeyPositionBatchSampler(sampler, batch_size, clip_len, drop_last=drop_last)
    else:
        batches = BatchSampler(sampler, batch_size, drop_last=drop_last)
    stop = len(batches) // accumulate * accumulate if drop_last and accumulate > 1 else None
    generator = torch.Generator().manual_seed(sampler.seed * 100_003 + sampler.epoch)
    return DataLoader(dataset, batch_sampler=SkipBatches(batches, skip_batches, stop), num_workers=workers,
                      persistent_workers=workers > 0, pin_memory=device.type == "cuda", generator=generator)
