"""The occlusion-robustness protocol (MAE-FAU, Section 4): masks on a 14 x 14 cell grid at every
image size, fixed test masks per frame, random training masks, occlusion conditions in the
leaderboard (rows, formats, F1-vs-occlusion plot) and the papers' reported rows."""
import csv
import io
import json
import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from aubench.data import ClipDataset, FrameDataset, block_mask, patch_mask
from fixtures_h5 import write_au_h5

KINDS = ("patches", "block")


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    return write_au_h5(tmp_path_factory.mktemp("occl") / "occl.h5", sequence_lengths=(7, 5))


def cell_pattern(mask: torch.Tensor) -> torch.Tensor:
    """The mask sampled at the centres of a 14 x 14 grid of cells."""
    h, w = mask.shape
    ys = [int((k + 0.5) * h / 14) for k in range(14)]
    xs = [int((k + 0.5) * w / 14) for k in range(14)]
    return mask[ys][:, xs]


# ------------------------------------------------------------------ masks on the cell grid


@pytest.mark.parametrize("make", [patch_mask, block_mask])
@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_cells_are_a_fixed_fraction_of_the_image(make, ratio):
    """16 px cells at 224 px, and the same cells (1/14 of the side) at 64 px and at odd sizes."""
    masks = {size: make(*size, ratio, generator=torch.Generator().manual_seed(4))
             for size in ((224, 224), (64, 64), (50, 71))}
    big = masks[(224, 224)]
    assert torch.equal(big, big[::16, ::16].repeat_interleave(16, 0).repeat_interleave(16, 1))
    for size, mask in masks.items():
        assert torch.equal(cell_pattern(mask), cell_pattern(big)), size
        # covered fraction: the ratio, up to the one-pixel differences between cells
        assert abs(mask.float().mean().item() - ratio) < 0.035, size


def test_condition_names_round_trip():
    from aubench.data import condition_name, parse_condition

    assert parse_condition("none") is None and condition_name(None) == "none"
    assert parse_condition("patches:0.5") == ("patches", 0.5)
    assert parse_condition("block:0.3") == ("block", 0.3)
    for spec in (("patches", 0.5), ("block", 0.3), ("patches", 0.05), ("block", 1.0)):
        name = condition_name(spec)
        assert name == f"{spec[0]}{spec[1]:g}"
        assert parse_condition(name.replace(spec[0], spec[0] + ":")) == spec
    for bad in ("", "None", "patches", "patches:", "patches:x", "patches:0", "block:1.5", "circle:0.3",
                "patches0.5", "patches:-0.1"):
        with pytest.raises(ValueError) as err:
            parse_condition(bad)
        message = str(err.value)
        assert repr(bad) in message and "'none'" in message and "patches:<ratio>" in message
        assert "block:<ratio>" in message
    with pytest.raises(ValueError, match="unknown occlusion kind"):
        condition_name(("circle", 0.3))


# ------------------------------------------------------------------ test masks fixed per frame


def masks_by_row(dataset, num_workers=0, shuffle=False) -> dict[int, torch.Tensor]:
    loader = DataLoader(dataset, batch_size=3, num_workers=num_workers, shuffle=shuffle,
                        generator=torch.Generator().manual_seed(5))
    out = {}
    for batch in loader:
        rows = batch["index"].reshape(-1).tolist()
        masks = batch["occlusion"].reshape(-1, *batch["occlusion"].shape[-2:])
        for row, mask in zip(rows, masks):
            out[row] = mask
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_test_masks_depend_on_the_frame_only(h5, kind):
    occlusion = (kind, 0.5 if kind == "patches" else 0.3)
    frames = FrameDataset(h5, fold=1, split="test", image_size=56, occlusion=occlusion, seed=1)
    reference = masks_by_row(frames)
    assert len(reference) == len(frames)
    # another seed, no seed, shuffled batches in two workers, the uint8 path
    for other in (FrameDataset(h5, fold=1, split="test", image_size=56, occlusion=occlusion, seed=2),
                  FrameDataset(h5, fold=1, split="test", image_size=56, occlusion=occlusion)):
        assert all(torch.equal(m, reference[row]) for row, m in masks_by_row(other).items())
    workers = masks_by_row(frames, num_workers=2, shuffle=True)
    assert workers.keys() == reference.keys()
    assert all(torch.equal(m, reference[row]) for row, m in workers.items())
    fast = FrameDataset(h5, fold=1, split="test", image_size=56, occlusion=occlusion, normalize=False)
    assert all(torch.equal(m, reference[row]) for row, m in masks_by_row(fast).items())
    # a frame in a test clip is occluded as that frame alone (clips overlap: some frames twice)
    clips = ClipDataset(h5, fold=1, split="test", clip_len=3, image_size=56, occlusion=occlusion, seed=9)
    seen = 0
    for i in range(len(clips)):
        item = clips[i]
        assert item["occlusion"].shape == (3, 56, 56)
        for row, mask, image in zip(item["index"].tolist(), item["occlusion"], item["image"]):
            single = frames[int(np.flatnonzero(frames.rows == row)[0])]
            assert torch.equal(mask, reference[row]) and torch.equal(single["occlusion"], mask)
            torch.testing.assert_close(image, single["image"])
            seen += 1
    assert seen >= len(frames)
    # ... and the masks of different frames differ (one block has a few hundred shapes and
    # places on the grid, so two frames may share one)
    distinct = {tuple(m.flatten().tolist()) for m in reference.values()}
    assert len(distinct) == len(reference) if kind == "patches" else len(distinct) > 0.7 * len(reference)


def test_training_masks_are_new_every_epoch(h5):
    """The engine's way: one DataLoader per epoch, its generator seeded from (seed, epoch)."""
    train = FrameDataset(h5, fold=1, split="train", image_size=56, occlusion=("patches", 0.5))

    def epoch_masks(seed, epoch):
        loader = DataLoader(train, batch_size=4, num_workers=2,
                            generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        return {row: mask for batch in loader for row, mask in zip(batch["index"].tolist(), batch["occlusion"])}

    first, second = epoch_masks(0, 0), epoch_masks(0, 1)
    assert first.keys() == second.keys()
    differing = sum(not torch.equal(first[row], second[row]) for row in first)
    assert differing == len(first)
    again = epoch_masks(0, 0)  # the same training seed and epoch: the same masks
    assert all(torch.equal(again[row], first[row]) for row in first)
    # a training clip: one draw, the same mask on all its frames
    clip = ClipDataset(h5, fold=1, split="train", clip_len=3, image_size=56, occlusion=("block", 0.3))[0]
    assert clip["occlusion"].shape == (3, 56, 56) and clip["occlusion"].any()
    assert all(torch.equal(m, clip["occlusion"][0]) for m in clip["occlusion"])
