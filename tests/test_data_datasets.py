"""FrameDataset / ClipDataset items, sparse labels, clip layout, key-position sampler, loaders."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

from aubench.data import (IMAGENET_MEAN, IMAGENET_STD, AUFile, ClipDataset, FrameDataset,
                          KeyPositionBatchSampler, decode_jpeg, sparse_label_mask)
from fixtures_h5 import frame_image

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """Undo the normalisation: (..., 3, H, W) float -> (..., H, W, 3) uint8."""
    return (image * STD + MEAN).mul(255).round().clamp(0, 255).byte().movedim(-3, -1).numpy()



def test_frame_item_raw(raw_file):
    ds = FrameDataset(raw_file, fold=2, split="test")
    f = AUFile(raw_file)
    np.testing.assert_array_equal(ds.rows, f.rows(2, "test"))
    assert len(ds) == f.rows(2, "test").size
    item = ds[3]
    assert set(item) == {"image", "label", "index"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 32, 32)
    assert item["label"].dtype == torch.float32 and item["label"].shape == (5,)
    assert item["index"].dtype == torch.int64
    row = int(item["index"])
    assert row == ds.rows[3]
    np.testing.assert_array_equal(to_uint8(item["image"]), frame_image(row, 32, 32))
    np.testing.assert_array_equal(item["label"].numpy(), f.labels[row].astype(np.float32))
    # normalised with the ImageNet statistics
    expected = (torch.from_numpy(frame_image(row, 32, 32)).permute(2, 0, 1) / 255 - MEAN) / STD
    torch.testing.assert_close(item["image"], expected)


def test_frame_item_jpeg_and_resize(jpeg_file):
    ds = FrameDataset(jpeg_file, fold=1, split="train")
    item = ds[0]
    row = int(item["index"])
    with __import__("h5py").File(jpeg_file) as h:
        decoded = decode_jpeg(h["frames/image"][row])
    assert np.abs(to_uint8(item["image"]).astype(int) - decoded).max() <= 1
    small = FrameDataset(jpeg_file, fold=1, split="train", image_size=(16, 24))[0]
    assert small["image"].shape == (3, 16, 24)
    big = FrameDataset(jpeg_file, fold=1, split="train", image_size=48)[0]
    assert big["image"].shape == (3, 48, 48)


RATIOS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)


def test_sparse_label_mask_protocol(raw_file):
    f = AUFile(raw_file)
    for ratio in RATIOS:
        mask = sparse_label_mask(f, ratio)
        assert mask.shape == (f.num_frames,)
        np.testing.assert_array_equal(sparse_label_mask(raw_file, ratio), mask)
    np.testing.assert_array_equal(sparse_label_mask(f, 1.0), np.ones(f.num_frames, bool))
    # evenly spaced at 1/r along the sequences, the spacing carrying on across their boundaries
    seqs = {"start": np.array([0, 7, 10]), "length": np.array([7, 3, 10])}
    np.testing.assert_array_equal(np.flatnonzero(sparse_label_mask(seqs, 0.3)), [0, 4, 7, 10, 14, 17])
    np.testing.assert_array_equal(np.flatnonzero(sparse_label_mask(seqs, 0.5)), np.arange(0, 20, 2))
    with pytest.raises(ValueError, match="label_ratio"):
        sparse_label_mask(seqs, 0.0)


@pytest.mark.parametrize("ratio", RATIOS)
def test_sparse_labels_keep_r_within_one_frame_per_sequence(ratio):
    # BP4D-like sequence lengths, short and long, in one file
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 400, size=60)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    mask = sparse_label_mask({"start": starts, "length": lengths}, ratio)
    for start, length in zip(starts, lengths):
        assert abs(int(mask[start:start + length].sum()) - ratio * length) < 1, (start, length)
    assert abs(int(mask.sum()) - ratio * lengths.sum()) < 1      # the file as a whole: r to one frame


def test_label_report_and_statistics_from_kept_labels_only(raw_file):
    f = AUFile(raw_file)
    train = f.rows(1, "train")
    for ratio in (0.1, 0.25, 0.5):
        ds = FrameDataset(raw_file, fold=1, label_ratio=ratio)
        mask = sparse_label_mask(f, ratio)
        kept = f.labels[np.sort(train[mask[train]])]
        # oracle: inverse positive rate over the kept labels, normalised to mean 1
        positives, known = (kept == 1).sum(0), (kept >= 0).sum(0)
        rate = positives / known
        weight = 1 / rate
        np.testing.assert_allclose(ds.label_statistics()["class_weight"], weight / weight.mean(), rtol=1e-6)
        np.testing.assert_allclose(ds.label_statistics()["au_rate"], rate, rtol=1e-12)
        pos = (kept == 1).astype(float)
        given = pos.T @ (kept >= 0)                # AU_i positive, AU_j known
        np.testing.assert_allclose(ds.label_statistics()["cooccurrence"], (pos.T @ pos) / given, rtol=1e-12)
        report = ds.label_report()
        assert report["kept_labels"] == int(mask[train].sum())
        assert report["realised_label_ratio"] == pytest.approx(mask[train].sum() / train.size)
        assert report["labeled_frames"] == train.size
    # at ratio 1 the run's statistics are the file's stored per-fold statistics
    full = FrameDataset(raw_file, fold=1).label_statistics()
    for key, value in f.fold_stats(1).items():
        np.testing.assert_allclose(full[key], value, rtol=1e-6)


def test_frame_sparse_labels(raw_file):
    f = AUFile(raw_file)
    mask = sparse_label_mask(f, 0.25)
    ds = FrameDataset(raw_file, fold=1, label_ratio=0.25)
    assert len(ds) == f.rows(1, "train").size
    for i in range(len(ds)):
        item = ds[i]
        row = int(item["index"])
        if mask[row]:
            np.testing.assert_array_equal(item["label"].numpy(), f.labels[row])
        else:
            assert torch.all(item["label"] == -1)
    labeled = FrameDataset(raw_file, fold=1, label_ratio=0.25, labeled_only=True)
    np.testing.assert_array_equal(labeled.rows, f.rows(1, "train")[mask[f.rows(1, "train")]])
    assert all(mask[int(labeled[i]["index"])] for i in range(len(labeled)))


def test_clip_train_items(raw_file):
    f = AUFile(raw_file)
    n = 5
    ds = ClipDataset(raw_file, fold=1, split="train", clip_len=n, label_ratio=0.5)
    mask = sparse_label_mask(f, 0.5)
    train = f.rows(1, "train")
    np.testing.assert_array_equal(ds.key_rows, train[mask[train]])
    assert len(ds) == mask[train].sum()
    for i in range(len(ds)):
        for m in range(n):
            rows, key = ds.clip_rows(i, m)
            if i % 7 == 0:  # the (i, m) item agrees with clip_rows
                item = ds[(i, m)]
                np.testing.assert_array_equal(item["index"].numpy(), rows)
                assert int(item["key_position"]) == key
            assert rows[key] == ds.key_rows[i]
            seq = f.frame_sequence[ds.key_rows[i]]
            start, length = f.sequences["start"][seq], f.sequences["length"][seq]
            assert np.all((rows >= start) & (rows < start + length))
            if length >= n:
                np.testing.assert_array_equal(np.diff(rows), 1)
                # the key frame sits at m unless that would leave the sequence
                pos = ds.key_rows[i] - start
                if m <= pos and pos - m + n <= length:
                    assert key == m
            else:  # short sequence: whole sequence, then its last frame repeated
                np.testing.assert_array_equal(rows, np.minimum(start + np.arange(n), start + length - 1))
        if i % 3:
            continue
        item = ds[i]
        assert item["image"].shape == (n, 3, 32, 32) and item["image"].dtype == torch.float32
        assert item["label"].shape == (n, 5) and item["label"].dtype == torch.float32
        assert item["labeled"].dtype == torch.bool and item["labeled"].shape == (n,)
        assert item["index"].dtype == torch.int64 and item["key_position"].dtype == torch.int64
        rows = item["index"].numpy()
        key = int(item["key_position"])
        # one label per clip: the key frame's, though other kept labels fall inside the clip
        np.testing.assert_array_equal(item["labeled"].numpy(), np.arange(n) == key)
        assert mask[rows[key]]
        for t, r in enumerate(rows):
            np.testing.assert_array_equal(to_uint8(item["image"][t]), frame_image(r, 32, 32))
            expected = f.labels[r].astype(np.float32) if t == key else np.full(5, -1, np.float32)
            np.testing.assert_array_equal(item["label"][t].numpy(), expected)
    assert any(mask[ds.clip_rows(i)[0]].sum() > 1 for i in range(len(ds)))  # the case is exercised
    # ds[i] puts the key frame at n // 2 when the sequence allows it
    f_long = [i for i in range(len(ds)) if ds.key_rows[i] - f.sequences["start"][f.frame_sequence[ds.key_rows[i]]] >= n]
    assert f_long and any(ds.clip_rows(i)[1] == n // 2 for i in f_long)
    with pytest.raises(ValueError, match="key position 5 out of range"):
        ds[(0, 5)]


def test_clip_test_split_covers_every_frame(jpeg_file):
    f = AUFile(jpeg_file)
    for n in (1, 4, 5, 20):
        ds = ClipDataset(jpeg_file, fold=3, split="test", clip_len=n)
        seen = np.concatenate([ds.clip_rows(i)[0] for i in range(len(ds))])
        np.testing.assert_array_equal(np.unique(seen), f.rows(3, "test"))
        for i in range(len(ds)):
            rows, _ = ds.clip_rows(i)
            seq = f.frame_sequence[rows[0]]
            assert np.all(f.frame_sequence[rows] == seq)
            assert np.all(np.diff(rows) >= 0)
        # stride n: no more clips than needed
        lengths = f.sequences["length"][np.unique(f.frame_sequence[f.rows(3, "test")])]
        assert len(ds) == sum(-(-int(length) // n) for length in lengths)
    item = ClipDataset(jpeg_file, fold=3, split="test", clip_len=4)[0]
    assert item["image"].shape == (4, 3, 32, 32) and bool(item["labeled"].all())
    with pytest.raises(ValueError, match="only be chosen for the train split"):
        ClipDataset(jpeg_file, fold=3, split="test", clip_len=4)[(0, 1)]


def test_key_position_batch_sampler():
    sampler = KeyPositionBatchSampler(SequentialSampler(range(23)), batch_size=4, clip_len=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 6
    assert [len(b) for b in batches] == [4, 4, 4, 4, 4, 3]
    for number, batch in enumerate(batches):
        assert {m for _, m in batch} == {number % 3}
    assert [i for b in batches for i, _ in b] == list(range(23))
    dropped = KeyPositionBatchSampler(SequentialSampler(range(23)), 4, 3, drop_last=True)
    assert len(list(dropped)) == len(dropped) == 5
    with pytest.raises(ValueError, match="clip_len"):
        KeyPositionBatchSampler(SequentialSampler(range(3)), 4, 0)


def test_clip_loader_with_key_position_sampler(raw_file):
    ds = ClipDataset(raw_file, fold=1, clip_len=3, label_ratio=0.5)
    sampler = KeyPositionBatchSampler(RandomSampler(ds), batch_size=4, clip_len=3)
    for number, batch in enumerate(DataLoader(ds, batch_sampler=sampler)):
        assert batch["image"].shape[1:] == (3, 3, 32, 32)
        b = batch["image"].shape[0]
        rows = batch["index"]
        keys = batch["key_position"]
        key_rows = rows[torch.arange(b), keys]
        assert torch.all(batch["labeled"][torch.arange(b), keys])
        assert set(key_rows.tolist()) <= set(ds.key_rows.tolist())
        m = number % 3
        f = ds.file
        for clip, key in zip(rows.numpy(), keys.tolist()):
            if key != m:  # only where position m would push the clip out of its sequence
                seq = f.frame_sequence[clip[0]]
                start, length = f.sequences["start"][seq], f.sequences["length"][seq]
                assert clip[0] == start or clip[-1] == start + length - 1


@pytest.mark.parametrize("fmt", ["raw", "jpeg"])
def test_dataloader_two_workers(raw_file, jpeg_file, fmt):
    path = raw_file if fmt == "raw" else jpeg_file
    ds = FrameDataset(path, fold=1, split="all")
    ds[0]  # the parent holds a handle too: workers must open their own
    loader = DataLoader(ds, batch_size=16, num_workers=2, shuffle=True)
    seen = []
    for batch in loader:
        assert batch["image"].shape[1:] == (3, 32, 32)
        for image, row in zip(batch["image"], batch["index"].tolist()):
            got, want = to_uint8(image).astype(int), frame_image(row, 32, 32).astype(int)
            assert np.abs(got - want).mean() < 3
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(len(ds)))


def test_argument_errors(raw_file):
    with pytest.raises(ValueError, match=r"label_ratio must be in \(0, 1\], got 0"):
        FrameDataset(raw_file, label_ratio=0)
    with pytest.raises(ValueError, match=r"label_ratio must be in \(0, 1\], got 1.5"):
        ClipDataset(raw_file, label_ratio=1.5)
    with pytest.raises(ValueError, match="clip_len must be an int >= 1, got 0"):
        ClipDataset(raw_file, clip_len=0)
    with pytest.raises(ValueError, match=r"fold 9 is out of range.*1\.\.3"):
        FrameDataset(raw_file, fold=9)
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        ClipDataset(raw_file, split="valid")
    with pytest.raises(ValueError, match="unknown occlusion kind 'circle'"):
        FrameDataset(raw_file, occlusion=("circle", 0.2))
    with pytest.raises(ValueError, match=r"occlusion ratio must be in \[0, 1\]"):
        FrameDataset(raw_file, occlusion=("block", 2))
    with pytest.raises(ValueError, match="image_size"):
        FrameDataset(raw_file, image_size=(0, 5))
    with pytest.raises(IndexError):
        FrameDataset(raw_file)[10_000]


def test_clip_key_view_is_the_key_frame_with_its_own_draw(raw_file):
    plain = ClipDataset(raw_file, fold=1, clip_len=5, label_ratio=0.5, key_view=True)
    item = plain[(3, 2)]
    assert torch.equal(item["key_image"], item["image"][int(item["key_position"])])
    augmented = ClipDataset(raw_file, fold=1, clip_len=5, label_ratio=0.5, key_view=True, augment=True, seed=7)
    first, again = augmented[(3, 2)], augmented[(3, 2)]
    assert torch.equal(first["key_image"], again["key_image"])          # seeded: reproducible
    assert first["key_image"].shape == first["image"].shape[1:]
    assert not torch.equal(first["key_image"], first["image"][int(first["key_position"])])
    with pytest.raises(ValueError, match="key_view"):
        ClipDataset(raw_file, fold=1, split="test", key_view=True)
