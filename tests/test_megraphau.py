"""ME-GraphAU: the graph parts against hand values, the losses, stage 1 -> 2 loading, training."""
import math

import pytest
import torch
from torch import nn

from aubench.models.base import Preset, TrainState
from aubench.models.graph_head import (GEM, CosineClassifier, GatedGCNLayer, TopKGraphGCN, edge_labels, edge_loss,
                                       normalize_adjacency, top_k_adjacency, weighted_asymmetric_loss)
from aubench.models.megraphau import MEGraphAU, feature_tokens, stage_preset

LN3 = math.log(3.0)
U = 4  # AUs of the small models below
WEIGHTS = torch.tensor([1.0, 2.0, 0.5, 1.5])


def tiny(stage: int, num_aus: int = U, **model) -> MEGraphAU:
    preset = stage_preset(MEGraphAU.presets["tiny"], stage)
    settings = {"neighbours": 2, **model} if num_aus == U else model
    preset = Preset(**{**preset.__dict__, "model": {**preset.model, **settings}})
    torch.manual_seed(0)
    return MEGraphAU(num_aus, preset, WEIGHTS[:num_aus] if num_aus == U else None)


def frame_batch(batch=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(batch, 3, size, size, generator=g),
            "label": (torch.rand(batch, U, generator=g) < 0.5).float(), "index": torch.arange(batch)}


def set_linear(linear: nn.Linear, weight) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        if linear.bias is not None:
            linear.bias.zero_()


def assert_values(actual: torch.Tensor, expected, atol=1e-6) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def exact_batch_norms(module: nn.Module) -> None:
    """Eval mode with the initial statistics (mean 0, variance 1) and eps 0: BatchNorm = identity."""
    module.eval()
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps = 0.0


# ----------------------------------------------------------------------------------- stage 1 graph

def test_top_k_adjacency_and_its_normalisation_by_hand():
    nodes = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [1.0, 1.0], [0.0, 3.0]]], requires_grad=True)
    # dot products per row: [1 2 1 0], [2 4 2 0], [1 2 2 3], [0 0 3 9]; K = 2 keeps values >= the
    # second largest, ties included (row 0 keeps three), and rows need not be symmetric.
    adjacency = top_k_adjacency(nodes, 2)
    assert not adjacency.requires_grad
    assert adjacency[0].tolist() == [[1, 1, 1, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]]
    r6 = 1 / math.sqrt(6)  # degrees 3, 3, 3, 2: a_ij / sqrt(d_i d_j)
    expected = [[1 / 3, 1 / 3, 1 / 3, 0], [1 / 3, 1 / 3, 1 / 3, 0], [0, 1 / 3, 1 / 3, r6], [0, 0, r6, 1 / 2]]
    assert torch.allclose(normalize_adjacency(adjacency)[0], torch.tensor(expected), atol=1e-6)


def test_top_k_gcn_layer_by_hand():
    gcn = TopKGraphGCN(width=2, num_aus=2, neighbours=1)
    set_linear(gcn.aggregate, torch.eye(2))
    set_linear(gcn.self_loop, torch.eye(2))
    exact_batch_norms(gcn)
    x0, x1 = [1.0, 0.0], [2.0, 1.0]
    # dots: row 0 [1, 2] -> neighbour 1; row 1 [2, 5] -> itself; both degrees 1, so A = [[0,1],[0,1]].
    # out_i = ReLU(x_i + A x_i-row (x1) + x_i): [1,0] + [2,1] + [1,0] = [4,1]; [2,1] * 3 = [6,3].
    out = gcn(torch.tensor([[x0, x1]]))
    assert_values(out[0], [[4.0, 1.0], [6.0, 3.0]])
    with pytest.raises(ValueError, match="neighbours"):
        TopKGraphGCN(2, 2, neighbours=3)


# ----------------------------------------------------------------------------------- stage 2 graph

def gated_layer(receiver, sender, edge, node_self, node_message):
    layer = GatedGCNLayer(width=2, num_aus=2)
    for linear, weight in ((layer.receiver, receiver), (layer.sender, sender), (layer.edge, edge),
                           (layer.node_self, node_self), (layer.node_message, node_message)):
        set_linear(linear, weight)
    exact_batch_norms(layer)
    return layer


def test_gated_gcn_shapes():
    layer = GatedGCNLayer(width=8, num_aus=3)
    nodes, edges = layer(torch.randn(5, 3, 8), torch.randn(5, 9, 8))
    assert nodes.shape == (5, 3, 8) and edges.shape == (5, 9, 8)
    assert (nodes >= 0).all()


def test_gated_gcn_edge_update_by_hand():
    eye, zero = torch.eye(2), torch.zeros(2, 2)
    layer = gated_layer(receiver=eye, sender=2 * eye, edge=eye, node_self=zero, node_message=zero)
    nodes = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    edges = torch.tensor([[[0.0, -1.0], [1.0, 0.0], [0.0, 0.0], [-3.0, 1.0]]])   # pairs 00, 01, 10, 11
    # e_ij + ReLU(x_i + 2 x_j + e_ij): 00: [0,-1] + ReLU([3,-1]) = [3,-1]; 01: [1,0] + ReLU([2,2]) = [3,2];
    # 10: [0,0] + ReLU([2,1]) = [2,1]; 11: [-3,1] + ReLU([-3,4]) = [-3,5].
    _, out = layer(nodes, edges)
    assert_values(out[0], [[3.0, -1.0], [3.0, 2.0], [2.0, 1.0], [-3.0, 5.0]])


def test_gated_gcn_node_update_gates_over_the_senders_by_hand():
    eye, zero = torch.eye(2), torch.zeros(2, 2)
    layer = gated_layer(receiver=zero, sender=eye, edge=zero, node_self=zero, node_message=eye)
    nodes = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])
    # e_ij' = ReLU(x_j): e_i0 = [2, 0], e_i1 = [0, 0]. Gates softmax over j of sigmoid(e_ij'):
    # channel 0: g0 = e^s(2) / (e^s(2) + e^s(0)), channel 1: 1/2 each. Messages (1/N) sum_j g_ij x_j
    # = [g0 * 2 / 2, 0], so x_i' = x_i + [g0, 0] for both i.
    s2 = 1 / (1 + math.exp(-2))
    g0 = math.exp(s2) / (math.exp(s2) + math.exp(0.5))
    out, edges = layer(nodes, torch.zeros(1, 4, 2))
    assert_values(out[0], [[2 + g0, 0.0], [g0, 0.0]])
    assert_values(edges[0], [[2.0, 0.0], [0.0, 0.0], [2.0, 0.0], [0.0, 0.0]])


def test_gem_shapes():
    gem = GEM(width=8, num_aus=3)
    edges = gem(torch.randn(2, 3, 5, 8), torch.randn(2, 5, 8))
    assert edges.shape == (2, 9, 8)


def test_gem_by_hand():
    gem = GEM(width=2, num_aus=2)
    set_linear(gem.fam.q, [[1.0, 0.0]])
    set_linear(gem.fam.k, [[1.0, 0.0]])
    set_linear(gem.fam.v, torch.eye(2))
    set_linear(gem.arm.q, [[0.0, 0.0]])        # uniform attention over the receiver's tokens
    set_linear(gem.arm.k, [[0.0, 0.0]])
    set_linear(gem.arm.v, torch.eye(2))
    set_linear(gem.edge_proj, torch.eye(2))
    exact_batch_norms(gem)
    face = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    au_maps = torch.tensor([[[[LN3, 0.0], [LN3, 0.0]], [[-LN3, 0.0], [-LN3, 0.0]]]])
    # FAM (scale 1/sqrt(1)): AU 0 scores the face tokens [ln3, 0] -> weights [3/4, 1/4] ->
    # F_0 = [.75, .25] per token; AU 1 [-ln3, 0] -> [1/4, 3/4] -> F_1 = [.25, .75].
    # ARM: edge (i, j) takes its values from the receiver i, so e_0j = F_0, e_1j = F_1.
    edges = gem(au_maps, face)
    assert_values(edges[0], [[0.75, 0.25], [0.75, 0.25], [0.25, 0.75], [0.25, 0.75]])


def test_gem_pairs_match_a_loop_over_the_pairs():
    torch.manual_seed(0)
    gem = GEM(width=6, num_aus=3).eval()
    with torch.no_grad():   # non-trivial BatchNorm statistics
        gem.bn.running_mean.uniform_(-1, 1)
        gem.bn.running_var.uniform_(0.5, 2)
    au_maps, face = torch.randn(2, 3, 4, 6), torch.randn(2, 4, 6)
    edges = gem(au_maps, face)
    au_face = torch.stack([gem.fam(au_maps[:, i], face) for i in range(3)], dim=1)
    for i in range(3):
        for j in range(3):
            relation = gem.arm(au_face[:, j], au_face[:, i])            # query j, keys and values i
            e = i * 3 + j
            bn = (gem.edge_proj(relation) - gem.bn.running_mean[e]) / torch.sqrt(gem.bn.running_var[e] + gem.bn.eps)
            expected = (bn * gem.bn.weight[e] + gem.bn.bias[e]).mean(dim=1)
            assert torch.allclose(edges[:, e], expected, atol=1e-5), (i, j)


def test_cosine_classifier_by_hand():
    classifier = CosineClassifier(num_aus=2, width=2)
    with torch.no_grad():
        classifier.weight.copy_(torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
    # ReLU(t_0) = [1, 0], ReLU(t_1) = [1, 1]; node [3, 4] -> 3/5 and 7/(5 sqrt 2); node [-1, 2] -> [0, 2].
    probs = classifier(torch.tensor([[[3.0, 4.0], [-1.0, 2.0]]]))
    assert probs[0].tolist() == pytest.approx([0.6, 1 / math.sqrt(2)], abs=1e-6)


# ----------------------------------------------------------------------------------- losses

def test_weighted_asymmetric_loss_by_hand():
    probs = torch.tensor([[0.5, 0.9], [0.2, 0.7]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    weights = torch.tensor([2.0, 0.5])
    # known entries: -2 ln .5, -0.5 * .9 ln .1, -0.5 ln .7; mean over the three.
    expected = (2 * math.log(2) - 0.45 * math.log(0.1) - 0.5 * math.log(0.7)) / 3
    loss = weighted_asymmetric_loss(probs, labels, weights)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # The negative's focusing weight p carries no gradient: d/dp of -w p* ln(1 - p) = w p / (1 - p).
    assert_values(probs.grad, [[-2 / 0.5 / 3, 0.5 * 0.9 / 0.1 / 3], [0.0, -0.5 / 0.7 / 3]])
    unknown = torch.full((2, 2), -1.0)
    empty = weighted_asymmetric_loss(probs, unknown, weights)
    assert empty.item() == 0.0
    assert weighted_asymmetric_loss(torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1)).item() == \
        pytest.approx(-math.log(1e-8))   # log clamped at eps


def test_weighted_asymmetric_loss_margin_and_gamma_by_hand():
    # MAE-FAU Eq. (4)-(5): negatives use p_m = max(p - m, 0) and the weight p_m^gamma.
    probs = torch.tensor([[0.9, 0.7, 0.1]])
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    weights = torch.ones(3)
    m, gamma = 0.2, 2.0
    expected = -(math.log(0.9) + 0.5 ** 2 * math.log(0.5) + 0.0) / 3   # p = 0.1 falls below the margin
    loss = weighted_asymmetric_loss(probs, labels, weights, gamma=gamma, margin=m)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_top_k_graph_is_exact_under_bf16_autocast():
    # Similarities of ~100 differ by less than bf16's step there; the graph must not gain ties.
    torch.manual_seed(0)
    nodes = 10 + 0.01 * torch.randn(4, 12, 8)
    exact = top_k_adjacency(nodes, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = top_k_adjacency(nodes, 4)
    assert torch.equal(exact.sum(-1), torch.full((4, 12), 4.0))
    assert torch.equal(under_autocast.float(), exact.float())


def test_the_head_runs_in_float64():
    """A float64 model stays float64 through the top-K graph (it used to come back float32 and
    crash the GCN's matrix product)."""
    from aubench.models.graph_head import MEGraphHead

    for stage in (1, 2):
        head = MEGraphHead(16, 4, stage, neighbours=2).double()
        out = head(torch.randn(2, 5, 16, dtype=torch.float64))
        assert torch.isfinite(out["probs"]).all()


def test_edge_labels_from_au_labels():
    labels = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 1.0]])
    # pair (i, j) at i * 3 + j: 2 y_i + y_j, -1 where either is unknown.
    assert edge_labels(labels).tolist() == [[3, 2, -1, 1, 0, -1, -1, -1, -1],
                                            [0, 1, 1, 2, 3, 3, 2, 3, 3]]


def test_edge_loss_skips_unknown_pairs():
    targets = torch.tensor([[3, -1, 0]])
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 3] = LN3               # softmax [1, 1, 1, 3] / 6 -> p(3) = 1/2
    logits[0, 1] = torch.tensor([9.0, -9.0, 9.0, -9.0])   # unknown: ignored whatever it says
    assert edge_loss(logits, targets).item() == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-6)
    assert edge_loss(logits, torch.full((1, 3), -1)).item() == 0.0


# ----------------------------------------------------------------------------------- method

def test_feature_tokens_flatten_nchw_and_nhwc_alike():
    grid = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 3, 2, 4)   # (B, C, H, W)

    class Fixed(nn.Module):
        def __init__(self, out, fmt):
            super().__init__()
            self.out, self.output_fmt = out, fmt

        def forward(self, images):
            return self.out

    expected = grid.flatten(2).transpose(1, 2)                              # (1, 8, 3), row-major
    assert torch.equal(feature_tokens(Fixed(grid, "NCHW"), None), expected)
    assert torch.equal(feature_tokens(Fixed(grid.permute(0, 2, 3, 1), "NHWC"), None), expected)
    with pytest.raises(ValueError, match="feature map"):
        feature_tokens(Fixed(torch.zeros(1, 3), "NCHW"), None)


def test_settings_neighbours_default_by_au_count_and_bad_settings():
    assert tiny(1, num_aus=12).net.head.gcn.neighbours == 4
    assert tiny(1, num_aus=8).net.head.gcn.neighbours == 3
    assert tiny(1, neighbours=3).net.head.gcn.neighbours == 3
    with pytest.raises(ValueError, match="neighbours"):
        tiny(1, num_aus=5)
    with pytest.raises(ValueError, match="unknown model settings"):
        tiny(1, lamda=0.1)
    with pytest.raises(ValueError, match="stage"):
        tiny(3)


def test_stage_presets_take_each_stages_learning_rate():
    paper = MEGraphAU.presets["paper"]
    assert (paper.optimizer, paper.weight_decay, paper.batch_size, paper.epochs, paper.image_size) == \
        ("adamw", 5e-4, 64, 20, 224)
    one, two = stage_preset(paper, 1), stage_preset(paper, 2)
    assert (one.lr, one.model["stage"]) == (1e-4, 1)
    assert (two.lr, two.model["stage"]) == (1e-5, 2)
    assert paper.model["stage"] == 1 and paper.lr == 1e-4          # the preset itself is untouched


@pytest.mark.parametrize("stage", [1, 2])
def test_predictions_are_probabilities(stage):
    model = tiny(stage).eval()
    probs = model.predict(frame_batch(batch=3))
    assert probs.shape == (3, U) and probs.dtype == torch.float32
    assert (probs >= 0).all() and (probs <= 1).all()


def test_stage2_loads_the_stage1_weights():
    first = tiny(1)
    opt = torch.optim.SGD(first.parameters(), lr=0.1)
    first.training_step(frame_batch(), TrainState())["loss"].backward()   # move every weight off its init
    opt.step()
    second = tiny(2)
    with torch.no_grad():
        second.net.backbone.conv1.weight.add_(1.0)    # a different init, so equality below means loaded
    saved = first.state_dict()
    report = second.init_from_stage1(saved)
    mine = second.state_dict()
    assert report["loaded"] and all(torch.equal(mine[k], saved[k]) for k in report["loaded"])
    assert set(report["loaded"]) == set(saved) - set(report["dropped"])
    assert {k.split(".")[2] for k in report["dropped"]} == {"gcn"}
    assert {k.split(".")[2] for k in report["new"]} == {"gem", "gnn", "edge_head"}
    assert any(k.startswith("net.head.classifier") for k in report["loaded"])
    assert any(k.endswith("running_mean") for k in report["loaded"])          # BatchNorm statistics too
    assert set(report["loaded"]) | set(report["new"]) == set(mine)


def test_stage2_loading_is_strict_on_the_shared_parts():
    saved = tiny(1).state_dict()
    second = tiny(2)
    missing = {k: v for k, v in saved.items() if not k.startswith("net.head.afg.blocks.0.")}
    with pytest.raises(ValueError, match="missing"):
        second.init_from_stage1(missing)
    reshaped = {**saved, "net.head.classifier.weight": torch.zeros(3, 3)}
    with pytest.raises(ValueError, match="shape"):
        second.init_from_stage1(reshaped)
    with pytest.raises(ValueError, match="not stage 1"):
        second.init_from_stage1(tiny(2).state_dict())      # a stage-2 state dict is not a stage-1 one
    with pytest.raises(ValueError, match="stage-2 model"):
        tiny(1).init_from_stage1(saved)


@pytest.mark.parametrize("stage", [1, 2])
def test_training_step_backpropagates_into_every_parameter(stage):
    # timm zero-initialises each residual block's last BatchNorm, which zeroes the gradients of the
    # block's other layers at init; built without that, every weight must get a gradient.
    backbone_kwargs = {**MEGraphAU.presets["tiny"].model["backbone_kwargs"], "zero_init_last": False}
    model = tiny(stage, backbone_kwargs=backbone_kwargs).train()
    out = model.training_step(frame_batch(), TrainState())
    assert set(out) == ({"loss", "au"} if stage == 1 else {"loss", "au", "edge"})
    assert all(torch.isfinite(v) for v in out.values())
    if stage == 2:
        assert out["loss"].item() == pytest.approx(out["au"].item() + 0.05 * out["edge"].item(), rel=1e-5)
    out["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        # A bias right before a BatchNorm over the same channel has zero gradient by construction.
        if not (name.endswith("fc.bias") and (name.startswith("net.projection") or ".afg." in name)):
            assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("stage", [1, 2])
def test_a_few_dozen_steps_overfit_eight_images(stage):
    model = tiny(stage, **({"lambda": 1.0} if stage == 2 else {})).train()
    batch = frame_batch(batch=8, seed=1)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    history = []
    for _ in range(40):
        out = model.training_step(batch, TrainState())
        optimiser.zero_grad()
        out["loss"].backward()
        optimiser.step()
        history.append({k: v.item() for k, v in out.items()})
    assert history[-1]["loss"] < 0.4 * history[0]["loss"]
    assert history[-1]["au"] < 0.5 * history[0]["au"]
    if stage == 2:
        assert history[-1]["edge"] < 0.5 * history[0]["edge"]


def test_swin_backbone_tokens_through_the_head():
    # A Swin layout at toy widths: NHWC 7 x 7 maps at 224 px, as Swin-B's.
    model = tiny(2, backbone="swin_tiny_patch4_window7_224", width=8,
                 backbone_kwargs={"embed_dim": 8, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}).eval()
    tokens = feature_tokens(model.net.backbone, torch.randn(2, 3, 224, 224))
    assert tokens.shape == (2, 49, 64)
    probs = model.predict({"image": torch.randn(2, 3, 224, 224)})
    assert probs.shape == (2, U) and (probs >= 0).all() and (probs <= 1).all()


def test_swin_b_stage2_size_matches_the_published_count():
    # MAE-FAU Table 4: ME-GraphAU (Swin-B) 94.38 M parameters. Built on the meta device (no memory).
    preset = stage_preset(MEGraphAU.presets["paper"], 2)
    preset = Preset(**{**preset.__dict__, "model": {**preset.model, "backbone": "swin_base_patch4_window7_224"}})
    with torch.device("meta"):
        model = MEGraphAU(12, preset)
    assert sum(p.numel() for p in model.inference_model().parameters()) / 1e6 == pytest.approx(94.38, abs=0.005)
