"""RRL (aubench.models.rrl): AU attention maps, the three losses, the EMA target, the stages."""
from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch

from aubench.models.au_attention import AU_CENTRES, au_attention_maps, au_centres
from aubench.data import ViewAugment
from aubench.models.base import TrainState
from aubench.models.rrl import (RRL, RRLEncoder, _stage_preset, attention_pool, ema_momentum, local_loss,
                                relation_loss)
from aubench.ops import reference
from datasets_tools import face_render as fr
from datasets_tools.landmarks import MIRROR

BP4D = ["AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24"]
TINY = RRL.presets["tiny"]


def face_landmarks(size: int = 224, seed: int = 5) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    renderer = fr.FaceRenderer(fr.make_identity(rng), size, size, rng)
    _, points, _ = renderer.render(np.zeros(len(fr.RENDERED_AUS)), renderer.pose())
    return torch.tensor(points, dtype=torch.float32)[None]


# --------------------------------------------------------------------------- attention maps

@pytest.mark.parametrize("aus", [BP4D, ["AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU25", "AU26"]])
def test_attention_maps_peak_at_each_aus_landmark_centres(aus):
    landmarks = face_landmarks()
    maps = au_attention_maps(landmarks, aus, (224, 224), (14, 14))[0]
    centres = au_centres(landmarks, aus)[0]
    r = abs(float(landmarks[0, 39, 0] - landmarks[0, 42, 0]))
    for k, au in enumerate(aus):
        (i, j), shift = AU_CENTRES[au]
        for c in range(2):   # each centre is the landmark moved by shift x r, and its cell is warm
            expected = landmarks[0, (i, j)[c]] + torch.tensor([0.0, shift * r])
            torch.testing.assert_close(centres[k, c], expected)
            x, y = (int(v) // 16 for v in centres[k, c])
            assert maps[k, y, x] > 0.3, (au, c, float(maps[k, y, x]))
        # the map's peak cell (16 px) is within a cell and a half of one of the centres
        y, x = divmod(int(maps[k].argmax()), 14)
        peak = torch.tensor([x * 16 + 7.5, y * 16 + 7.5])
        assert torch.cdist(peak[None], centres[k]).min() < 24, au
        # far from both centres (more than 2.5 r away) the map is cold
        cells = torch.stack(torch.meshgrid(torch.arange(14.0), torch.arange(14.0), indexing="xy"), -1) * 16 + 7.5
        far = (torch.cdist(cells.view(-1, 2), centres[k]).min(dim=1).values > 2.5 * r).view(14, 14)
        assert maps[k][far].max() < 0.05, au
    assert maps.max() == 1.0 and maps.min() >= 0.0


def test_attention_maps_move_with_a_flipped_view():
    landmarks = face_landmarks()
    flipped = landmarks.clone()
    flipped[..., 0] = 223 - flipped[..., 0]
    flipped = flipped[:, list(MIRROR)]
    maps = au_attention_maps(landmarks, BP4D, (224, 224), (14, 14))
    maps_of_flipped = au_attention_maps(flipped, BP4D, (224, 224), (14, 14))
    torch.testing.assert_close(maps_of_flipped, maps.flip(-1), atol=1e-5, rtol=0)


def test_attention_maps_without_landmarks_are_uniform_and_unknown_aus_are_named():
    missing = torch.full((1, 68, 2), float("nan"))
    assert torch.equal(au_attention_maps(missing, ["AU1"], (64, 64), (4, 4)), torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="no AU attention centres for AU5, AU20"):
        au_attention_maps(missing, ["AU1", "AU5", "AU20"], (64, 64), (4, 4))


# -------------------------------------------------------------------------------- losses

def test_local_loss_is_eq3_by_hand():
    pred_local = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])      # B = 1, K = 2, D = 2
    target_local = torch.tensor([[[1.0, 1.0], [0.0, -1.0]]])
    pred_global = torch.tensor([[1.0, 0.0]])
    s = 1 / math.sqrt(2)
    # k = 1: cos((1,0),(1,1)) = s, cos((1,1),(1,0)) = s; k = 2: cos((0,1),(0,-1)) = -1, cos((0,-1),(1,0)) = 0
    by_hand = -(s + s + (-1) + 0) / (2 * 2)
    assert local_loss(pred_local, target_local, pred_global).item() == pytest.approx(by_hand, rel=1e-6)


def test_relation_loss_is_eq6_with_the_reference_plan():
    torch.manual_seed(0)
    b, k, c = 3, 4, 5
    o_loc, t_loc = torch.randn(b, k, c), torch.randn(b, k, c)
    o_g, t_g = torch.randn(b, c), torch.randn(b, c)
    cooccurrence = torch.rand(k, k)
    cost = 1 - cooccurrence
    loss, plan = relation_loss(o_loc, t_loc, o_g, t_g, cost, eps=0.05, max_iter=200)
    a = torch.relu((o_loc * t_g[:, None]).sum(-1))
    bb = torch.relu((t_loc * o_g[:, None]).sum(-1))
    expected_plan = reference.sinkhorn(cost.expand(b, k, k), a, bb, eps=0.05, max_iter=200, tol=1e-6)
    torch.testing.assert_close(plan, expected_plan, atol=1e-6, rtol=1e-5)
    cos = torch.nn.functional.cosine_similarity(o_loc[:, :, None], t_loc[:, None], dim=-1)
    assert loss.item() == pytest.approx(-(cos * expected_plan).sum(dim=(1, 2)).mean().item(), rel=1e-5)
    # a tiny case by hand: one AU pair with all the mass, cos = 1 -> loss -1
    one = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    loss1, plan1 = relation_loss(one, one, torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]),
                                 torch.zeros(2, 2), eps=0.05, max_iter=100)
    assert plan1[0, 0, 0].item() == pytest.approx(1.0, abs=1e-6) and loss1.item() == pytest.approx(-1.0, abs=1e-6)


def test_the_plan_is_differentiated_or_detached_as_set():
    torch.manual_seed(1)   # positive features: every marginal entry carries mass
    o_loc = torch.rand(2, 3, 4, requires_grad=True)
    t_loc, o_g, t_g = torch.rand(2, 3, 4), torch.rand(2, 4), torch.rand(2, 4)
    cost = torch.rand(3, 3)
    grads = []
    for through in (True, False):
        loss, _ = relation_loss(o_loc, t_loc, o_g, t_g, cost, 0.05, 100, plan_gradient=through)
        grads.append(torch.autograd.grad(loss, o_loc)[0])
    assert not torch.allclose(grads[0], grads[1])   # the marginals' path only exists through the plan


def test_ema_schedule_rises_from_the_start_to_one():
    assert ema_momentum(0, 100, 0.98) == pytest.approx(0.98)
    assert ema_momentum(50, 100, 0.98) == pytest.approx(0.99)
    assert ema_momentum(100, 100, 0.98) == pytest.approx(1.0)
    values = [ema_momentum(s, 100, 0.98) for s in range(101)]
    assert all(b >= a for a, b in zip(values, values[1:]))


# ------------------------------------------------------------------------------- the method

def pretrain_method(losses=None):
    preset = _stage_preset(TINY, "pretrain")
    if losses is not None:
        preset = type(preset)(**{**preset.__dict__, "model": {**preset.model, "losses": losses}})
    torch.manual_seed(0)
    method = RRL(12, preset)
    method.set_training_data(BP4D, {"cooccurrence": np.eye(12) * 0.5 + 0.25})
    return method


def view_batch(size: int = 64, frames: int = 4):
    g = torch.Generator().manual_seed(0)
    landmarks = face_landmarks(size).expand(frames, -1, -1).clone()
    return {"image": torch.randn(frames, 3, size, size, generator=g), "image2": torch.randn(frames, 3, size, size,
                                                                                             generator=g),
            "landmarks": landmarks, "landmarks2": landmarks.clone(), "index": torch.arange(frames)}


def test_pretraining_trains_the_online_network_only_and_the_target_follows_by_ema():
    method = pretrain_method().train()
    out = method.training_step(view_batch(), TrainState(total_steps=10))
    assert set(out) == {"loss", "global", "local", "relation"}
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in method.target.parameters())
    assert all(p.grad is not None for p in method.predictor.parameters())
    before = [p.clone() for p in method.target.parameters()]
    with torch.no_grad():
        for p in method.online.parameters():
            p.add_(1.0)
    method.on_step_end(TrainState(step=5, total_steps=10))
    m = ema_momentum(5, 10, 0.98)
    for new, old, online in zip(method.target.parameters(), before, method.online.parameters()):
        torch.testing.assert_close(new, m * old + (1 - m) * online)


def test_loss_ablations_keep_the_terms_they_name():
    for losses in (["global"], ["global", "local"], ["global", "relation"]):
        out = pretrain_method(losses).train().training_step(view_batch(), TrainState(total_steps=10))
        assert set(out) == {"loss", *losses}
    with pytest.raises(ValueError, match="losses must hold 'global'"):
        pretrain_method(["local"])


def test_stages_pretrain_without_labels_then_probe_the_frozen_encoder():
    stages = RRL.stages(TINY)
    assert [s.name for s in stages] == ["pretrain", "probe"]
    assert not stages[0].uses_labels and stages[0].pretraining and not stages[0].occluded
    assert stages[1].frozen == ("encoder",) and stages[1].init_from == "pretrain"
    assert stages[0].preset.weight_decay == 0.04 and stages[0].preset.weight_decay_end == 0.4
    paper = RRL.stages(RRL.presets["paper"])[0].preset
    assert paper.lr == pytest.approx(0.05 * paper.batch_size / 256) and paper.model["hidden"] == 4096
    assert paper.model["loss_weights"] == {"global": 0.4, "local": 0.6, "relation": 1.0}
    probe = RRL(12, stages[1].preset)
    assert isinstance(probe.head[0], torch.nn.BatchNorm1d) and probe.head[1].bias is None


def probe_method(preset, **model):
    """A probe-stage method of `preset` with model settings overridden, AU names and rates set."""
    preset = _stage_preset(type(preset)(**{**preset.__dict__, "model": {**preset.model, **model}}), "probe")
    torch.manual_seed(0)
    method = RRL(12, preset)
    method.set_training_data(BP4D, {"cooccurrence": np.eye(12), "au_rate": np.full(12, 0.2)})
    return method


@pytest.mark.parametrize("variant", ["global", "global+local", "global+relation", None])
def test_the_probe_reads_its_probe_input_in_every_loss_ablation(variant):
    losses = RRL.variants[variant] if variant else {}
    batch = view_batch()
    for probe_input, aus in (("global", 0), ("global+au", 12)):
        probe = probe_method(TINY, **losses, probe_input=probe_input).eval()
        dim = probe.encoder.dim
        assert probe.head[1].in_features == dim * (1 + aus) and probe.uses_landmarks == bool(aus)
        with torch.no_grad():
            features = probe._probe_input(batch if aus else {"image": batch["image"]})   # o_g needs no landmarks
            global_vector, local_map = probe.encoder(batch["image"])
        assert features.shape == (4, dim * (1 + aus))
        torch.testing.assert_close(features[:, :dim], global_vector)
        if aus:   # then the K AU vectors, the local map pooled under each AU's attention map
            maps = au_attention_maps(batch["landmarks"], BP4D, (64, 64), tuple(local_map.shape[-2:]))
            torch.testing.assert_close(features[:, dim:], attention_pool(local_map, maps).flatten(1))


def test_the_global_vector_is_timms_pooled_features_with_the_final_norm():
    """o_g is what timm's model without a classifier returns: for Swin its final LayerNorm
    (forward_features) then the average; for a ResNet the average of the last map."""
    small_swin = dict(img_size=64, window_size=4, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for name, kwargs in (("swin_tiny_patch4_window7_224", small_swin), ("resnet18", TINY.model["encoder_kwargs"])):
        encoder = RRLEncoder(name, None, -2, **kwargs).eval()
        reference = timm.create_model(name, num_classes=0, **kwargs).eval()
        reference.load_state_dict(encoder.backbone.state_dict())
        with torch.no_grad():
            global_vector, _ = encoder(images)
            features = reference.forward_features(images)
            torch.testing.assert_close(global_vector, reference(images))
            torch.testing.assert_close(encoder.global_vector(images), global_vector)
        if name.startswith("swin"):   # (B, h, w, C) after the final norm: the norm is in o_g
            last_stage = reference.layers(reference.patch_embed(images))
            torch.testing.assert_close(global_vector, features.mean(dim=(1, 2)))
            assert not torch.allclose(global_vector, last_stage.mean(dim=(1, 2)), atol=1e-3)
        else:
            torch.testing.assert_close(global_vector, features.mean(dim=(2, 3)))


def test_the_paper_probe_uses_plain_cross_entropy_and_balanced_is_a_variant():
    assert RRL.presets["paper"].model["probe_weighting"] == "none"
    assert TINY.model["probe_weighting"] == "balanced"
    assert RRL.variants["balanced-probe"] == {"probe_weighting": "balanced"}
    batch = {**view_batch(), "label": torch.tensor([[1.0, 0.0, -1.0] * 4] * 4)}
    known = batch["label"] >= 0
    for weighting, pos_weight in (("none", None), ("balanced", torch.full((12,), 0.8 / 0.2))):
        probe = probe_method(TINY, probe_weighting=weighting).train()
        loss = probe.training_step(batch, TrainState())["loss"]
        logits = probe.head(probe._probe_input(batch))
        expected = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, batch["label"].clamp(min=0), pos_weight=pos_weight, reduction="none")[known].mean()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5), weighting


# ----------------------------------------------------------------------- through the engine

import json  # noqa: E402
from pathlib import Path  # noqa: E402

from aubench.engine.checkpoint import load_checkpoint  # noqa: E402
from aubench.engine.config import RunConfig  # noqa: E402
from aubench.engine.data_access import open_pretrain_data, open_run_data  # noqa: E402
from aubench.engine.evaluate import EvaluateRequest, evaluate_runs  # noqa: E402
from aubench.engine.optim import schedule_weight_decay  # noqa: E402
from aubench.engine.trainer import Trainer  # noqa: E402
from aubench.errors import UserError  # noqa: E402
from fixtures_h5 import AU_NAMES, write_au_h5  # noqa: E402
from test_stages import assert_same, kill_inside, resumed_run, trained_once  # noqa: E402

# tiny at 64 px, batch 8, 2 pre-training epochs of 11 steps, a 2-epoch probe
RUN = dict(method="rrl", preset="tiny", batch_size=8, epochs=2, progress=False, device="cpu", log_every=1,
           model={"probe_epochs": 2})


def landmark_h5(path, seed: int = 0, subjects: int = 6):
    """A fixture file (32 px frames) whose frames carry a rendered face's 68 points, jittered."""
    n = subjects * (7 + 12 + 3)
    rng = np.random.default_rng(seed)
    points = face_landmarks(32).numpy()[0] + rng.normal(0, 0.3, (n, 68, 2)).astype(np.float32)
    return write_au_h5(path, schema_version=2, landmarks=points, num_subjects=subjects, seed=seed)


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    return landmark_h5(tmp_path_factory.mktemp("rrl") / "au.h5")


@pytest.fixture(scope="module")
def uninterrupted(h5, tmp_path_factory):
    return trained_once(h5, tmp_path_factory.mktemp("full") / "run", RUN)


def test_the_probe_leaves_the_pretrained_encoder_unchanged(uninterrupted):
    assert [r["name"] for r in uninterrupted.records] == ["pretrain", "probe"]
    pretrained = load_checkpoint(Path(uninterrupted.config.out) / "final_pretrain.pt")["model"]
    probe = uninterrupted.method
    assert not probe.encoder.training and not any(p.requires_grad for p in probe.encoder.parameters())
    for key, value in probe.encoder.state_dict().items():   # BatchNorm statistics included
        assert torch.equal(value, pretrained[f"online.encoder.{key}"]), key
    result = uninterrupted.evaluate()
    assert 0 <= result["mean_f1"] <= 1 and result["au_names"] == list(AU_NAMES)


def test_pretraining_resumes_bit_identical_after_a_kill(h5, tmp_path, uninterrupted):
    out = tmp_path / "run"
    config = dict(data=str(h5), out=str(out), checkpoint_every=1, **RUN)
    saved = kill_inside(config, "pretrain", 5)
    assert saved["stage"]["name"] == "pretrain" and saved["train_state"]["step"] == 5
    resumed = resumed_run(config)
    assert_same(uninterrupted.method.state_dict(), resumed.method.state_dict())
    assert [r["final_losses"] for r in resumed.records] == [r["final_losses"] for r in uninterrupted.records]


def test_weight_decay_rises_on_a_cosine_through_pretraining(h5, tmp_path):
    trainer = Trainer(RunConfig(data=str(h5), out=str(tmp_path / "run"), **RUN))
    optimizer = torch.optim.AdamW(trainer.method.parameters(), lr=1e-3, weight_decay=0.04)
    decays = []
    for step in (0, 5, 10):
        schedule_weight_decay(optimizer, trainer.stage.preset, step, 11)
        decays.append(optimizer.param_groups[0]["weight_decay"])
    assert decays[0] == pytest.approx(0.04) and decays[2] == pytest.approx(0.4)
    assert decays[1] == pytest.approx(0.04 + (0.4 - 0.04) * (1 - math.cos(math.pi * 0.5)) / 2)


def test_two_views_carry_their_own_draws_and_landmarks(h5):
    data = open_run_data(h5, 1)
    method = pretrain_method()
    dataset = data.train_dataset("frame", _stage_preset(TINY, "pretrain"), 1.0, augment=method.train_augment(),
                                 labeled_only=False, landmarks=True, views=2)
    item = dataset[0]
    assert item["image"].shape == item["image2"].shape == (3, 64, 64)
    assert item["landmarks"].shape == item["landmarks2"].shape == (68, 2)
    assert not torch.equal(item["image"], item["image2"])
    # Table 4's "no augmentation": both views are the frame as it is
    plain = RRL.variants["no-augment"]["views"]
    dataset = data.train_dataset("frame", _stage_preset(TINY, "pretrain"), 1.0,
                                 augment=tuple(ViewAugment(**view) for view in plain), labeled_only=False,
                                 landmarks=True, views=2)
    unaugmented = data.train_dataset("frame", _stage_preset(TINY, "pretrain"), 1.0, augment=False,
                                     labeled_only=False, landmarks=True)
    for index in (0, 5):
        item = dataset[index]
        assert torch.equal(item["image"], item["image2"]) and torch.equal(item["image"], unaugmented[index]["image"])
        assert torch.equal(item["landmarks"], item["landmarks2"])


def test_pretrain_data_is_the_folds_training_frames_or_another_file_without_its_test_subjects(h5, tmp_path):
    run = open_run_data(h5, 1)
    own = open_pretrain_data(h5, run)
    assert (own.fold, own.split) == (1, "train")
    other = landmark_h5(tmp_path / "other.h5", seed=1)   # other frames, the same subject names, same dataset
    with pytest.raises(UserError, match=r"other\.h5: holds 2 of fold 1's test subjects"):
        open_pretrain_data(other, run)
    strangers = landmark_h5(tmp_path / "strangers.h5", seed=2, subjects=8)
    import h5py
    with h5py.File(strangers, "r+") as f:   # a collection of unlabeled faces of other people
        f.attrs["dataset"] = "images"
    assert (open_pretrain_data(strangers, run).fold, open_pretrain_data(strangers, run).split) == (None, "all")
    trainer = Trainer(RunConfig(data=str(h5), out=str(tmp_path / "run"), pretrain_data=str(strangers), **RUN))
    assert len(trainer.train_dataset()) == 8 * 22   # every frame of the other file
    assert trainer.identity["pretrain_fingerprint"] == open_pretrain_data(strangers, run).fingerprint
    with pytest.raises(UserError, match="--pretrain-data: resnet has no pre-training stage"):
        Trainer(RunConfig(data=str(h5), out=str(tmp_path / "r2"), method="resnet", pretrain_data=str(strangers)))


def test_evaluate_runs_named_variants_as_their_own_rows(h5, tmp_path):
    request = EvaluateRequest(methods=["rrl:global"], run=RunConfig(method="", data=str(h5), **{
        k: v for k, v in RUN.items() if k != "method"}), out=str(tmp_path / "ev"), folds=[1], bench_batch_size=2)
    paths = evaluate_runs(request)
    result = json.loads(paths[0].read_text())
    assert result["method"] == "rrl:global" and result["preset"]["model"]["losses"] == ["global"]
    assert result["preset"]["model"]["probe_input"] == "global+au"   # a loss ablation keeps the run's probe input
    assert result["protocol"] == "full+linear-probe"   # the leaderboard's section of self-supervised probes
    assert paths[0].name == "rrl:global_fold1_full.json"
    with pytest.raises(UserError, match="method 'rrl' has no variant 'best'; its variants: rrl:global"):
        evaluate_runs(EvaluateRequest(methods=["rrl:best"], run=request.run, out=str(tmp_path / "x")))


def test_an_au_never_seen_positive_keeps_its_own_vector_cheapest():
    method = pretrain_method()
    cooccurrence = np.full((12, 12), 0.3)
    np.fill_diagonal(cooccurrence, 1.0)
    cooccurrence[4] = 0.0   # AU7 never positive in the visible labels: the statistic's row is 0
    method.set_training_data(BP4D, {"cooccurrence": cooccurrence})
    assert torch.diagonal(method.cost).abs().max() == 0
    assert torch.allclose(method.cost[4, :4], torch.ones(4))


@pytest.mark.parametrize("rows,cols,out", [(64, 64, (16, 16)), (56, 56, (14, 14)), (60, 48, (7, 5))])
def test_smoothing_and_pooling_matrices_equal_a_replicate_padded_blur_then_area_pooling(rows, cols, out):
    from aubench.models.au_attention import smooth_and_pool_matrix

    sigma = 3 / 224 * max(rows, cols)
    radius = max(1, math.ceil(3 * sigma))
    kernel = torch.exp(-torch.arange(-radius, radius + 1.0) ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    maps = (torch.rand(2, 3, rows, cols, generator=torch.Generator().manual_seed(1)) > 0.7).float()
    flat = maps.reshape(-1, 1, rows, cols)
    flat = torch.nn.functional.conv2d(torch.nn.functional.pad(flat, (radius, radius, 0, 0), mode="replicate"),
                                      kernel.view(1, 1, 1, -1))
    flat = torch.nn.functional.conv2d(torch.nn.functional.pad(flat, (0, 0, radius, radius), mode="replicate"),
                                      kernel.view(1, 1, -1, 1))
    expected = torch.nn.functional.adaptive_avg_pool2d(flat.reshape(maps.shape), out)
    got = smooth_and_pool_matrix(rows, out[0], sigma) @ maps @ smooth_and_pool_matrix(cols, out[1], sigma).T
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
