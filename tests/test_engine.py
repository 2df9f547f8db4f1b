"""Trainer / evaluator on tiny synthetic files: a step lowers the loss, exact resume, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import aubench.models  # noqa: F401  (registers the methods)
from aubench.engine.checkpoint import load_checkpoint
from aubench.engine.config import RunConfig
from aubench.engine.optim import lr_factor
from aubench.engine.trainer import Trainer
from aubench.errors import UserError
from aubench.models import create_method
from aubench.models.base import TrainState

from fixtures_h5 import write_au_h5

SMALL = dict(method="resnet", preset="tiny", image_size=32, batch_size=8, epochs=2, progress=False,
             augment=True, device="cpu", log_every=1, model={"backbone": "test_resnet"})


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    return write_au_h5(tmp_path_factory.mktemp("engine") / "tiny.h5", num_subjects=6, sequence_lengths=(6, 5),
                       image_size=(32, 32))


def test_training_step_lowers_loss(h5):
    torch.manual_seed(0)
    method = create_method("resnet", num_aus=5, preset="tiny", backbone="test_resnet")
    from aubench.data import FrameDataset
    ds = FrameDataset(h5, 1, "train", image_size=32)
    batch = {k: torch.stack([ds[i][k] for i in range(8)]) for k in ("image", "label", "index")}
    method.train()
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05)
    before = method.training_step(batch, TrainState())["loss"]
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    after = method.training_step(batch, TrainState())["loss"]
    assert after.item() < before.item()


def test_lr_schedules():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0)
    assert lr_factor(60, 100, 0, "step") == pytest.approx(0.1)
    assert lr_factor(80, 100, 0, "step") == pytest.approx(0.01)
    assert lr_factor(50, 100, 0, "constant") == 1.0


class Killed(Exception):
    pass


def _weights(method):
    return {k: v.clone() for k, v in method.state_dict().items()}


def test_killed_run_resumes_exactly(h5, tmp_path):
    full = Trainer(RunConfig(data=str(h5), out=str(tmp_path / "full"), **SMALL))
    full.fit()
    full_metrics = full.evaluate()

    def kill_after_3(state, parts):
        if state.step == 3:
            raise Killed

    out = str(tmp_path / "killed")
    killed = Trainer(RunConfig(data=str(h5), out=out, checkpoint_every=1, **SMALL), step_callback=kill_after_3)
    with pytest.raises(Killed):
        killed.fit()
    saved = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert saved["train_state"]["step"] == 3
    assert saved["train_state"]["batch_in_epoch"] == 3  # mid-epoch: fold 1 trains on 44 frames = 5 batches

    # Scramble the global RNGs so only the checkpoint can restore them.
    torch.manual_seed(12345)
    np.random.seed(999)
    resumed = Trainer(RunConfig(data=str(h5), out=out, resume=True, **SMALL))
    resumed.fit()
    resumed_metrics = resumed.evaluate()
    a, b = _weights(full.method), _weights(resumed.method)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed_metrics == full_metrics
    assert resumed.state.step == full.state.step


def test_resume_without_checkpoint_is_user_error(h5, tmp_path):
    trainer = Trainer(RunConfig(data=str(h5), out=str(tmp_path / "none"), resume=True, **SMALL))
    with pytest.raises(UserError, match="no checkpoint"):
        trainer.fit()


def test_resume_other_run_is_rejected(h5, tmp_path):
    out = str(tmp_path / "run")
    Trainer(RunConfig(data=str(h5), out=out, **{**SMALL, "epochs": 1})).fit()
    other = Trainer(RunConfig(data=str(h5), out=out, resume=True, seed=5, **{**SMALL, "epochs": 1}))
    with pytest.raises(UserError, match="different run"):
        other.fit()


def test_pretrained_full_checkpoint_and_au_mismatch(h5, tmp_path):
    out = tmp_path / "src"
    src = Trainer(RunConfig(data=str(h5), out=str(out), **{**SMALL, "epochs": 1}))
    src.fit()
    again = Trainer(RunConfig(data=str(h5), out=str(tmp_path / "dst"), pretrained=str(out / "last.pt"), **SMALL))
    for k, v in src.method.state_dict().items():
        assert torch.equal(again.method.state_dict()[k], v)
    labels = np.zeros((6 * 11, 5), dtype=np.int8)
    other = write_au_h5(tmp_path / "other.h5", num_subjects=6, sequence_lengths=(6, 5), image_size=(32, 32),
                        label_override=labels)
    import h5py
    with h5py.File(other, "a") as f:
        f.attrs["au_names"] = np.array(["AU1", "AU2", "AU4", "AU6", "AU25"], dtype=object)
    with pytest.raises(UserError, match="AU set mismatch"):
        Trainer(RunConfig(data=str(other), out=str(tmp_path / "x"), pretrained=str(out / "last.pt"), **SMALL))


def test_user_errors(h5, tmp_path):
    with pytest.raises(UserError, match="unknown method"):
        Trainer(RunConfig(data=str(h5), out=str(tmp_path), **{**SMALL, "method": "nope"}))
    with pytest.raises(UserError, match="out of range"):
        Trainer(RunConfig(data=str(h5), out=str(tmp_path), fold=4, **SMALL))
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    with pytest.raises(UserError, match="not a usable aubench dataset"):
        Trainer(RunConfig(data=str(bad), out=str(tmp_path), **SMALL))
    with pytest.raises(UserError, match="does not exist"):
        Trainer(RunConfig(data=str(h5), out=str(tmp_path), pretrained=str(tmp_path / "missing.pt"), **SMALL))


@pytest.mark.parametrize("channels_last", [False, True])
def test_ks_trains_on_every_sparse_clip_and_tests_every_frame(h5, tmp_path, channels_last):
    """The clip path end to end: every labeled key frame is trained on (clips shifted at sequence
    ends keep their own key position), uint8 batches are normalised by the engine, every test frame
    is scored."""
    config = RunConfig(data=str(h5), out=str(tmp_path), method="ks", preset="tiny", label_ratio=0.5,
                       image_size=32, batch_size=4, epochs=1, progress=False, device="cpu", log_every=1,
                       model={"backbone": "test_resnet", "backbone_kwargs": {}}, channels_last=channels_last)
    trainer = Trainer(config)
    dataset = trainer.train_dataset()
    from torch.utils.data import DistributedSampler
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
    batches = list(trainer.train_loader(dataset, sampler, 0))
    assert sum(len(b["key_position"]) for b in batches) == len(dataset) // 4 * 4  # drop_last only
    assert all(b["image"].dtype == torch.uint8 for b in batches)
    assert any(len(set(b["key_position"].tolist())) > 1 for b in batches)  # shifted clips stay in
    for b in batches:
        clip = torch.arange(len(b["key_position"]))
        assert b["labeled"][clip, b["key_position"]].all() and b["labeled"].sum() == len(clip)
        assert b["key_image"].shape == b["image"].shape[:1] + b["image"].shape[2:]   # branch A's view
    summary = trainer.fit()
    assert summary["steps"] == len(dataset) // 4
    assert summary["labels"]["realised_label_ratio"] == pytest.approx(0.5, abs=0.05)
    assert summary["initialisation"].startswith("random")
    metrics = trainer.evaluate()
    assert metrics["num_frames"] == len(trainer.data.test_rows())
    assert 0.0 <= metrics["mean_f1"] <= 1.0


@pytest.mark.parametrize("label_ratio", [0.2, 0.5, 1.0])
def test_class_weights_come_from_the_labels_the_run_may_see(h5, tmp_path, label_ratio):
    from aubench.data import AUFile, sparse_label_mask

    config = RunConfig(data=str(h5), out=str(tmp_path), label_ratio=label_ratio, **SMALL)
    trainer = Trainer(config)
    file = AUFile(h5)
    train = file.rows(1, "train")
    kept = file.labels[train[sparse_label_mask(file, label_ratio)[train]]]
    rate = (kept == 1).sum(0) / (kept >= 0).sum(0)
    weight = np.where(rate > 0, 1 / np.maximum(rate, 1e-12), 0)
    weight[rate == 0] = weight[rate > 0].max()
    np.testing.assert_allclose(trainer.method.class_weights.numpy(), weight / weight.mean(), rtol=1e-5)
    if label_ratio < 1:  # the sparse run's weights differ from the file's dense ones here
        assert not np.allclose(trainer.method.class_weights.numpy(), file.fold_stats(1)["class_weight"])
