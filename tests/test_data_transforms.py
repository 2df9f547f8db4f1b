"""Clip-consistent augmentation, seeded determinism and occlusion masks."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from aubench.data import ClipAugment, ClipDataset, FrameDataset, block_mask, patch_mask
from aubench.data.occlusion import cell_edges
from fixtures_h5 import write_au_h5


@pytest.fixture(scope="module")
def constant_file(tmp_path_factory):
    """Every frame of a sequence shows the same image."""
    return write_au_h5(tmp_path_factory.mktemp("h5") / "const.h5", constant_per_sequence=True,
                       sequence_lengths=(9, 6))


def test_augment_draw_ranges():
    aug = ClipAugment()
    g = torch.Generator().manual_seed(0)
    draws = [aug.draw(g) for _ in range(400)]
    angles = np.array([d["angle"] for d in draws])
    assert angles.min() >= -10 and angles.max() <= 10 and angles.std() > 4
    flips = np.mean([d["flip"] for d in draws])
    assert 0.4 < flips < 0.6
    for key in ("brightness", "contrast", "saturation"):
        values = np.array([d[key] for d in draws])
        assert values.min() >= 0.7 and values.max() <= 1.3 and values.std() > 0.1


def test_augment_flip_and_rotation_applied():
    image = torch.zeros(1, 3, 32, 32)
    image[..., :8, :8] = 1.0  # bright top-left corner
    plain = {"angle": 0.0, "flip": False, "brightness": 1.0, "contrast": 1.0, "saturation": 1.0}
    torch.testing.assert_close(ClipAugment.apply(image, plain), image)
    flipped = ClipAugment.apply(image, {**plain, "flip": True})
    assert flipped[..., :8, -8:].mean() == 1 and flipped[..., :8, :8].sum() == 0
    inner = torch.zeros(1, 3, 32, 32)
    inner[..., 12:20, 4:12] = 1.0  # left of centre, clear of the borders
    rotated = ClipAugment.apply(inner, {**plain, "angle": 10.0})
    assert not torch.allclose(rotated, inner)
    assert abs(rotated.sum() - inner.sum()) / inner.sum() < 0.05  # moved, not cut off
    # counter-clockwise: a patch left of the centre moves down
    rows = torch.arange(32.0).view(32, 1)
    centroid = lambda x: (x[0, 0] * rows).sum() / x[0, 0].sum()
    assert centroid(rotated) > centroid(inner) + 0.5


def test_clip_augmentation_is_clip_consistent(constant_file):
    ds = ClipDataset(constant_file, fold=1, split="train", clip_len=4, augment=True, seed=1)
    plain = ClipDataset(constant_file, fold=1, split="train", clip_len=4)
    changed = 0
    for i in range(0, len(ds), 4):
        rows = plain.clip_rows(i)[0]
        images = ds[i]["image"]
        # identical input frames + one parameter draw per clip -> identical output frames
        for t in range(1, 4):
            torch.testing.assert_close(images[t], images[0], rtol=0, atol=0)
        np.testing.assert_array_equal(ds[i]["index"].numpy(), rows)
        changed += not torch.allclose(images, plain[i]["image"], atol=1e-3)
    assert changed == len(range(0, len(ds), 4))


def test_unseeded_augmentation_varies_between_draws(constant_file):
    ds = FrameDataset(constant_file, fold=1, augment=True)
    torch.manual_seed(0)
    a = ds[0]["image"]
    b = ds[0]["image"]
    assert not torch.equal(a, b)


def test_seed_makes_items_deterministic_across_workers(constant_file):
    # the train split: there the seed drives occlusion too (test masks are fixed per frame,
    # tests/test_occlusion_protocol.py)
    kwargs = dict(fold=1, split="train", augment=True, occlusion=("block", 0.3), seed=7)
    ds = FrameDataset(constant_file, **kwargs)
    first = [ds[i] for i in range(len(ds))]
    torch.manual_seed(123)  # the default generator does not matter when seeded
    for i in (0, 5, len(ds) - 1):
        torch.testing.assert_close(ds[i]["image"], first[i]["image"])
        assert torch.equal(ds[i]["occlusion"], first[i]["occlusion"])
    other = FrameDataset(constant_file, **{**kwargs, "seed": 8})
    assert not torch.equal(other[0]["occlusion"], first[0]["occlusion"])
    loaded = next(iter(DataLoader(ds, batch_size=len(ds), num_workers=2)))
    torch.testing.assert_close(loaded["image"], torch.stack([x["image"] for x in first]))


@pytest.mark.parametrize("size", [(224, 224), (64, 64), (50, 70)])
@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.25, 0.5, 0.8, 1.0])
def test_patch_mask_area(size, ratio):
    g = torch.Generator().manual_seed(1)
    mask = patch_mask(*size, ratio, generator=g)
    assert mask.dtype == torch.bool and mask.shape == size
    # round(ratio * 196) cells of the 14 x 14 grid (16 px cells at 224 px)
    ys, xs = cell_edges(size[0]).tolist(), cell_edges(size[1]).tolist()
    cells = [mask[y0:y1, x0:x1] for y0, y1 in zip(ys, ys[1:]) for x0, x1 in zip(xs, xs[1:])]
    assert all(bool(c.all()) or not bool(c.any()) for c in cells)  # made of whole cells
    assert sum(bool(c.all()) for c in cells) == round(ratio * 196 + 1e-9)
    # cells differ in size by one pixel at most: the area is within that of the target
    assert abs(mask.sum().item() - ratio * size[0] * size[1]) <= 0.03 * size[0] * size[1] + 1
    if size == (224, 224):
        assert all(c.shape == (16, 16) for c in cells)


@pytest.mark.parametrize("size", [(224, 224), (64, 48)])
@pytest.mark.parametrize("ratio", [0.05, 0.2, 0.5, 0.9, 1.0])
def test_block_mask_area_and_shape(size, ratio):
    g = torch.Generator().manual_seed(2)
    h, w = size
    for _ in range(10):
        mask = block_mask(h, w, ratio, generator=g)
        area = mask.sum().item()
        assert abs(area - ratio * h * w) <= 0.03 * h * w + 2 * max(h, w)
        ys, xs = torch.nonzero(mask, as_tuple=True)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        assert box.item() == area  # one filled rectangle


def test_occluded_items(constant_file):
    ds = FrameDataset(constant_file, fold=1, image_size=64, occlusion=("patches", 0.25))
    plain = FrameDataset(constant_file, fold=1, image_size=64)
    item = ds[2]
    mask = item["occlusion"]
    assert mask.shape == (64, 64) and mask.dtype == torch.bool
    assert abs(mask.sum().item() - 0.25 * 64 * 64) <= 0.03 * 64 * 64
    assert torch.all(item["image"][:, mask] == 0)  # the mean colour after normalisation
    torch.testing.assert_close(item["image"][:, ~mask], plain[2]["image"][:, ~mask])
    clip = ClipDataset(constant_file, fold=1, clip_len=3, occlusion=("block", 0.4))[0]
    assert clip["occlusion"].shape == (3, 32, 32)  # one mask per frame
    assert torch.all(clip["image"].permute(1, 0, 2, 3)[:, clip["occlusion"]] == 0)
