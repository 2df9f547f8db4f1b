"""uint8 fast path (normalize=False + normalize_images) and the raw chunk-by-chunk reads."""
import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from aubench.data import (IMAGENET_MEAN_UINT8, AUFile, ClipAugment, ClipDataset, FrameDataset,
                          normalize_images, to_normalized_tensor, to_uint8_tensor)
from fixtures_h5 import frame_image, write_au_h5


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("h5")
    return {fmt: write_au_h5(root / f"{fmt}.h5", image_format=fmt) for fmt in ("raw", "jpeg")}


def test_normalize_images_matches_float_conversion():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 4, 7, 9, 3), dtype=np.uint8)
    images = to_uint8_tensor(frames)
    assert images.dtype == torch.uint8 and images.shape == (2, 4, 3, 7, 9)
    np.testing.assert_array_equal(images.numpy(), np.moveaxis(frames, -1, -3))
    expected = to_normalized_tensor(frames)
    got = normalize_images(images)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(normalize_images(images, torch.float64), expected.double(),
                               atol=1e-6, rtol=0)
    half = normalize_images(images, torch.bfloat16)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), expected, atol=0.02, rtol=0.01)
    # channels-last batches (any strides) work too
    strided = images[0].contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(normalize_images(strided), expected[0], atol=1e-6, rtol=0)


def test_normalize_images_errors():
    with pytest.raises(TypeError, match="uint8"):
        normalize_images(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, H, W\)"):
        normalize_images(torch.zeros(4, 4, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="floating"):
        normalize_images(torch.zeros(3, 4, 4, dtype=torch.uint8), dtype=torch.int32)


@pytest.mark.parametrize("fmt", ["raw", "jpeg"])
@pytest.mark.parametrize("image_size", [None, (16, 24)])
def test_uint8_items_normalise_to_float_items(files, fmt, image_size):
    kwargs = dict(fold=2, split="test", image_size=image_size)
    fast = FrameDataset(files[fmt], normalize=False, **kwargs)
    slow = FrameDataset(files[fmt], **kwargs)
    items = fast.__getitems__([0, 3, 1])
    for item, want in zip(items, slow.__getitems__([0, 3, 1])):
        assert item["image"].dtype == torch.uint8
        assert item["image"].shape == want["image"].shape
        torch.testing.assert_close(normalize_images(item["image"]), want["image"],
                                   atol=1e-6, rtol=0)
        assert torch.equal(item["label"], want["label"]) and item["index"] == want["index"]
    if fmt == "raw" and image_size is None:
        row = int(items[1]["index"])
        np.testing.assert_array_equal(items[1]["image"].permute(1, 2, 0).numpy(),
                                      frame_image(row, 32, 32))
    clip = ClipDataset(files[fmt], clip_len=4, normalize=False, **kwargs)[1]
    want = ClipDataset(files[fmt], clip_len=4, **kwargs)[1]
    assert clip["image"].dtype == torch.uint8 and clip["image"].shape == want["image"].shape
    torch.testing.assert_close(normalize_images(clip["image"]), want["image"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["patches", "block"])
def test_uint8_occlusion_uses_mean_colour(files, kind):
    kwargs = dict(fold=1, image_size=64, occlusion=(kind, 0.3), seed=7)
    item = FrameDataset(files["raw"], normalize=False, **kwargs)[2]
    want = FrameDataset(files["raw"], **kwargs)[2]
    mask = item["occlusion"]
    assert torch.equal(mask, want["occlusion"]) and mask.any() and not mask.all()
    mean = torch.tensor(IMAGENET_MEAN_UINT8, dtype=torch.uint8)
    assert torch.all(item["image"][:, mask] == mean[:, None])
    got = normalize_images(item["image"])
    torch.testing.assert_close(got[:, ~mask], want["image"][:, ~mask], atol=1e-6, rtol=0)
    # the mean colour normalises to about 0, the float path's exact 0
    assert got[:, mask].abs().max() < 0.01 and torch.all(want["image"][:, mask] == 0)
    clip = ClipDataset(files["jpeg"], clip_len=3, normalize=False, **kwargs)[0]
    assert torch.all(clip["image"].permute(1, 0, 2, 3)[:, clip["occlusion"]] == mean[:, None])


def test_uint8_augmentation_follows_the_float_path(files):
    """Same seed, same draw: the uint8 result differs from the float one by rounding only
    (each of the four uint8 steps rounds to whole pixel values)."""
    kwargs = dict(fold=1, augment=ClipAugment(degrees=10), seed=3, image_size=48)
    for index in range(3):
        fast = ClipDataset(files["raw"], clip_len=3, normalize=False, **kwargs)[index]
        slow = ClipDataset(files["raw"], clip_len=3, **kwargs)[index]
        assert fast["image"].dtype == torch.uint8
        diff = (normalize_images(fast["image"]) - slow["image"]).abs()
        # one pixel value is about 0.017 after normalisation; rotation edges may differ more
        assert diff.mean() < 3 * 0.0175 and torch.quantile(diff.flatten(), 0.99) < 0.15


def test_uint8_loader_with_workers(files):
    ds = FrameDataset(files["jpeg"], fold=None, split="all", normalize=False)
    loader = DataLoader(ds, batch_size=16, num_workers=2, shuffle=True)
    seen = []
    for batch in loader:
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, 32, 32)
        for image, row in zip(batch["image"], batch["index"].tolist()):
            want = frame_image(row, 32, 32).astype(int)
            assert np.abs(image.permute(1, 2, 0).numpy().astype(int) - want).mean() < 3
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(len(ds)))


def test_normalize_argument_checked(files):
    with pytest.raises(ValueError, match="normalize must be True or False"):
        FrameDataset(files["raw"], normalize="no")


@pytest.mark.cuda
def test_normalize_images_on_cuda(files):
    item = FrameDataset(files["raw"], fold=1, normalize=False)[0]
    want = FrameDataset(files["raw"], fold=1)[0]["image"]
    got = normalize_images(item["image"].cuda())
    assert got.is_cuda
    torch.testing.assert_close(got.cpu(), want, atol=1e-6, rtol=0)


def test_raw_reads_without_one_plain_chunk_per_frame(files, tmp_path):
    """Files whose raw frames are compressed or chunked differently take HDF5's normal path
    and read the same pixels as the writer's layout (read chunk by chunk)."""
    plain = AUFile(files["raw"])
    rows = [5, 3, 3, 4, 60, 0]
    want = plain.read_images(rows)
    plain._images()
    assert plain._direct_chunks
    for r, image in zip(rows, want):
        np.testing.assert_array_equal(image, frame_image(r, 32, 32))
    for layout in (dict(compression="gzip", chunks=(1, 32, 32, 3)), dict(chunks=(4, 32, 32, 3))):
        path = tmp_path / f"{len(layout)}_{layout['chunks'][0]}.h5"
        path.write_bytes(files["raw"].read_bytes())
        with h5py.File(path, "a") as f:
            pixels = f["frames/image"][()]
            del f["frames/image"]
            f["frames"].create_dataset("image", data=pixels, **layout)
        other = AUFile(path)
        np.testing.assert_array_equal(other.read_images(rows), want)
        np.testing.assert_array_equal(other.read_image(60), want[4])
        assert not other._direct_chunks
    with pytest.raises(IndexError, match="frame rows must be in"):
        plain.read_images([plain.num_frames])


@pytest.mark.parametrize("fmt", ["raw", "jpeg"])
def test_read_image_list_and_batched_clips(files, fmt):
    f = AUFile(files[fmt])
    for rows in ([7, 2, 2, 60, 31], [10, 11, 12, 11]):  # scattered; one contiguous block
        frames = f.read_image_list(rows)
        assert len(frames) == len(rows)
        np.testing.assert_array_equal(np.stack(frames), f.read_images(rows))
    assert len(f.read_image_list([])) == 0 and f.read_images([]).shape == (0, 32, 32, 3)
    ds = ClipDataset(files[fmt], fold=1, clip_len=3, normalize=False)
    batch = ds.__getitems__([(4, 0), 1, (0, 2)])
    for item, one in zip(batch, [ds[(4, 0)], ds[1], ds[(0, 2)]]):
        assert item.keys() == one.keys()
        for key in item:
            assert torch.equal(item[key], one[key]), key
