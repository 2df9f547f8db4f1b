"""RegNetY + ViViT and its ensemble partner: token shapes, the frozen first RegNet stage, Robin Hood
label smoothing, the focal loss on known labels, training windows and the warm-restart schedule."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from aubench.cli import main
from aubench.data import AUFile, ClipDataset
from aubench.engine.optim import lr_factor
from aubench.models import create_method
from aubench.models.regnet_video import RegNetEmbedding, focal_loss_on_known, robin_hood_targets
from fixtures_h5 import write_au_h5


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    return write_au_h5(tmp_path_factory.mktemp("vivit") / "tiny.h5", num_subjects=6, sequence_lengths=(11, 5))


def test_tokens_through_the_factorised_encoder():
    method = create_method("vivit", num_aus=5, preset="tiny").eval()
    net = method.net
    windows = torch.randn(2, 8, 3, 64, 64)
    features = net.embedding(windows.flatten(0, 1))
    assert features.shape == (16, net.embedding.num_features, 2, 2)       # a 2 x 2 map at 64 px
    tokens = net.tubelet(features).flatten(2).transpose(1, 2)
    assert tokens.shape == (16, 4, 64) and net.num_tokens == 4               # one token per map cell
    assert net.frame_embeddings(windows).shape == (2, 8, 64)                 # spatial encoder: one per frame
    assert net(windows).shape == (2, 8, 5)                                   # temporal encoder + head: per frame
    # frame-wise: a frame's output depends on the other frames of its window (temporal attention)
    changed = windows.clone()
    changed[:, 0] = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(net(windows)[:, 5], net(changed)[:, 5])
    with pytest.raises(ValueError, match="at most 8"):
        net(torch.randn(1, 9, 3, 64, 64))


def test_paper_embedding_is_regnety_400mf_with_440_channels_on_a_4x4_map():
    embedding = RegNetEmbedding("regnety_004").eval()
    assert embedding(torch.zeros(1, 3, 112, 112)).shape == (1, 440, 4, 4)   # Section 4.2's B x T x 440 x 4 x 4
    with pytest.raises(ValueError, match="needs a timm RegNet"):
        RegNetEmbedding("resnet18")


def test_robin_hood_smoothing_against_hand_values():
    """Eq. 3-4 with beta 0.2: a majority-negative AU (f = 0.2) gets negatives at alpha^-/2 =
    0.2 * (0.6 / 0.8) / 2 = 0.075, positives untouched; a majority-positive one (f = 0.8)
    positives at 1 - 0.075 = 0.925, negatives untouched; f = 0.5 is left as it is."""
    labels = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    targets = robin_hood_targets(labels, torch.tensor([0.2, 0.8, 0.5]), beta=0.2)
    assert torch.allclose(targets, torch.tensor([[0.075, 0.0, 0.0], [1.0, 0.925, 1.0]]))
    extreme = robin_hood_targets(labels, torch.tensor([0.0, 1.0, 0.5]), beta=1.0)  # never seen / always on
    assert torch.allclose(extreme, torch.tensor([[0.5, 0.0, 0.0], [1.0, 0.5, 1.0]]))


def test_focal_loss_ignores_unknown_labels():
    logits = torch.randn(2, 4, 3)
    labels = torch.tensor([[[1, 0, -1]] * 4, [[-1, -1, 0]] * 4], dtype=torch.float32)
    targets = labels.clamp(min=0)
    loss = focal_loss_on_known(logits, labels, targets, alpha=-1, gamma=2.0)
    known = labels >= 0
    expected = sigmoid_focal_loss(logits[known], targets[known], alpha=-1, gamma=2.0, reduction="mean")
    assert torch.allclose(loss, expected)
    moved = logits.clone()
    moved[~known] += 10.0  # whatever the model says where no label is known changes nothing
    assert torch.equal(focal_loss_on_known(moved, labels, targets, -1, 2.0), loss)
    assert focal_loss_on_known(logits, torch.full_like(labels, -1), targets, -1, 2.0) == 0


def test_training_windows_tile_the_sequences_with_every_visible_label(h5):
    file = AUFile(h5)
    windows = ClipDataset(h5, 1, "train", clip_len=4, label_ratio=0.5, windows=True)
    seen = {}
    for i in range(len(windows)):
        item = windows[i]
        rows, labels, labeled = item["index"].numpy(), item["label"].numpy(), item["labeled"].numpy()
        assert labeled.any()  # windows without a visible label are left out
        first = np.r_[True, rows[1:] != rows[:-1]]
        assert np.all(labels[~first] == -1) and not labeled[~first].any()  # a repeated frame counts once
        for row, label, shown in zip(rows[first], labels[first], labeled[first]):
            if shown:  # the file's labels (its own -1s included)
                assert np.array_equal(label, file.labels[row].astype(np.float32))
                seen[row] = seen.get(row, 0) + 1
            else:  # a label the protocol hides never reaches training
                assert np.all(label == -1)
        assert len(set(file.frame_sequence[rows])) == 1  # one sequence per window
    visible = windows.rows[windows.labeled_mask[windows.rows]]
    assert set(visible) == set(seen)  # every frame with a visible label is in a window
    # every label visible: the 11-frame sequences' windows start at 0, 4 and 7, so frame 7 is in
    # two windows and its label counts in both (documented in ClipDataset); no other label twice
    full = ClipDataset(h5, 1, "train", clip_len=4, windows=True)
    items = [full[i] for i in range(len(full))]
    counted = np.concatenate([item["index"].numpy()[item["labeled"].numpy()] for item in items])
    assert set(counted) == set(full.rows)
    twice = {int(row) for row, count in zip(*np.unique(counted, return_counts=True)) if count == 2}
    assert len(counted) == len(full.rows) + len(twice) and twice
    starts = file.sequences["start"][file.frame_sequence[sorted(twice)]]
    lengths = file.sequences["length"][file.frame_sequence[sorted(twice)]]
    positions = np.asarray(sorted(twice)) - starts
    assert np.all(positions >= lengths - 4)  # only frames of a sequence's last window count twice
    test = ClipDataset(h5, 1, "test", clip_len=4)
    covered = np.unique(np.concatenate([test[i]["index"].numpy() for i in range(len(test))]))
    assert np.array_equal(covered, file.rows(1, "test"))  # the test windows cover every test frame


@pytest.mark.parametrize("name", ["vivit", "regnet-tf"])
def test_first_regnet_stage_stays_frozen_while_the_rest_trains(name):
    from aubench.engine.optim import build_optimizer

    torch.manual_seed(0)
    # frozen as with ImageNet weights (without them "auto" freezes nothing)
    method = create_method(name, num_aus=5, preset="tiny", freeze_first_stage=True)
    method.train()
    state = {k: v.clone() for k, v in method.state_dict().items()}
    optimizer = build_optimizer(method, method.preset)
    for _ in range(3):
        batch = {"image": torch.randn(2, 8, 3, 64, 64), "label": torch.randint(0, 2, (2, 8, 5)).float()}
        optimizer.zero_grad()
        method.training_step(batch, None)["loss"].backward()
        optimizer.step()
    after = method.state_dict()
    frozen = [k for k in state if k.startswith(("net.embedding.net.stem.", "net.embedding.net.s1."))]
    later = [k for k in state if k.startswith("net.embedding.net.s3.") and k.endswith("conv.weight")]
    assert frozen and later
    assert all(torch.equal(after[k], state[k]) for k in frozen)  # weights and batch-norm statistics
    assert all(not torch.equal(after[k], state[k]) for k in later)
    assert not create_method(name, num_aus=5, preset="tiny").net.embedding.frozen  # random weights: none frozen
    assert not any(k.startswith("net.embedding.frozen") for k in state)  # each tensor saved once


def test_regnet_tf_gives_per_frame_outputs_and_trains(h5, tmp_path):
    method = create_method("regnet-tf", num_aus=5, preset="tiny").eval()
    assert method.net(torch.randn(2, 8, 3, 64, 64)).shape == (2, 8, 5)
    assert main(["evaluate", "--methods", "vivit,regnet-tf", "--data", str(h5), "--folds", "1", "--out",
                 str(tmp_path / "ev"), "--epochs", "1", "--batch-size", "2", "--image-size", "32", "--device", "cpu",
                 "--no-progress", "--smooth", "gaussian:51:3.0"]) == 0
    assert main(["ensemble", str(tmp_path / "ev"), "--methods", "vivit,regnet-tf", "--name", "vivit+regnet-tf",
                 "--out", str(tmp_path / "ens"), "--smooth", "gaussian:51:3.0"]) == 0
    names = sorted(p.name for p in (tmp_path / "ens" / "results").glob("*.json"))
    assert names == ["vivit+regnet-tf_fold1_full.json", "vivit+regnet-tf_fold1_full_smooth-gaussian-k51-s3.json"]


def test_warm_restart_schedule():
    values = [lr_factor(step, 100, 0, "sgdr:4") for step in range(101)]
    assert values[0] == 1.0 and values[25] == 1.0 and values[50] == 1.0      # a restart every quarter
    assert math.isclose(values[12], 0.5 * (1 + math.cos(math.pi * 0.48)))
    assert values[24] < 0.01 and values[100] == 0.0
    with pytest.raises(Exception, match="sgdr:<cycles>"):
        lr_factor(0, 100, 0, "sgdr:0")
