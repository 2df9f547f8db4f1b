"""The AU relation graph of ME-GraphAU, shared by every method that detects AUs with it.

Luo, Song, Xie, Shen, Gunes, "Learning multi-dimensional edge feature-based AU relation graph
for facial action unit recognition", IJCAI 2022 (the ME-GraphAU method is in
aubench.models.megraphau); the occlusion-robust MAE method uses the same head as its detection
module on its own face tokens.

Shapes: B frames, N AUs (graph nodes), T tokens of a face feature map, C channels. Edge (i, j)
of the N * N ordered pairs (self-pairs included) sits at index i * N + j; node i is the one that
receives the edge's message in the GatedGCN, node j the one that sends it.

- LinearBlock: per-token Linear + BatchNorm over channels + ReLU, (B, T, C_in) -> (B, T, C_out).
- AUFeatureGenerator (AFG): N LinearBlocks C -> C on the face tokens -> N AU feature maps
  (B, N, T, C); node features are their means over the tokens (B, N, C).
- TopKGraphGCN (stage 1, FGG / ANFL): dot-product similarity of the detached node features,
  a_ij = 1 when s_ij is among the K largest of row i (ties at the K-th value count too),
  A = D^-1/2 adj D^-1/2 with D the row degrees, then V' = ReLU(V + BN(A g1(V) + g2(V))),
  BN over the node axis (one BatchNorm channel per node, as the reference code).
- GEM (stage 2, graph edge modelling): cross-attention softmax(q k^T / sqrt(C/2)) v with q, k
  of width C/2 and v of width C; FAM lets each AU map attend to the face map (F_i^face), ARM
  lets node j's tokens attend to node i's for every pair (i, j), then Linear, BatchNorm per edge
  (one channel per pair) and the mean over tokens give the edge features (B, N * N, C).
  The ARM direction follows the reference code (graph_edge_model.py: node j's tokens are the
  queries, node i's the keys and values of edge (i, j), and node i receives it), where MAE-FAU's
  Eq. (8) writes Cross-Attention_2(F_i, F_j) with the query from i: the reference's order keeps
  the edge labels (2 y_i + y_j) and the GatedGCN's receiver consistent with its trained models.
- GatedGCN (stage 2): per layer, e_ij' = e_ij + ReLU(BN_e(A x_i + B x_j + E e_ij)), gates
  g_ij = softmax over j of sigmoid(e_ij') (per channel), x_i' = ReLU(x_i + BN_v(U x_i +
  1/N sum_j g_ij * V x_j)); BN over the node axis and over the edge axis. These are the
  reference code's choices, not those of the residual gated graph ConvNets it builds on
  (Bresson and Laurent: gates sigma / sum sigma, no 1/N, ReLU inside the residual).
- CosineClassifier: p_i = cos(ReLU(t_i), ReLU(v_i)) with a learned vector t_i per AU: in [0, 1].
- MEGraphHead: AFG + the stage's graph + classifier (+ a 4-class edge head in stage 2), from
  face tokens to AU probabilities (and edge logits).
- Losses: the weighted asymmetric loss of the reference code (MAE-FAU's Eq. (4)-(5) form, with
  a probability margin m and focusing power gamma, is the same function with gamma and margin
  set; the reference's is gamma = 1, m = 0), edge labels (2 y_i + y_j: 0 both
  off, 1 only j, 2 only i, 3 both) and their cross-entropy; unknown labels (-1) count nowhere.

Initialisation follows the reference code: He-normal (fan-out) linear weights, Xavier-uniform
AU vectors and edge head, BatchNorm at weight 1, bias 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EDGE_CLASSES = 4  # both AUs off / only the sender j on / only the receiver i on / both on


def _he_normal(linear: nn.Linear) -> nn.Linear:
    nn.init.kaiming_normal_(linear.weight, mode="fan_out", nonlinearity="relu")
    return linear


# ----------------------------------------------------------------------------------- blocks

class LinearBlock(nn.Module):
    """Per-token Linear -> BatchNorm over channels (statistics over frames and tokens) -> ReLU."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.fc = _he_normal(nn.Linear(in_features, out_features))
        self.bn = nn.BatchNorm1d(out_features)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, C_in) -> (B, T, C_out)."""
        return F.relu(self.bn(self.fc(tokens).transpose(1, 2)).transpose(1, 2))


class AUFeatureGenerator(nn.Module):
    """AFG: one LinearBlock per AU on the face tokens."""

    def __init__(self, width: int, num_aus: int):
        super().__init__()
        self.blocks = nn.ModuleList(LinearBlock(width, width) for _ in range(num_aus))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, C) -> AU feature maps (B, N, T, C) and node features (B, N, C)."""
        maps = torch.stack([block(tokens) for block in self.blocks], dim=1)
        return maps, maps.mean(dim=2)


# ----------------------------------------------------------------------------------- stage 1

def top_k_adjacency(nodes: torch.Tensor, k: int) -> torch.Tensor:
    """0/1 (B, N, N): a_ij = 1 when v_i . v_j is among the k largest of row i (ties included).
    Built from detached features: the graph picks neighbours, gradients do not flow through it."""
    # In fp32 even under autocast: bf16 rounds similarities of ~90 to steps of 0.5, and the ties
    # that makes (kept by >=) would give rows many more than k neighbours. A float64 model keeps
    # float64.
    dtype = torch.promote_types(nodes.dtype, torch.float32)
    nodes = nodes.detach().to(dtype)
    with torch.autocast(nodes.device.type, enabled=False):
        similarity = nodes @ nodes.transpose(1, 2)
    threshold = similarity.topk(k, dim=-1).values[..., -1:]
    return (similarity >= threshold).to(dtype)


def normalize_adjacency(adjacency: torch.Tensor) -> torch.Tensor:
    """D^-1/2 A D^-1/2 with D the row (out-)degrees; every row of a top-K graph has degree >= K."""
    scale = adjacency.sum(-1).rsqrt()
    return scale.unsqueeze(-1) * adjacency * scale.unsqueeze(-2)


class TopKGraphGCN(nn.Module):
    """Stage 1: V' = ReLU(V + BN(A g1(V) + g2(V))) over the top-K similarity graph."""

    def __init__(self, width: int, num_aus: int, neighbours: int):
        super().__init__()
        if not 1 <= neighbours <= num_aus:
            raise ValueError(f"top-K graph: neighbours must be in 1..{num_aus} (the AUs), got {neighbours}")
        self.neighbours = neighbours
        self.aggregate = _he_normal(nn.Linear(width, width))   # g1: the neighbours' messages
        self.self_loop = _he_normal(nn.Linear(width, width))   # g2
        self.bn = nn.BatchNorm1d(num_aus)                       # one channel per node

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        adjacency = normalize_adjacency(top_k_adjacency(nodes, self.neighbours))
        update = adjacency @ self.aggregate(nodes) + self.self_loop(nodes)
        return F.relu(nodes + self.bn(update))


# ----------------------------------------------------------------------------------- stage 2

class CrossAttention(nn.Module):
    """softmax(q(query) k(context)^T / sqrt(C/2)) v(context); q, k: C -> C/2, v: C -> C."""

    def __init__(self, width: int):
        super().__init__()
        if width < 2:
            raise ValueError(f"cross-attention needs a width of at least 2, got {width}")
        self.q = _he_normal(nn.Linear(width, width // 2))
        self.k = _he_normal(nn.Linear(width, width // 2))
        self.v = _he_normal(nn.Linear(width, width))
        self.scale = (width // 2) ** -0.5

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Attention on projected tensors (..., Tq, C/2), (..., Tk, C/2), (..., Tk, C); broadcasts."""
        weights = torch.softmax((query @ key.transpose(-1, -2)) * self.scale, dim=-1)
        return weights @ value

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.attend(self.q(query), self.k(context), self.v(context))


class GEM(nn.Module):
    """Graph edge modelling: AU maps (B, N, T, C) and face tokens (B, T, C) -> edges (B, N*N, C).

    Each projection is computed once per face map or node and broadcast over the pairs: the
    same values as projecting every pair's copy (as the reference code does), N times fewer
    multiply-adds in FAM and N^2 / N in ARM.
    """

    def __init__(self, width: int, num_aus: int):
        super().__init__()
        self.fam = CrossAttention(width)    # AU map -> face map
        self.arm = CrossAttention(width)    # node j's tokens -> node i's, for every pair (i, j)
        self.edge_proj = _he_normal(nn.Linear(width, width))
        self.bn = nn.BatchNorm2d(num_aus * num_aus)   # one channel per pair

    def forward(self, au_maps: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        b, n, t, c = au_maps.shape
        au_face = self.fam(au_maps, face.unsqueeze(1))                  # F_i^face (B, N, T, C)
        query = self.arm.q(au_face).unsqueeze(1)                        # sender j on axis 2
        key, value = self.arm.k(au_face).unsqueeze(2), self.arm.v(au_face).unsqueeze(2)  # receiver i on axis 1
        relation = self.arm.attend(query, key, value)                    # (B, N_i, N_j, T, C)
        edges = self.bn(self.edge_proj(relation.reshape(b, n * n, t, c)))
        return edges.mean(dim=2)


class GatedGCNLayer(nn.Module):
    """One residual gated graph convolution over node (B, N, C) and edge (B, N*N, C) features."""

    def __init__(self, width: int, num_aus: int):
        super().__init__()
        self.num_aus = num_aus
        self.receiver, self.sender, self.edge = (_he_normal(nn.Linear(width, width, bias=False)) for _ in range(3))
        self.node_self, self.node_message = (_he_normal(nn.Linear(width, width, bias=False)) for _ in range(2))
        self.bn_nodes = nn.BatchNorm1d(num_aus)
        self.bn_edges = nn.BatchNorm1d(num_aus * num_aus)

    def forward(self, nodes: torch.Tensor, edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, c = nodes.shape
        pair = (self.receiver(nodes).unsqueeze(2) + self.sender(nodes).unsqueeze(1)).reshape(b, n * n, c)
        edges = edges + F.relu(self.bn_edges(pair + self.edge(edges)))
        gates = torch.softmax(torch.sigmoid(edges).view(b, n, n, c), dim=2)      # over senders j
        messages = (gates * self.node_message(nodes).unsqueeze(1)).sum(dim=2) / n
        nodes = F.relu(nodes + self.bn_nodes(self.node_self(nodes) + messages))
        return nodes, edges


class GatedGCN(nn.Module):
    def __init__(self, width: int, num_aus: int, layers: int = 2):
        super().__init__()
        self.layers = nn.ModuleList(GatedGCNLayer(width, num_aus) for _ in range(layers))

    def forward(self, nodes: torch.Tensor, edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.layers:
            nodes, edges = layer(nodes, edges)
        return nodes, edges


# ----------------------------------------------------------------------------------- head

class CosineClassifier(nn.Module):
    """p_i = cos(ReLU(t_i), ReLU(v_i)), one learned vector t_i per AU; computed in float32."""

    def __init__(self, num_aus: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_aus, width))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N) in [0, 1]."""
        t = F.normalize(F.relu(self.weight.float()), dim=-1)
        v = F.normalize(F.relu(nodes.float()), dim=-1)
        return (v * t).sum(-1)


class MEGraphHead(nn.Module):
    """Face tokens (B, T, C) -> {"probs": (B, N)} (+ "edge_logits": (B, N*N, 4) in stage 2).

    Stage 1: AFG -> top-K graph GCN -> cosine classifier. Stage 2: AFG -> GEM -> GatedGCN ->
    cosine classifier and edge head. The AFG and the classifier keep their names in both stages,
    so stage 2 loads them from stage 1 (`STAGE_PARTS` lists each stage's own modules).
    """

    STAGE_PARTS = {1: ("gcn",), 2: ("gem", "gnn", "edge_head")}

    def __init__(self, width: int, num_aus: int, stage: int, neighbours: int | None = None,
                 gnn_layers: int = 2):
        super().__init__()
        if stage not in (1, 2):
            raise ValueError(f"ME-GraphAU head: stage must be 1 or 2, got {stage!r}")
        self.stage = stage
        self.afg = AUFeatureGenerator(width, num_aus)
        if stage == 1:
            if neighbours is None:
                raise ValueError("ME-GraphAU head: stage 1 needs the number of neighbours K")
            self.gcn = TopKGraphGCN(width, num_aus, neighbours)
        else:
            self.gem = GEM(width, num_aus)
            self.gnn = GatedGCN(width, num_aus, gnn_layers)
            self.edge_head = nn.Linear(width, EDGE_CLASSES)
            nn.init.xavier_uniform_(self.edge_head.weight)
        self.classifier = CosineClassifier(num_aus, width)

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        au_maps, nodes = self.afg(tokens)
        if self.stage == 1:
            return {"probs": self.classifier(self.gcn(nodes))}
        nodes, edges = self.gnn(nodes, self.gem(au_maps, tokens))
        return {"probs": self.classifier(nodes), "edge_logits": self.edge_head(edges)}


# ----------------------------------------------------------------------------------- losses

def weighted_asymmetric_loss(probs: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor,
                             gamma: float = 1.0, margin: float = 0.0, eps: float = 1e-8) -> torch.Tensor:
    """-mean over known entries of w_u [y log p + (1 - y) (p_m*)^gamma log(1 - p_m)],
    p_m = max(p - margin, 0), p_m* = p_m detached.

    gamma = 1, margin = 0 (the defaults) is the reference code's WeightedAsymmetricLoss
    (asymmetric focusing of power 1 on negatives, the focusing weight without gradient, logs
    clamped at eps); MAE-FAU's Eq. (4)-(5) sets its own gamma and margin. Labels -1 contribute
    nothing, and a batch without known labels gives 0. probs, labels (B, N); class_weights (N,).
    """
    probs = probs.float()
    known = labels >= 0
    targets = labels.clamp(min=0).to(probs.dtype)
    shifted = (probs - margin).clamp(min=0) if margin else probs
    positive = targets * torch.log(probs.clamp(min=eps))
    negative = (1 - targets) * shifted.detach().pow(gamma) * torch.log((1 - shifted).clamp(min=eps))
    weighted = (positive + negative) * class_weights.to(probs.dtype) * known
    return -weighted.sum() / known.sum().clamp(min=1)


def edge_labels(labels: torch.Tensor) -> torch.Tensor:
    """AU labels (B, N) -> edge classes (B, N*N) long: 2 y_i + y_j for pair (i, j) at i*N + j,
    -1 where either label is unknown."""
    b, n = labels.shape
    known = labels >= 0
    y = labels.clamp(min=0).long()
    classes = 2 * y.unsqueeze(2) + y.unsqueeze(1)
    classes = classes.masked_fill(~(known.unsqueeze(2) & known.unsqueeze(1)), -1)
    return classes.reshape(b, n * n)


def edge_loss(edge_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the pairs with known classes (targets -1 skipped); 0 when none."""
    per_pair = F.cross_entropy(edge_logits.reshape(-1, edge_logits.shape[-1]).float(), targets.reshape(-1),
                               ignore_index=-1, reduction="sum")
    return per_pair / (targets >= 0).sum().clamp(min=1)
