"""A stage's loader (aubench.engine.training_data): built once, its workers persisting across
epochs, each epoch's batches in the sampler's order whatever the workers, a resumed epoch's
first batches skipped."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler

import aubench.models  # noqa: F401  (registers the methods)
from aubench.engine.config import RunConfig
from aubench.engine.trainer import Trainer

from fixtures_h5 import write_au_h5

SMALL = dict(method="resnet", preset="tiny", image_size=32, batch_size=8, epochs=2, progress=False,
             device="cpu", model={"backbone": "test_resnet"})


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    return write_au_h5(tmp_path_factory.mktemp("loader") / "tiny.h5", num_subjects=6, sequence_lengths=(6, 5),
                       image_size=(32, 32))


def epoch_indices(loader, sampler, epoch: int, skip: int = 0) -> list[list[int]]:
    sampler.set_epoch(epoch)
    loader.batch_sampler.skip = skip
    return [batch["index"].tolist() for batch in loader]


def test_one_loader_per_stage_keeps_the_order_of_each_epoch(h5, tmp_path):
    trainer = Trainer(RunConfig(data=str(h5), out=str(tmp_path / "run"), **SMALL))
    dataset = trainer.train_dataset()
    orders = {}
    for workers in (0, 2):
        trainer.workers = workers
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=False)
        loader = trainer.train_loader(dataset, sampler, 0)
        assert loader.persistent_workers == (workers > 0)
        orders[workers] = [epoch_indices(loader, sampler, epoch) for epoch in (0, 1)]
        assert epoch_indices(loader, sampler, 1, skip=2) == orders[workers][1][2:]  # a resumed epoch
        assert len(loader) == len(orders[workers][1]) - 2
        assert epoch_indices(loader, sampler, 0) == orders[workers][0]  # the skip is set per epoch
    assert orders[0] == orders[2]
    assert orders[0][0] != orders[0][1]  # each epoch its own order
    assert len(orders[0][0]) == 5  # 44 training frames: 5 batches of 8, the last 4 frames dropped
