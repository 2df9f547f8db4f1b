"""Knowledge-Spreader: losses against hand-computed values, training behaviour, presets."""
import math

import pytest
import torch

from aubench.models import TrainState, create_method
from aubench.models.knowledge_spreader import (bernoulli_kl, gaussian_rampup, pseudo_labels, semi_loss,
                                               spatial_kd_loss, temporal_kd_loss, total_loss, weighted_bce)

LN3 = math.log(3.0)
U, N = 4, 5  # AUs and clip length of the small models below


def clip_batch(batch=4, size=32, key=2, seed=0):
    """A collated clip batch as the data layer makes it: only the key frame is labeled."""
    g = torch.Generator().manual_seed(seed)
    label = torch.full((batch, N, U), -1.0)
    label[:, key] = (torch.rand(batch, U, generator=g) > 0.5).float()
    labeled = torch.zeros(batch, N, dtype=torch.bool)
    labeled[:, key] = True
    return {"image": torch.randn(batch, N, 3, size, size, generator=g), "label": label,
            "labeled": labeled, "key_position": torch.full((batch,), key, dtype=torch.long),
            "index": torch.arange(batch * N).view(batch, N)}


def tiny_ks(**overrides):
    torch.manual_seed(0)
    return create_method("ks", U, "tiny", class_weights=torch.tensor([1.0, 2.0, 0.5, 1.5]), **overrides)


# ---------------------------------------------------------------------------- Eq. 9 ramp-up

def test_gaussian_rampup_matches_hand_values():
    # exp(-2 (1 - t/5)^2) for t = 0..5, then 1.
    expected = [0.1353352832, 0.2780373005, 0.4867522560, 0.7261490371, 0.9231163464, 1.0, 1.0, 1.0]
    for epoch, value in enumerate(expected):
        assert gaussian_rampup(epoch) == pytest.approx(value, abs=1e-9)
    assert gaussian_rampup(2.5) == pytest.approx(math.exp(-0.5), abs=1e-12)
    assert gaussian_rampup(1, mu=1) == pytest.approx(math.exp(-2))   # flat until mu
    assert gaussian_rampup(3, omega=5, sigma=2) == 1.0
    with pytest.raises(ValueError, match="sigma"):
        gaussian_rampup(1, sigma=0)


# ---------------------------------------------------------------------------- losses

def test_weighted_bce_eq3():
    logits = torch.tensor([[0.0, LN3], [5.0, LN3]])   # p = 0.5, 0.75 | -, 0.75
    target = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])   # -1 unknown
    weights = torch.tensor([2.0, 1.0])
    terms = [2 * math.log(2), math.log(4), math.log(4 / 3)]
    assert weighted_bce(logits, target, weights).item() == pytest.approx(sum(terms) / 3, rel=1e-6)
    mask = torch.tensor([True, False])                  # frames: only row 0
    assert weighted_bce(logits, target, weights, mask).item() == pytest.approx(sum(terms[:2]) / 2, rel=1e-6)
    assert weighted_bce(logits, torch.full_like(target, -1), weights).item() == 0.0


def test_spatial_kd_eq2_pulls_student_to_mean_of_teacher_and_student():
    student = torch.tensor([[0.0]], requires_grad=True)   # p = 0.5
    teacher = torch.tensor([[LN3]], requires_grad=True)   # p = 0.75 -> target 0.625
    loss = spatial_kd_loss(student, teacher)
    q = 0.625
    assert loss.item() == pytest.approx(q * math.log(q / 0.5) + (1 - q) * math.log((1 - q) / 0.5), rel=1e-6)
    loss.backward()
    assert student.grad.item() == pytest.approx(0.5 - q)   # d KL / dz = sigmoid(z) - q
    assert teacher.grad is None or teacher.grad.abs().sum() == 0
    # Temperature: T^2 KL of the softened probabilities.
    softened = spatial_kd_loss(torch.tensor([[0.0]]), torch.tensor([[2 * LN3]]), temperature=2.0)
    assert softened.item() == pytest.approx(4 * loss.item(), rel=1e-6)


def test_bernoulli_kl_is_zero_at_match_and_handles_hard_targets():
    logits = torch.tensor([-2.0, 0.0, 3.0])
    assert bernoulli_kl(torch.sigmoid(logits), logits).abs().max() < 1e-6
    hard = bernoulli_kl(torch.tensor([1.0, 0.0, 1.0]), logits)
    assert torch.allclose(hard, torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.tensor([1.0, 0.0, 1.0]), reduction="none"))


def test_pseudo_labels_eq4_and_semi_loss_eq5():
    students = torch.tensor([[[-1.0, 2.0], [0.5, -0.1]]])   # (B=1, n=2, U=2)
    pseudo = pseudo_labels(students)
    assert pseudo.tolist() == [[[0.0, 1.0], [1.0, 0.0]]]
    temporal = torch.tensor([[[0.0, LN3], [LN3, 0.0]]])
    weights = torch.tensor([1.0, 3.0])
    unlabeled = torch.tensor([[True, False]])             # frame 1 is the key frame
    # frame 0: AU0 p=0.5, y=0 (w 1) -> ln2; AU1 p=0.75, y=1 (w 3) -> 3 ln(4/3)
    expected = (math.log(2) + 3 * math.log(4 / 3)) / 2
    assert semi_loss(temporal, pseudo, weights, unlabeled).item() == pytest.approx(expected, rel=1e-6)
    assert semi_loss(temporal, pseudo, weights, torch.zeros(1, 2, dtype=torch.bool)).item() == 0.0


def test_temporal_kd_eq6_teaches_spatial_only():
    spatial = torch.tensor([[[0.0]]], requires_grad=True)
    temporal = torch.tensor([[[LN3]]], requires_grad=True)
    loss = temporal_kd_loss(spatial, temporal)
    assert loss.item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-6)
    loss.backward()
    assert spatial.grad.item() == pytest.approx(0.5 - 0.75)
    assert temporal.grad is None or temporal.grad.abs().sum() == 0


def test_total_loss_eq8():
    parts = [torch.tensor(v) for v in (1.0, 2.0, 3.0, 4.0, 0.5)]
    # 1 + 0.5*2 + 0.5*(3 + 0.5*4) + 0.5
    assert total_loss(*parts, ramp=0.5).item() == pytest.approx(5.0)
    assert total_loss(*parts, ramp=1.0, kd_weight=1.0, tkd_weight=0.0).item() == pytest.approx(6.5)


# ---------------------------------------------------------------------------- training

def test_training_steps_lower_the_loss():
    model = tiny_ks(dropout=0.0)
    batch = clip_batch(size=32)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    state = TrainState(epoch=5, epochs=6)
    losses = []
    for _ in range(8):
        out = model.training_step(batch, state)
        optimiser.zero_grad()
        out["loss"].backward()
        optimiser.step()
        losses.append(out["loss"].item())
        assert set(out) >= {"loss", "sup", "kd", "semi", "tkd", "perturb"}
    assert all(math.isfinite(v) for v in losses)
    assert min(losses[-2:]) < 0.8 * losses[0], losses


@pytest.mark.parametrize("real_order_logit, epoch, kept", [
    (-50.0, 1, True),    # before the gate epoch every clip's pseudo-labels are used
    (-50.0, 2, False),   # from epoch 2 clips judged shuffled lose them
    (50.0, 2, True),     # clips judged real keep them
])
def test_pseudo_labels_are_gated_by_the_classifier_from_epoch_2(real_order_logit, epoch, kept):
    model = tiny_ks()
    with torch.no_grad():
        model.perturbation.out.weight.zero_()
        model.perturbation.out.bias.fill_(real_order_logit)
    out = model.training_step(clip_batch(), TrainState(epoch=epoch, epochs=6))
    assert out["kept_clips"].item() == (1.0 if kept else 0.0)
    assert (out["semi"].item() > 0) == kept


def test_perturbation_classifier_learns_from_the_first_epoch():
    model = tiny_ks()
    out = model.training_step(clip_batch(), TrainState(epoch=0))
    out["loss"].backward()
    assert model.perturbation.out.weight.grad.abs().sum() > 0
    assert out["ramp"].item() == pytest.approx(math.exp(-2))


@pytest.mark.parametrize("key", [1, 3])
def test_active_student_follows_key_position(key):
    model = tiny_ks()
    model.training_step(clip_batch(key=key), TrainState(epoch=3))["loss"].backward()
    for position, student in enumerate(model.students.students):
        grad = sum(0.0 if p.grad is None else p.grad.abs().sum().item() for p in student.parameters())
        assert (grad > 0) == (position == key), (position, grad)


def test_each_clip_trains_the_student_at_its_own_key_position():
    # Clips shifted at sequence ends keep their key frame elsewhere than the batch's m.
    model = tiny_ks()
    batch = clip_batch()
    batch["key_position"] = torch.tensor([0, 3, 0, 3])
    for clip, key in enumerate((0, 3, 0, 3)):
        batch["labeled"][clip] = False
        batch["labeled"][clip, key] = True
        batch["label"][clip] = -1.0
        batch["label"][clip, key] = torch.tensor([1.0, 0.0, 1.0, 0.0])
    model.training_step(batch, TrainState(epoch=3))["loss"].backward()
    for position, student in enumerate(model.students.students):
        grad = sum(0.0 if p.grad is None else p.grad.abs().sum().item() for p in student.parameters())
        assert (grad > 0) == (position in (0, 3)), (position, grad)


def test_bad_batches_are_rejected():
    model = tiny_ks()
    batch = clip_batch()
    batch["key_position"] = torch.tensor([0, 1, 5, 1])
    with pytest.raises(ValueError, match="key_position"):
        model.training_step(batch, TrainState())
    batch["key_position"] = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="one position per clip"):
        model.training_step(batch, TrainState())
    batch = clip_batch()
    batch["image"] = batch["image"][:, :3]
    with pytest.raises(ValueError, match="5 frames"):
        model.training_step(batch, TrainState())
    with pytest.raises(ValueError, match="unknown model settings"):
        create_method("ks", U, "tiny", no_such_setting=1)


# ---------------------------------------------------------------------------- inference

def test_predict_is_mean_of_spatial_and_temporal_teachers():
    model = tiny_ks().eval()
    batch = clip_batch(batch=3)
    probs = model.predict(batch)
    assert probs.shape == batch["label"].shape
    assert probs.min() >= 0 and probs.max() <= 1
    with torch.no_grad():
        _, spatial, temporal = model.inference_model().features(batch["image"])
    assert torch.allclose(probs, 0.5 * (spatial.sigmoid() + temporal.sigmoid()))
    frames = model.predict({"image": batch["image"][:, 0]})
    assert frames.shape == (3, U)


def test_parameter_counts_of_the_presets():
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    paper = create_method("ks", 12, "paper")
    net = paper.inference_model()
    assert count(net.backbone) == 11_176_512                  # ResNet-18 without its classifier
    assert count(net) == count(net.backbone) + count(net.spatial) + count(net.temporal)
    assert count(paper) == count(net) + count(paper.students) + count(paper.perturbation)
    # The paper reports 15.6M parameters for KS; ours (training module) is within 2%.
    assert abs(count(paper) - 15.6e6) / 15.6e6 < 0.02, count(paper)
    assert paper.preset.image_size == 224 and paper.preset.epochs == 50 and paper.preset.lr == 0.01
    assert paper.preset.model["augment"] is True
    assert net.spatial.width == 16                           # smallest multiple of 8 >= 12 AUs
    tiny = create_method("ks", 12, "tiny")
    assert count(tiny) < 1_500_000


@pytest.mark.cuda
def test_training_step_and_predict_on_cuda():
    model = tiny_ks().cuda()
    batch = {k: v.cuda() for k, v in clip_batch().items()}
    out = model.training_step(batch, TrainState(epoch=3))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert model.predict(batch).device.type == "cuda"
