"""The 68-point landmark scheme: the renderer's points, flips, alignment, landmarks that follow the
pixels through resizing and augmentation, files that record (or do not record) their scheme."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from aubench.data import AUFile, ClipDataset, FrameDataset, KeyPositionBatchSampler
from aubench.data.transforms import ClipAugment, resize_points
from datasets_tools import face_render as fr
from datasets_tools.faces import crop_face
from datasets_tools.landmarks import (CANONICAL_LEFT_EYE, CANONICAL_MOUTH, CANONICAL_RIGHT_EYE, MIRROR,
                                      NUM_POINTS, alignment_matrix, eye_centres, flip_points, mouth_centre,
                                      transform_points)
from fixtures_h5 import write_au_h5


def rendered(seed: int = 5, size=(192, 192), roll: float = 0.0, amounts=None):
    rng = np.random.default_rng(seed)
    renderer = fr.FaceRenderer(fr.make_identity(rng), size[1], size[0], rng)
    amounts = np.zeros(len(fr.RENDERED_AUS)) if amounts is None else amounts
    image, points, _ = renderer.render(amounts, renderer.pose(roll=roll))
    return image, points.astype(np.float32)


def centroid(channel: np.ndarray) -> np.ndarray:
    """(x, y) of the brightness-weighted centre of a single-channel image."""
    weight = np.asarray(channel, dtype=np.float64)
    ys, xs = np.mgrid[0:weight.shape[0], 0:weight.shape[1]]
    return np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()


# ------------------------------------------------------------------------------- the scheme

def test_mirror_pairs_left_and_right_twins():
    assert sorted(MIRROR) == list(range(NUM_POINTS))
    assert all(MIRROR[MIRROR[i]] == i for i in range(NUM_POINTS))
    assert [i for i in range(NUM_POINTS) if MIRROR[i] == i] == [8, 27, 28, 29, 30, 33, 51, 57, 62, 66]
    names = fr.LANDMARK_NAMES
    for i, j in enumerate(MIRROR):   # a named left point's twin is the right point of that name
        if "left" in names[i] or "right" in names[i]:
            swapped = names[i].replace("left", "#").replace("right", "left").replace("#", "right")
            assert names[j] == swapped, (names[i], names[j])
    # the renderer's neutral face is symmetric about x = 0: mirroring every point and renumbering
    # by MIRROR gives the same 68 points back (jaw and lip pairs included)
    points = fr.face_geometry(fr.make_identity(np.random.default_rng(1)), np.zeros(len(fr.RENDERED_AUS)))["landmarks"]
    np.testing.assert_allclose((points * [-1, 1])[list(MIRROR)], points, atol=1e-9)


def test_renderer_writes_the_68_points_in_ibug_order():
    _, p = rendered()
    assert p.shape == (NUM_POINTS, 2) == (len(fr.LANDMARK_NAMES), 2)
    x, y = p[:, 0], p[:, 1]
    assert (np.diff(x[0:9]) > 0).all() and (np.diff(x[8:17]) > 0).all() and y[8] == y[0:17].max()   # jaw
    assert x[17] < x[21] < x[22] < x[26]                                 # brows, outer -> inner -> outer
    assert (np.diff(y[27:31]) > 0).all() and x[31] < x[33] < x[35]      # bridge downwards, ala to ala
    assert x[36] < x[39] < x[42] < x[45]                                 # eye corners, image-left first
    assert y[37] < y[41] and y[43] < y[47]                               # upper lids above lower lids
    assert x[48] < x[51] < x[54] and y[51] < y[62] <= y[66] < y[57]     # lips (a closed mouth: 62 = 66)
    assert y[21] < y[39] < y[30] < y[51] < y[8]                          # brows, eyes, nose, mouth, chin


def test_a_flip_moves_every_point_to_its_mirrored_twin():
    image, p = rendered()
    width = image.shape[1]
    flipped = flip_points(p, width)
    np.testing.assert_allclose(flip_points(flipped, width), p)
    np.testing.assert_allclose(flipped[36], [width - 1 - p[45, 0], p[45, 1]])  # the left eye stays left
    left, right = eye_centres(flipped)
    assert left[0] < right[0]


# ------------------------------------------------------------------------------ alignment

def dot_centroid(with_dot: np.ndarray, without: np.ndarray, near, radius: int = 4) -> np.ndarray:
    """(x, y) of what a painted dot changed in an image (the weighted centre of the difference of
    the two images in the window around `near`)."""
    x, y = (int(round(v)) for v in near)
    window = np.s_[y - radius:y + radius + 1, x - radius:x + radius + 1]
    change = np.abs(with_dot[window].astype(np.float64) - without[window].astype(np.float64)).sum(-1)
    return centroid(change) + [x - radius, y - radius]


def test_aligned_crop_puts_the_eye_centres_where_the_transform_says():
    clean, p = rendered(roll=0.3, size=(480, 400))
    image = clean.copy()
    dots = np.round(p[[36, 39, 42, 45]])
    for x, y in dots:   # paint 2 x 2 red dots at the eye corners: their pixels must land where the
        image[int(y):int(y) + 2, int(x):int(x) + 2] = (0, 0, 255)   # transform sends the points
    size = 96
    face, mapped, note = crop_face(image, "align", size, p)
    without, _, _ = crop_face(clean, "align", size, p)
    assert note is None and face.shape == (size, size, 3)
    matrix = alignment_matrix(p, size)
    np.testing.assert_allclose(mapped, transform_points(p, matrix), atol=1e-4)
    left, right = eye_centres(mapped)
    # a similarity through three points: the eyes land at their canonical places to a small fraction
    # of the side (the mouth takes up the residual of the least-squares fit)
    np.testing.assert_allclose(left, np.array(CANONICAL_LEFT_EYE) * size - 0.5, atol=0.04 * size)
    np.testing.assert_allclose(right, np.array(CANONICAL_RIGHT_EYE) * size - 0.5, atol=0.04 * size)
    np.testing.assert_allclose(mouth_centre(mapped), np.array(CANONICAL_MOUTH) * size - 0.5, atol=0.06 * size)
    assert abs(right[1] - left[1]) < 0.02 * size   # the roll is undone
    for dot in dots:   # a dot's centre (+0.5: 2 x 2 pixels) goes where the transform says (to 0.3 px:
        expected = transform_points(dot + 0.5, matrix)   # an area shrink, then a bilinear warp, in uint8)
        np.testing.assert_allclose(dot_centroid(face, without, expected), expected, atol=0.3)


@pytest.mark.parametrize("crop", ["center", "landmarks", "none"])
def test_square_crops_move_the_landmarks_with_the_pixels(crop):
    clean, p = rendered(size=(200, 160))
    image = clean.copy()
    x, y = np.round(p[45])
    image[int(y):int(y) + 2, int(x):int(x) + 2] = (0, 0, 255)
    p = p.copy()
    p[45] = (x + 0.5, y + 0.5)   # the dot's centre
    face, mapped, _ = crop_face(image, crop, 64, p)
    without, _, _ = crop_face(clean, crop, 64, p)
    np.testing.assert_allclose(dot_centroid(face, without, mapped[45], radius=3), mapped[45], atol=0.1)


def test_degenerate_landmarks_fall_back_instead_of_failing():
    image, p = rendered()
    zeros = np.zeros_like(p)   # what some landmark tools write for a frame they could not fit
    assert alignment_matrix(zeros, 64) is None
    face, _, note = crop_face(image, "align", 64, zeros)
    assert face.shape == (64, 64, 3) and note.startswith("align: no landmarks")


def test_align_without_landmarks_falls_back_to_the_centre_crop_with_a_note():
    image, p = rendered()
    face, mapped, note = crop_face(image, "align", 64, np.full_like(p, np.nan))
    assert face.shape == (64, 64, 3) and note.startswith("align: no landmarks") and np.isnan(mapped).all()


# ------------------------------------------------------------- landmarks follow the pixels

def dot_image(point, size=(48, 40)) -> np.ndarray:
    """RGB uint8 (H, W, 3) black image with one white pixel at `point` (x, y)."""
    image = np.zeros((*size, 3), np.uint8)
    image[int(point[1]), int(point[0])] = 255
    return image


def test_resize_moves_points_as_opencv_moves_pixels():
    image = dot_image((13, 29))
    big = cv2.resize(image, (80, 96), interpolation=cv2.INTER_LINEAR)
    moved = resize_points(np.array([[13.0, 29.0]]), (48, 40), (96, 80))
    np.testing.assert_allclose(centroid(big[..., 0]), moved[0], atol=0.05)


@pytest.mark.parametrize("flip,angle", [(True, 0.0), (False, 17.0), (True, -23.0)])
def test_flip_and_rotation_move_landmarks_with_the_pixels(flip, angle):
    point = np.array([11.0, 30.0])
    image = torch.from_numpy(dot_image(point)).permute(2, 0, 1).float() / 255
    params = {"flip": flip, "angle": angle, "brightness": 1.0, "contrast": 1.0, "saturation": 1.0}
    out = ClipAugment.apply(image, params)
    points = torch.full((NUM_POINTS, 2), float("nan"))
    points[36] = torch.tensor(point)     # the image-left eye's outer corner
    moved = ClipAugment.apply_points(points, params, (48, 40))
    found = 45 if flip else 36           # after a flip the drawn point is the other eye's twin corner
    np.testing.assert_allclose(centroid(out[0].numpy()), moved[found].numpy(), atol=0.1)
    assert torch.isnan(moved[[i for i in range(NUM_POINTS) if i != found]]).all()


# ------------------------------------------------------------------ files and datasets

def landmark_file(tmp_path, schema_version=2, points=NUM_POINTS, scheme="ibug68", **kwargs):
    """A fixture file whose landmark i of frame r sits at ((i + r) mod 30 + 1, i mod 29 + 1)."""
    n = 6 * (7 + 12 + 3)
    rows = np.arange(n)[:, None]
    index = np.arange(points)[None, :]
    landmarks = np.stack(np.broadcast_arrays((index + rows) % 30 + 1.0, index % 29 + 1.0), -1).astype(np.float32)
    return write_au_h5(tmp_path / f"v{schema_version}.h5", schema_version=schema_version, landmarks=landmarks,
                       landmark_scheme=scheme, **kwargs), landmarks


def test_items_carry_landmarks_resized_with_the_image(tmp_path):
    path, landmarks = landmark_file(tmp_path)
    assert AUFile(path).has_scheme_landmarks
    ds = FrameDataset(path, 1, "test", image_size=64)
    item = ds[3]
    row = int(item["index"])
    assert item["landmarks"].shape == (NUM_POINTS, 2) and item["landmarks"].dtype == torch.float32
    np.testing.assert_allclose(item["landmarks"].numpy(), (landmarks[row] + 0.5) * 2 - 0.5)
    assert "landmarks" not in FrameDataset(path, 1, "test", landmarks=False)[3]


def affine_residual(source: np.ndarray, target: np.ndarray, fit_on: int = 0) -> float:
    """Largest error of the one affine map (fitted on frame `fit_on`) from every frame of `source`
    (n, P, 2) to the same frame of `target`."""
    design = np.concatenate([source[fit_on], np.ones((source.shape[1], 1))], 1)
    solution, *_ = np.linalg.lstsq(design, target[fit_on], rcond=None)
    mapped = np.concatenate([source, np.ones((*source.shape[:2], 1))], -1) @ solution
    return float(np.abs(mapped - target).max())


def test_clip_landmarks_follow_one_draw_and_key_positions(tmp_path):
    """Every frame of a training clip moves by the clip's one draw (one affine map, with the
    mirror permutation when the draw flips), whatever key position the sampler asks for."""
    path, landmarks = landmark_file(tmp_path)
    ds = ClipDataset(path, 1, "train", clip_len=3, augment=ClipAugment(degrees=15, flip_p=0.5), seed=4,
                     key_view=True)
    sampler = KeyPositionBatchSampler(range(len(ds)), batch_size=4, clip_len=3)
    flips = checked = 0
    for batch in list(sampler)[:3]:
        for (index, _), item in zip(batch, ds.__getitems__(batch)):
            rows = item["index"].numpy()
            assert rows[int(item["key_position"])] == ds.key_rows[index]
            moved = item["landmarks"].numpy()
            assert moved.shape == (3, NUM_POINTS, 2) and item["key_landmarks"].shape == (NUM_POINTS, 2)
            stored = landmarks[rows]
            plain = affine_residual(stored, moved)
            mirrored = affine_residual(stored[:, list(MIRROR)], moved)
            assert min(plain, mirrored) < 1e-3
            flips += mirrored < plain
            checked += 1
    assert checked == 12 and 0 < flips < 12


def test_augmented_frames_and_their_landmarks_agree_pixel_for_pixel(tmp_path):
    """A file whose frames show one white dot at landmark 36: after the engine's augmentation the
    dot is where the item's landmarks say (landmark 36, or 45 after a flip)."""
    n = 6 * (7 + 12 + 3)
    rng = np.random.default_rng(0)
    points = np.full((n, NUM_POINTS, 2), np.nan, np.float32)
    points[:, 36] = np.stack([rng.integers(12, 28, n), rng.integers(12, 20, n)], -1)
    images = np.stack([dot_image(p, size=(32, 40)) for p in points[:, 36]])
    path = write_au_h5(tmp_path / "dots.h5", schema_version=2, image_size=(32, 40), images=images,
                       landmarks=points)
    ds = FrameDataset(path, 1, "train", augment=ClipAugment(degrees=20, flip_p=0.5, brightness=0, contrast=0,
                                                            saturation=0), seed=1)
    flips = 0
    for i in range(12):
        item = ds[i]
        moved = item["landmarks"]
        found = 36 if torch.isfinite(moved[36]).all() else 45
        flips += found == 45
        image = item["image"][0].numpy()
        image = image - image.min()
        np.testing.assert_allclose(centroid(image), moved[found].numpy(), atol=0.35)
    assert 0 < flips < 12
    # a clip's key view has its own draw, and its landmarks follow its own pixels
    clips = ClipDataset(path, 1, "train", clip_len=3, augment=ds.augment, seed=2, key_view=True)
    for i in range(6):
        item = clips[i]
        key = item["key_landmarks"]
        found = 36 if torch.isfinite(key[36]).all() else 45
        image = item["key_image"][0].numpy()
        np.testing.assert_allclose(centroid(image - image.min()), key[found].numpy(), atol=0.35)
    # occlusion blanks cells after the augmentation and leaves the points where they are
    occluded = FrameDataset(path, 1, "train", augment=ds.augment, seed=1, occlusion=("patches", 0.5))
    for i in range(4):
        item = occluded[i]
        assert item["occlusion"].any()
        torch.testing.assert_close(item["landmarks"], ds[i]["landmarks"], equal_nan=True)


def test_a_version_1_file_reads_and_says_what_it_lacks(tmp_path):
    path, _ = landmark_file(tmp_path, schema_version=1, points=54)
    file = AUFile(path)
    assert file.schema_version == 1 and file.labeled and not file.has_scheme_landmarks
    assert "landmarks" not in FrameDataset(path, 1, "test")[0]          # read as before
    with pytest.raises(ValueError, match=r"v1\.h5: .*needs the 68-point ibug68 landmarks.*schema version 1"):
        FrameDataset(path, 1, "test", landmarks=True)
    plain = write_au_h5(tmp_path / "plain.h5", schema_version=2)
    with pytest.raises(ValueError, match="stores no landmarks.*--landmarks detect"):
        AUFile(plain).require_landmarks("RRL's AU attention maps")


def test_the_engine_gives_landmarks_to_methods_that_use_them_only(tmp_path):
    from aubench.engine.data_access import open_run_data
    from aubench.errors import UserError
    from aubench.models.base import Preset

    preset = Preset(name="t", image_size=32, epochs=1, batch_size=2)
    path, _ = landmark_file(tmp_path)
    data = open_run_data(path, 1)
    assert "landmarks" not in data.train_dataset("frame", preset, 1.0, augment=False)[0]
    assert data.train_dataset("frame", preset, 1.0, augment=False, landmarks=True)[0]["landmarks"].shape == (68, 2)
    assert data.test_dataset("clip", Preset(name="t", image_size=32, epochs=1, batch_size=2, clip_len=3),
                             landmarks=True)[0]["landmarks"].shape == (3, 68, 2)
    plain = open_run_data(write_au_h5(tmp_path / "plain.h5", schema_version=2), 1)
    with pytest.raises(UserError, match=r"--data .*plain\.h5: .*needs the 68-point ibug68 landmarks.*stores no landmarks"):
        plain.train_dataset("frame", preset, 1.0, augment=False, landmarks=True)
