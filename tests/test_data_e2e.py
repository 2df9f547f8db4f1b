"""End to end: synthetic BP4D tree -> datasets_tools convert -> aubench.data datasets."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler

from aubench.data import AUFile, ClipDataset, FrameDataset, KeyPositionBatchSampler, sparse_label_mask
from datasets_tools import synth
from datasets_tools.convert import FrameOptions, convert


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(synthetic truth, {"jpeg": h5 path, "raw": h5 path}) of one small synthetic BP4D."""
    root = tmp_path_factory.mktemp("synth_bp4d")
    truth = synth.generate("bp4d", root / "raw_tree", subjects=6, tasks=["T1", "T2"], frames=9,
                           frame_size=(64, 80), seed=1, progress=False)
    files = {}
    for fmt in ("jpeg", "raw"):
        files[fmt] = root / f"bp4d_{fmt}.h5"
        convert("bp4d", root / "raw_tree", files[fmt], FrameOptions(image_size=32, image_format=fmt),
                progress=False)
    return truth, files


def test_converted_file_matches_truth(converted):
    truth, files = converted
    for path in files.values():
        f = AUFile(path)
        assert f.au_names == [f"AU{a}" for a in truth.benchmark_aus]
        assert f.image_size == (32, 32)
        assert sorted(f.sequences["name"]) == sorted(s.name for s in truth.sequences)
        columns = [truth.au_numbers.index(a) for a in truth.benchmark_aus]
        for s, name in enumerate(f.sequences["name"]):
            expected = truth.sequence(name)
            start, length = f.sequences["start"][s], f.sequences["length"][s]
            rows = slice(start, start + length)
            np.testing.assert_array_equal(f.frame_no[rows], expected.frame_no)
            np.testing.assert_array_equal(f.labels[rows], expected.labels[:, columns])
            assert np.all(f.frame_sequence[rows] == s)
        assert f.fingerprint() == AUFile(path).fingerprint()


def test_frame_datasets_read_converted_frames(converted):
    _, files = converted
    f = AUFile(files["raw"])
    for k in range(1, f.num_folds + 1):
        test_subjects = set(f.fold_subjects(k)[1])
        raw = FrameDataset(files["raw"], fold=k, split="test")
        jpeg = FrameDataset(files["jpeg"], fold=k, split="test", image_size=24)
        assert len(raw) == len(jpeg) > 0
        for i in range(0, len(raw), 5):
            a, b = raw[i], jpeg[i]
            row = int(a["index"])
            assert f.subjects[f.frame_subject[row]] in test_subjects
            assert a["image"].shape == (3, 32, 32) and b["image"].shape == (3, 24, 24)
            np.testing.assert_array_equal(a["label"].numpy(), f.labels[row])
            torch.testing.assert_close(a["label"], b["label"])
        # the JPEG file holds the same frames as the raw one, up to compression
        same_size = FrameDataset(files["jpeg"], fold=k, split="test")
        diff = (same_size[0]["image"] - raw[0]["image"]).abs().mean()
        assert diff < 0.1


def test_clip_datasets_on_converted_file(converted):
    _, files = converted
    f = AUFile(files["jpeg"])
    mask = sparse_label_mask(f, 1 / 3)
    train = ClipDataset(files["jpeg"], fold=1, split="train", clip_len=4, label_ratio=1 / 3)
    rows = f.rows(1, "train")
    assert len(train) == mask[rows].sum()
    sampler = KeyPositionBatchSampler(RandomSampler(train), batch_size=5, clip_len=4)
    for batch in DataLoader(train, batch_sampler=sampler, num_workers=2):
        assert batch["image"].shape[1:] == (4, 3, 32, 32)
        index = batch["index"]
        # one label per clip, at its key position, on a frame the protocol keeps
        key = batch["key_position"]
        assert torch.equal(batch["labeled"], torch.arange(4) == key[:, None])
        assert mask[index[torch.arange(len(key)), key].numpy()].all()
        seq = torch.from_numpy(f.frame_sequence[index.numpy()])
        assert torch.all(seq == seq[:, :1])  # a clip never leaves its sequence
    test = ClipDataset(files["jpeg"], fold=1, split="test", clip_len=4)
    seen = torch.cat([test[i]["index"] for i in range(len(test))]).unique().numpy()
    np.testing.assert_array_equal(seen, f.rows(1, "test"))
