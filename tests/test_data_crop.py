"""The papers' crop protocol in the data pipeline (Preset.crop_fraction): a random crop of the
enlarged face in training, the centre crop at test; landmarks and occlusion masks follow it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from aubench.data import ClipDataset, FrameDataset
from aubench.data.occlusion import frame_occlusion_mask
from aubench.data.transforms import (IMAGENET_MEAN_UINT8, ClipAugment, crop_offset, crop_source_size, resize_images,
                                     resize_points)
from fixtures_h5 import write_au_h5

STORED, SIZE, FRACTION = 40, 28, 0.875          # 40 px stored faces, resized to 32, cropped to 28
RESIZED = 32
NEUTRAL = ClipAugment(degrees=0, flip_p=0, brightness=0, contrast=0, saturation=0)  # draws, changes nothing
ROWS = 6 * (7 + 12 + 3)


@pytest.fixture(scope="module")
def noise_file(tmp_path_factory):
    """Frames of random noise (every crop position tells itself apart) with 68 landmarks each."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (ROWS, STORED, STORED, 3), dtype=np.uint8)
    landmarks = rng.uniform(2, STORED - 2, (ROWS, 68, 2)).astype(np.float32)
    path = write_au_h5(tmp_path_factory.mktemp("crop") / "noise.h5", schema_version=2, image_size=(STORED, STORED),
                       images=images, landmarks=landmarks)
    return path, images, landmarks


def find_offset(image: torch.Tensor, stored: np.ndarray) -> tuple[int, int]:
    """(top, left) of the crop of the resized `stored` frame that `image` (uint8 (3,H,W)) shows."""
    resized = resize_images(stored, (RESIZED, RESIZED))
    pixels = image.permute(1, 2, 0).numpy()
    found = [(top, left) for top in range(RESIZED - SIZE + 1) for left in range(RESIZED - SIZE + 1)
             if np.array_equal(resized[top:top + SIZE, left:left + SIZE], pixels)]
    assert len(found) == 1, found
    return found[0]


def expected_points(stored: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    top, left = offset
    return resize_points(stored, (STORED, STORED), (RESIZED, RESIZED)) - np.array([left, top], np.float32)


def test_crop_sizes_and_offsets():
    assert crop_source_size((224, 224), 224 / 256) == (256, 256)
    assert crop_source_size((112, 96), None) == (112, 96)
    with pytest.raises(ValueError, match="crop_fraction"):
        crop_source_size((224, 224), 1.5)
    assert crop_offset((256, 256), (224, 224), random=False) == (16, 16)
    assert crop_offset((32, 31), (28, 28), random=False) == (2, 1)
    draws = {crop_offset((256, 256), (224, 224), torch.Generator().manual_seed(s)) for s in range(40)}
    assert len(draws) > 20 and all(0 <= t <= 32 and 0 <= l <= 32 for t, l in draws)
    assert crop_offset((256, 256), (224, 224), torch.Generator().manual_seed(3)) == \
        crop_offset((256, 256), (224, 224), torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match="does not fit"):
        crop_offset((20, 20), (28, 28))


def test_training_crops_move_landmarks_by_the_crop_offset(noise_file):
    path, images, landmarks = noise_file
    ds = FrameDataset(path, 1, "train", image_size=SIZE, crop_fraction=FRACTION, augment=NEUTRAL, seed=7,
                      normalize=False)
    assert ds.resize_size == (RESIZED, RESIZED)
    offsets = []
    for i in range(24):
        item = ds[i]
        row = int(item["index"])
        assert item["image"].shape == (3, SIZE, SIZE)
        offset = find_offset(item["image"], images[row])
        np.testing.assert_allclose(item["landmarks"].numpy(), expected_points(landmarks[row], offset), atol=1e-4)
        offsets.append(offset)
    assert len(set(offsets)) > 5                      # random positions
    assert find_offset(ds[3]["image"], images[int(ds[3]["index"])]) == offsets[3]  # a function of (seed, index)


def test_test_frames_are_centre_cropped_and_their_masks_drawn_on_the_crop(noise_file):
    path, images, landmarks = noise_file
    ds = FrameDataset(path, 1, "test", image_size=SIZE, crop_fraction=FRACTION, normalize=False)
    occluded = FrameDataset(path, 1, "test", image_size=SIZE, crop_fraction=FRACTION, normalize=False,
                            occlusion=("patches", 0.5))
    centre = ((RESIZED - SIZE) // 2,) * 2
    for i in (0, 5, 17):
        item = ds[i]
        row = int(item["index"])
        assert find_offset(item["image"], images[row]) == centre
        assert torch.equal(ds[i]["image"], item["image"])             # deterministic
        np.testing.assert_allclose(item["landmarks"].numpy(), expected_points(landmarks[row], centre), atol=1e-4)
        masked = occluded[i]
        mask = masked["occlusion"]
        assert torch.equal(mask, frame_occlusion_mask("patches", 0.5, row, SIZE, SIZE))
        assert torch.equal(masked["image"][:, ~mask], item["image"][:, ~mask])
        mean = torch.tensor(IMAGENET_MEAN_UINT8, dtype=torch.uint8)[:, None]
        assert (masked["image"][:, mask] == mean).all()


def test_without_augmentation_the_training_crop_is_the_centre(noise_file):
    path, images, _ = noise_file
    ds = FrameDataset(path, 1, "train", image_size=SIZE, crop_fraction=FRACTION, normalize=False)
    assert {find_offset(ds[i]["image"], images[int(ds[i]["index"])]) for i in range(6)} == {(2, 2)}


def test_a_clip_takes_one_crop_for_all_its_frames(noise_file):
    path, images, landmarks = noise_file
    ds = ClipDataset(path, 1, "train", clip_len=3, image_size=SIZE, crop_fraction=FRACTION, augment=NEUTRAL,
                     seed=2, normalize=False)
    offsets = set()
    for i in range(8):
        item = ds[i]
        rows = item["index"].numpy()
        found = {find_offset(frame, images[row]) for frame, row in zip(item["image"], rows)}
        assert len(found) == 1
        offset = found.pop()
        np.testing.assert_allclose(item["landmarks"].numpy(), expected_points(landmarks[rows], offset), atol=1e-4)
        offsets.add(offset)
    assert len(offsets) > 1


def test_no_crop_fraction_keeps_the_plain_resize(noise_file):
    path, images, _ = noise_file
    ds = FrameDataset(path, 1, "test", image_size=SIZE, normalize=False)
    item = ds[0]
    expected = resize_images(images[int(item["index"])], (SIZE, SIZE))
    assert np.array_equal(item["image"].permute(1, 2, 0).numpy(), expected)
