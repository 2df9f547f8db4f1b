"""Knowledge-Spreader (KS): semi-supervised AU detection from sparsely labeled clips.

Li, Zhang, Wang, Yin, "Knowledge-Spreader: Learning semi-supervised facial action dynamics by
consistifying knowledge granularity", ICCV 2023 (and its supplementary material). Each training
clip holds n = 5 consecutive frames of which only the key frame (at position m) carries labels.

Network (one ResNet-18 base shared by both branches, 512 x 7 x 7 at 224 px):
- branch A, the key frame with its own augmentation draw ("key_image"):
  GAP -> U linear heads -> AU-specific features f_s^u (width W), each read by its own linear
  classifier (the supervised heads of Sec. 2.1.1, loss L_AU) -> + learnable AU positions ->
  Spatial Teacher S_a (pre-norm transformer blocks: LayerNorm, 8-head self-attention, residual,
  LayerNorm, GELU MLP, residual; no class token) -> one linear head per AU token: O_a (U logits).
- branch B, the clip: GAP per frame -> initial frame-specific features p_a^t (512-d) -> n
  Spatial Students S_b^t (small MLPs, student t reads frame t) -> post frame-specific features
  p_b^t, which are the students' U logits -> D_b = {p_b^t} + frame positions -> Temporal Teacher
  T_b (the same block design over the n frame tokens) -> O_b (U logits per frame).
- perturbation classifier g: reads D_b itself (the students' outputs, without frame positions,
  which would give a shuffle away) of every clip and of one shuffled copy of it, D_pb: per frame
  [d_t, d_t - d_{t-1}] (d_{-1} := d_0), a per-frame MLP, mean over the clip -> logit of "real
  order". D_pb shuffles the students' inputs, not their outputs: aubench.ops.
  temporal_shuffle_features stacks p_a and p_a in a shuffled frame order (one non-identity
  permutation per clip), and every student runs at its own position on both, so position t of
  either copy comes from student t (see "Where this departs").
- token width W: the supplementary sets W = U, which 8 heads cannot divide for U = 12 (BP4D;
  DISFA's 8 AUs work); W is the smallest multiple of 8 >= U (16 for BP4D, overridable with
  model["token_width"]). T_b's tokens are the students' U logits, embedded by a linear map
  U -> W when W != U (the identity when W = U).

Losses of one batch (b clips; "sum" is over AUs, then the mean over clips, as 1/b in Eq. 2/6):
- Eq. 3  L_AU(z, y) = sum_u w_u BCE(z_u, y_u) over known labels, w = class weights of the
         labels the run may see (aubench.data.visible_label_statistics).
- Eq. 2  L_skd = T^2 [KL(q || p) + KL(q || w^m)], p = S_a's output on the key frame (branch A),
         w^m = the active student's output on the key frame (branch B), q = sigmoid of the mean
         of their logits / T (their ensemble; T = 1). q is a detached target, so both teacher
         and student are pulled towards it (online collaborative distillation).
- Eq. 4/5 L_semi = sum over the clip's n - 1 unlabeled frames t of L_AU(S_b^t(p_a^t), y^t),
         y^t = 1[sigmoid(S_b^t) >= 0.5] (the student's own most probable class, Pseudo-Label).
- Eq. 6  L_tkd: the form of Eq. 2 between T_b's output on the key frame (where it saw the whole
         clip) and S_a's output on it (O_a^i of Alg. 1).
- Eq. 7  L_s = L_AU(S_a) + L_AU(S_b^m) + alpha L_skd;  L_t = L_AU(T_b) + L_AU(S_a) + alpha L_tkd
         on the key frame (z = 2 networks each), alpha = 0.5.
- L_self: BCE of g, real (1) against shuffled (0), mean over the clips and their copies, less
  the pairs whose shuffle left the clip as it was (below).
- Eq. 8  L = L_AU(AU-specific heads) + L_s + lambda w_ramp(epoch) (L_t + L_self + L_semi),
         lambda = 0.5, w_ramp of Eq. 9 (`gaussian_rampup`).
- Perturbation-aware pseudo-labelling (Sec. 2.1.4, Alg. 1 lines 15-19): g trains from the first
  epoch; L_semi is off before `gate_epoch` (2: the third epoch) and from then on a clip's
  pseudo-labels count only when g says its real D_b is in real order (P(real) >= 0.5; `gate`).
Inference (every sub-network but the pseudo-labelling): each frame's probability is the mean of
S_a's (the frame through branch A) and T_b's (the clip through the students).

Where this departs from, or reads between the lines of, the paper:
- Eq. 9 as printed, exp(-omega (1 - (x - mu)^2 / sigma^2)), grows past 1 after mu + sigma; the
  text says w_ramp "increases to 1 after 5 epochs", so x is clamped to [mu, mu + sigma]. The
  print may be a typo of Laine & Aila's exp(-omega (1 - t)^2), t = (x - mu) / sigma; that form is
  kept as model["ramp_form"] = "laine", the printed one is the default ("paper").
- L_tkd and L_skd act on the key frame of each clip (the printed sums run to n under a 1/b; Alg. 1
  distils between O_b and O_a, S_a's output on the key frame). KL directions follow online
  distillation (the ensemble is the target).
- Eq. 3 (and Eq. 4) as printed, sum_u w_u [y_u log sigma_u + (1 - y_u) log(1 - sigma_u)], is the
  weighted log-likelihood (<= 0): minimised as printed it would push every output away from its
  label. We minimise its negative, the weighted BCE.
- Pseudo-labels train the inactive students (Eq. 4, "x denotes p_a^n"), not T_b; T_b learns from
  the key-frame label and L_tkd, and sees the pseudo-labelled frames through its inputs.
- What g reads: Sec. 2.1.4 and Fig. 3 feed it D_b and its shuffled copy D_pb; Alg. 1 lines 15-16
  feed it T_b's outputs on the real and the shuffled tokens (O_b, O_pb = f_sigma(Shuffle(O_bti)),
  labelled 0 and 1 there; we label real order 1, the same classifier). We follow the text: g
  reads D_b without the frame positions (a shuffle would move them with the tokens), so L_self
  trains g, the students and the base, and T_b gets no gradient from L_self.
- The shuffled copy. The paper shuffles D_b, the students' outputs (Sec. 2.1.4; Alg. 1 line 15).
  With its one student per position, each student leaves its own offset in its token, so a
  shuffle of D_b moves the offsets and g can learn to spot them instead of motion. It does: with
  D_b shuffled, g (tiny preset, synthetic BP4D) called every real-order clip real and
  caught 91% of the shuffles even of static clips (one frame repeated: no motion at all); the
  gate kept every clip from the third epoch on, so L_semi was plain ungated pseudo-labelling,
  and L_self pushed the students to make their offsets more distinct. Here the students' inputs
  are shuffled instead (p_a in another frame order) and every student runs at its own position
  on both copies: the offsets stay in place, only the order of the frames' content differs, and
  a static clip's shuffled copy equals the real one, which no g can tell apart. What g and the
  gate then do on the label-ratio sweep's data is measured by benchmarks/ks_gate.py
  (docs/methods/ks.md, "Ablation: the perturbation-aware gate").
- Eq. 2/6 write q = softmax(z_s / T) for one-of-K classes; AUs are U binary labels, so q, p and
  w are per-AU sigmoids and KL is the sum of U Bernoulli KLs.
- p_a^t is the pooled 512-d base feature itself; the paper's second group of "project heads"
  is the students' first linear layer. Supplementary 1.1 states that p_a has p_b's width, U (Fig.
  2 draws it so); a U-wide p_a would leave the students a U -> hidden -> U map.
- S_a and T_b end with a LayerNorm after their last block (ViT's final norm), not in the text;
  their blocks are pre-norm (a LayerNorm before attention and before the feed-forward layer),
  which the text does not say either. Sec. 2.1.2 prints O_Attention = MultiHead(Q, K, V) V + D_s
  (V applied twice, read as a typo); ours is the standard MultiHead(LN(x)) + x.
- Alg. 1 line 21's MeanValue(O_b, O_a) is taken over probabilities (the mean of the two
  sigmoids); at the 0.5 threshold averaging logits would give the same decisions, not the same
  scores.
- Dense testing: the evaluator tiles each test sequence into clips with stride n (the last clip
  ending at the sequence end) and a frame seen twice gets the mean; the supplementary's "same
  key-frame position shifting ... in inference" (each frame at every position, averaged) is not
  done, since the test network has no key frame and costs n times more.
- A training sequence shorter than n repeats its last frame to fill the clip; those copies get
  pseudo-labels and go to g like any frame. A shuffle that only moves copies of one frame among
  themselves (the same file row, batch["index"], at every position) leaves the clip as it was
  while labelled shuffled: that pair (the clip and its copy) is left out of L_self
  (`shuffle_keeps_clip`).
- Key positions: the sampler asks for m = batch number mod n for every clip of a batch, but a
  clip whose key frame lies near a sequence end is shifted to stay inside its sequence, and its
  key frame then sits at another position (nearer the clip's first or last); over an epoch the
  positions, and the active students, are not balanced as supplementary 1.2 says they are.
  Under a sparse-label protocol the imbalance can be total: the protocol keeps every 1/r-th
  frame counted across sequences (aubench.data.samplers), so when a sequence's length is a
  multiple of 1/r every kept label falls on the same frame of its sequence, the first, and its
  clip is shifted to start there: key position 0 always. On the label-ratio sweep's 20-frame
  sequences that is 100% of key frames at position 0 at r = 0.05 (60% at 0.02, 40% at 0.2; 60%
  on the demo's 10-frame sequences at 0.2); students 1..n-1 are then never active, get no label
  and no L_skd, only their own pseudo-labels (and collapse to one output per AU, as the gate
  measurement shows). On long sequences (BP4D's) each position gets about 1/n of the key frames.
  The sampler is shared by every method (which frames are labeled is the protocol's), so it is
  left as it is here and the measurement says so.
- Numbers the paper leaves open: 2 blocks each in S_a and T_b ("multiple identical blocks"),
  MLP width 4 W, dropout 0.1, student MLPs 512 -> 64 -> U (each smaller than S_a, as the paper
  asks), g's hidden width 64; the paper preset's SGD momentum 0.9, weight decay 5e-4, batch 16,
  constant learning rate and colour-jitter strength 0.3.
- The paper's ResNet-18 is ImageNet-initialised; aubench loads those weights from `--pretrained`
  (e.g. `timm:resnet18.tv_in1k`), otherwise the base starts from random initialisation and the
  result's "initialisation" field says so.

Size at the paper preset (U = 12): 11.46M parameters, all but g's 1.7K in the inference network
(ResNet-18 base 11.18M, S_a 0.11M, five students 0.17M, T_b 7K). The paper reports 15.6M in its
text and about 25M in its supplementary without giving the widths that make them up; with the
students' outputs as T_b's tokens (width U), the relation encoders are small. Tiny preset: 0.78M.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aubench.models.backbones import backbone_stride, create_backbone
from aubench.models.base import WEIGHTS_SETTING, AUMethod, Preset, TrainState, model_settings, register_method
from aubench.ops import make_shuffle_permutations, temporal_shuffle_features

RAMP_FORMS = ("paper", "laine")


# ----------------------------------------------------------------------------------- losses

def gaussian_rampup(epoch: float, omega: float = 2.0, mu: float = 0.0, sigma: float = 5.0,
                    form: str = "paper") -> float:
    """Eq. 9, with the epoch x clamped to [mu, mu + sigma] (1 from mu + sigma on).

    "paper": exp(-omega (1 - (x - mu)^2 / sigma^2)) as printed (omega 2, mu 0, sigma 5:
    0.135, 0.147, 0.186, 0.278, 0.487, 1 for epochs 0..5).
    "laine": exp(-omega (1 - (x - mu) / sigma)^2), Laine & Aila's ramp-up
    (0.135, 0.278, 0.487, 0.726, 0.923, 1).
    """
    if sigma <= 0:
        raise ValueError(f"gaussian_rampup: sigma must be > 0, got {sigma}")
    t = (min(max(epoch, mu), mu + sigma) - mu) / sigma
    if form == "paper":
        return math.exp(-omega * (1.0 - t * t))
    if form == "laine":
        return math.exp(-omega * (1.0 - t) ** 2)
    raise ValueError(f"gaussian_rampup: form must be one of {RAMP_FORMS}, got {form!r}")


def weighted_bce(logits: torch.Tensor, target: torch.Tensor, au_weights: torch.Tensor) -> torch.Tensor:
    """Eq. 3: sum over AUs of w_u BCE(z_u, y_u) on known labels (y >= 0), mean over the frames
    that have a known label. logits/target (..., U), au_weights (U,). Zero (with a graph) when
    nothing is known."""
    known = target >= 0
    per_entry = F.binary_cross_entropy_with_logits(logits, target.clamp(min=0), reduction="none")
    per_frame = (per_entry * au_weights * known).sum(-1)
    frames = known.any(-1)
    return per_frame.sum() / frames.sum().clamp(min=1)


def bernoulli_kl(target_prob: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(Bernoulli(q) || Bernoulli(sigmoid(z))), the multi-label form of KL."""
    q = target_prob
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    return (torch.xlogy(q, q) - q * log_p) + (torch.xlogy(1 - q, 1 - q) - (1 - q) * log_not_p)


def mutual_kd_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """Eq. 2 and Eq. 6: T^2 [KL(q || p) + KL(q || w)], q = sigmoid(mean(z_p, z_w) / T) their
    (detached) ensemble; summed over AUs, mean over the (b) samples. (b, U) logits each."""
    t = temperature
    ensemble = torch.sigmoid(0.5 * (teacher_logits + student_logits) / t).detach()
    kl = bernoulli_kl(ensemble, teacher_logits / t) + bernoulli_kl(ensemble, student_logits / t)
    return t * t * kl.sum(-1).mean()


def pseudo_labels(student_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 4's y-hat: the most probable class of each binary AU, 1[sigmoid(z) >= 0.5] (no gradient)."""
    return (student_logits.detach() >= 0).float()


def semi_loss(student_logits: torch.Tensor, unlabeled: torch.Tensor, au_weights: torch.Tensor) -> torch.Tensor:
    """Eq. 5: per clip the sum over its unlabeled frames t of L_pd (Eq. 4: the weighted BCE of
    student t against its own pseudo-labels), mean over the clips. student_logits (b, n, U),
    unlabeled bool (b, n) (gated clips have no unlabeled frame left)."""
    per_entry = F.binary_cross_entropy_with_logits(student_logits, pseudo_labels(student_logits),
                                                   reduction="none")
    per_frame = (per_entry * au_weights).sum(-1) * unlabeled
    return per_frame.sum() / student_logits.shape[0]


def total_loss(au: torch.Tensor, spatial: torch.Tensor, temporal: torch.Tensor, self_sup: torch.Tensor,
               semi: torch.Tensor, ramp: float, ramp_weight: float = 0.5) -> torch.Tensor:
    """Eq. 8: L_AU + L_s + lambda w_ramp (L_t + L_self + L_semi)."""
    return au + spatial + ramp_weight * ramp * (temporal + self_sup + semi)


# ----------------------------------------------------------------------------------- modules

class RelationEncoder(nn.Module):
    """S_a / T_b body: learnable positions + pre-norm transformer blocks (LayerNorm, multi-head
    self-attention, residual; LayerNorm, GELU MLP, residual), then a LayerNorm."""

    def __init__(self, tokens: int, width: int, heads: int, layers: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.positions = nn.Parameter(torch.randn(tokens, width) * 0.02)
        block = nn.TransformerEncoderLayer(width, heads, mlp_ratio * width, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, norm=nn.LayerNorm(width),
                                            enable_nested_tensor=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        if length > self.positions.shape[0]:
            raise ValueError(f"relation encoder: {length} tokens, built for at most {self.positions.shape[0]}")
        return self.blocks(tokens + self.positions[:length])


class PerAUHead(nn.Module):
    """One linear classifier per AU token: (N, U, W) -> (N, U)."""

    def __init__(self, num_aus: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_aus, width) / math.sqrt(width))
        self.bias = nn.Parameter(torch.zeros(num_aus))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return (tokens * self.weight).sum(-1) + self.bias


class SpatialTeacher(nn.Module):
    """S_a: U linear heads on the pooled feature give the AU-specific features f_s^u (each with
    its supervised classifier), related by a transformer over the U tokens and read per AU."""

    def __init__(self, in_channels: int, num_aus: int, width: int, heads: int, layers: int,
                 mlp_ratio: int, dropout: float):
        super().__init__()
        self.num_aus, self.width = num_aus, width
        self.au_features = nn.Linear(in_channels, num_aus * width)   # U heads C -> W, stored as one
        self.au_classifier = PerAUHead(num_aus, width)
        self.encoder = RelationEncoder(num_aus, width, heads, layers, mlp_ratio, dropout)
        self.head = PerAUHead(num_aus, width)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pooled (N, C) -> (AU-specific head logits, S_a logits), each (N, U)."""
        tokens = self.au_features(pooled).view(-1, self.num_aus, self.width)
        return self.au_classifier(tokens), self.head(self.encoder(tokens))


class SpatialStudents(nn.Module):
    """S_b: one small MLP per clip position; student t maps frame t's p_a (C) to p_b (U logits)."""

    def __init__(self, in_channels: int, num_aus: int, clip_len: int, hidden: int):
        super().__init__()
        self.students = nn.ModuleList(
            nn.Sequential(nn.Linear(in_channels, hidden), nn.GELU(), nn.Linear(hidden, num_aus))
            for _ in range(clip_len))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.shape[1] > len(self.students):
            raise ValueError(f"spatial students: clips of {frames.shape[1]} frames, built for {len(self.students)}")
        return torch.stack([self.students[t](frames[:, t]) for t in range(frames.shape[1])], dim=1)


class TemporalTeacher(nn.Module):
    """T_b: the students' outputs D_b (b, n, U) as frame tokens -> U logits per frame."""

    def __init__(self, num_aus: int, width: int, clip_len: int, heads: int, layers: int,
                 mlp_ratio: int, dropout: float):
        super().__init__()
        self.embed = nn.Identity() if width == num_aus else nn.Linear(num_aus, width)
        self.encoder = RelationEncoder(clip_len, width, heads, layers, mlp_ratio, dropout)
        self.classifier = nn.Linear(width, num_aus)

    def forward(self, student_logits: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(self.embed(student_logits)))


class PerturbationClassifier(nn.Module):
    """g: real vs temporally shuffled D_b (N, n, U) -> logit of "real order" (N,), from per-frame
    [d_t, d_t - d_{t-1}] (d_{-1} := d_0), a per-frame MLP and the mean over the clip."""

    def __init__(self, num_aus: int, hidden: int):
        super().__init__()
        self.frame_mlp = nn.Sequential(nn.Linear(2 * num_aus, hidden), nn.GELU())
        self.out = nn.Linear(hidden, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        previous = torch.cat([tokens[:, :1], tokens[:, :-1]], dim=1)
        inputs = torch.cat([tokens, tokens - previous], dim=-1)
        return self.out(self.frame_mlp(inputs).mean(dim=1)).squeeze(-1)


def shuffle_keeps_clip(rows: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the shuffle perm (B, n) leaves the clip as it was, every position holding the
    same file row (rows (B, n), batch["index"]) as before; only copies of a frame repeated to fill
    a short sequence can make a non-identity permutation do that."""
    return (rows.gather(1, perm) == rows).all(dim=1)


class KSNetwork(nn.Module):
    """The test-time network: base, Spatial Teacher, Spatial Students, Temporal Teacher."""

    def __init__(self, backbone: nn.Module, spatial: SpatialTeacher, students: SpatialStudents,
                 temporal: TemporalTeacher):
        super().__init__()
        self.backbone, self.spatial, self.students, self.temporal = backbone, spatial, students, temporal

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> GAP of the base's last feature map (N, C)."""
        feature_map = self.backbone(images)
        if feature_map.dim() != 4:
            raise ValueError(f"KS backbone must return feature maps (N,C,h,w), got {tuple(feature_map.shape)}")
        return feature_map.mean(dim=(2, 3))

    def clip_outputs(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        """pooled (b, n, C) -> every frame's S_a logits, students' logits (D_b) and T_b logits."""
        b, n = pooled.shape[:2]
        _, spatial = self.spatial(pooled.flatten(0, 1))
        students = self.students(pooled)
        return {"spatial": spatial.view(b, n, -1), "students": students,
                "temporal": self.temporal(students)}

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """AU probabilities (b, n, U): mean of S_a's and T_b's, frame by frame."""
        b, n = clips.shape[:2]
        out = self.clip_outputs(self.pooled(clips.flatten(0, 1)).view(b, n, -1))
        return 0.5 * (torch.sigmoid(out["spatial"]) + torch.sigmoid(out["temporal"]))


# ----------------------------------------------------------------------------------- method

_DEFAULTS: dict[str, Any] = {
    "backbone": "resnet18", "backbone_kwargs": {}, "pretrained_path": None,
    "token_width": None,            # None: smallest multiple of `heads` >= num_aus
    "heads": 8, "spatial_layers": 2, "temporal_layers": 2, "mlp_ratio": 4,
    "student_hidden": 64, "perturb_hidden": 64, "dropout": 0.1,
    "alpha": 0.5, "lambda": 0.5, "temperature": 1.0,              # Eq. 7, Eq. 8, Eq. 2/6
    "ramp_form": "paper", "ramp_omega": 2.0, "ramp_mu": 0.0, "ramp_sigma": 5.0,   # Eq. 9
    "gate_epoch": 2,                # L_semi off in epochs 0-1, classifier-gated from the third
    "augment": True,                # clip-consistent rotation / flip / colour jitter (data layer)
    "seed": 0,                      # generator of the shuffle permutations
}


def _paper_preset() -> Preset:
    # Supplementary 2.1: rotation in [-45, 45] degrees, horizontal flip (p 0.5), colour jitter.
    # The face is resized to 224 without a crop (Section 3.2 crops the face region, then resizes).
    return Preset(name="paper", image_size=224, epochs=50, batch_size=16, optimizer="sgd", lr=0.01,
                  momentum=0.9, weight_decay=5e-4, schedule="constant", clip_len=5, rotation=45.0,
                  paper_init="ImageNet",
                  source="KS Section 3.2 (224 px, SGD lr 0.01, 50 epochs, 5-frame clips, lambda 0.5), "
                         "Section 2.1.1 (ImageNet ResNet-18), supplementary 2.1 (rotation 45, flip, jitter); "
                         "batch, momentum, weight decay ours",
                  model=dict(_DEFAULTS))


def _tiny_preset() -> Preset:
    # The same architecture and losses at CPU size: ResNet-18 layout at a quarter of the width,
    # 64 px (2x2 feature map), narrow students and classifier; no augmentation. AdamW instead of
    # the paper's SGD: at this scale SGD (lr 0.05, 10 epochs) left the students too weak for their
    # pseudo-labels to help (aubench demo data, fold 1). 14 epochs (20 before RRL joined the demo
    # and its budget was shared out).
    model = dict(_DEFAULTS, backbone_kwargs={"channels": (16, 32, 64, 128), "stem_width": 16},
                 student_hidden=32, perturb_hidden=32, augment=False)
    return Preset(name="tiny", image_size=64, epochs=14, batch_size=8, optimizer="adamw", lr=2e-3,
                  weight_decay=1e-4, schedule="cosine", clip_len=5, model=model)


@register_method("ks")
class KnowledgeSpreader(AUMethod):
    """Knowledge-Spreader; see the module docstring for the architecture and losses."""

    input_kind = "clip"
    key_view = True
    presets = {"paper": _paper_preset(), "tiny": _tiny_preset()}
    pretrained_parts = {"backbone": "the ResNet-18 base (ImageNet weights, e.g. timm:resnet18.tv_in1k at paper)"}

    def __init__(self, num_aus: int, preset: Preset, class_weights: torch.Tensor | None = None):
        super().__init__(num_aus, preset, class_weights)
        cfg = model_settings("ks", preset, _DEFAULTS)
        if preset.clip_len < 2:
            raise ValueError(f"ks: clip_len must be >= 2 (one key frame plus unlabeled ones), got {preset.clip_len}")
        if cfg["ramp_form"] not in RAMP_FORMS:
            raise ValueError(f"ks: ramp_form must be one of {RAMP_FORMS}, got {cfg['ramp_form']!r}")
        heads = int(cfg["heads"])
        width = cfg["token_width"] or heads * math.ceil(num_aus / heads)
        if width % heads:
            raise ValueError(f"ks: token_width {width} is not divisible by heads {heads}")
        self.cfg, self.clip_len = cfg, preset.clip_len

        backbone = create_backbone(cfg["backbone"], cfg[WEIGHTS_SETTING].get("backbone"), num_classes=0,
                                   global_pool="", **cfg["backbone_kwargs"])
        channels = backbone.num_features
        blocks = dict(heads=heads, mlp_ratio=int(cfg["mlp_ratio"]), dropout=cfg["dropout"])
        self.net = KSNetwork(
            backbone,
            SpatialTeacher(channels, num_aus, width, layers=cfg["spatial_layers"], **blocks),
            SpatialStudents(channels, num_aus, preset.clip_len, cfg["student_hidden"]),
            TemporalTeacher(num_aus, width, preset.clip_len, layers=cfg["temporal_layers"], **blocks))
        self.perturbation = PerturbationClassifier(num_aus, cfg["perturb_hidden"])
        self._shuffle_generator = torch.Generator().manual_seed(int(cfg["seed"]))

    def inference_model(self) -> nn.Module:
        return self.net

    @classmethod
    def min_image_size(cls, preset: Preset) -> int:
        cfg = {**_DEFAULTS, **preset.model}
        return backbone_stride(cfg["backbone"], num_classes=0, global_pool="", **cfg["backbone_kwargs"])

    def _clips(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        images = batch["image"]
        if images.dim() != 5:
            raise ValueError(f"ks expects clip batches image (B,n,3,H,W), got {tuple(images.shape)}")
        return images

    def _frame_rows(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch["index"] (B, n): the file row of every frame of every clip."""
        rows = batch.get("index")
        shape = tuple(batch["image"].shape[:2])
        if not isinstance(rows, torch.Tensor) or tuple(rows.shape) != shape:
            raise ValueError(f"ks: batch['index'] must hold the file row of every frame, shape {shape}, "
                             f"got {None if rows is None else tuple(torch.as_tensor(rows).shape)}")
        return rows.to(batch["image"].device)

    def active_positions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The key-frame position m of every clip (B,): the clip's active student.

        The sampler asks for one m per batch, shifting every batch (m = batch number mod n); a
        clip whose key frame lies near a sequence end is shifted to stay inside its sequence, so
        its key frame, and with it its active student, may sit at another position.
        """
        key = torch.as_tensor(batch["key_position"]).reshape(-1).long()
        if key.numel() != batch["image"].shape[0]:
            raise ValueError(f"ks: batch['key_position'] must hold one position per clip "
                             f"({batch['image'].shape[0]}), got {key.numel()}")
        if bool(((key < 0) | (key >= self.clip_len)).any()):
            raise ValueError(f"ks: key_position {key.tolist()} outside the clip of {self.clip_len} frames")
        return key.to(batch["image"].device)

    def order_logits(self, clip_pooled: torch.Tensor, perm: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """g on the clips and their shuffled copies: (logits of "real order" (2B,), labels (2B,),
        1 = real order, the students' outputs on both (2B, n, U): rows :B are D_b, rows B: D_pb).

        clip_pooled (B, n, C): p_a. perm (B, n): one non-identity permutation per clip, from
        `make_shuffle_permutations` (not checked again). The copy shuffles p_a, and every
        student reads its own position of both, so position identity says nothing about order.
        """
        both, labels = temporal_shuffle_features(clip_pooled, perm, validate=False)
        students = self.net.students(both)
        return self.perturbation(students), labels, students

    def gate(self, real_order_logits: torch.Tensor, epoch: int) -> torch.Tensor:
        """(B,) bool: the clips whose pseudo-labels L_semi uses (Alg. 1 lines 17-19): none before
        `gate_epoch`, then those whose real-order D_b g calls real (P(real) >= 0.5)."""
        if epoch < self.cfg["gate_epoch"]:
            return torch.zeros_like(real_order_logits, dtype=torch.bool)
        return real_order_logits.detach() >= 0

    def ramp(self, epoch: int) -> float:
        cfg = self.cfg
        return gaussian_rampup(epoch, cfg["ramp_omega"], cfg["ramp_mu"], cfg["ramp_sigma"], cfg["ramp_form"])

    def training_step(self, batch: dict[str, torch.Tensor], state: TrainState) -> dict[str, torch.Tensor]:
        clips, labels = self._clips(batch), batch["label"]
        b, n = clips.shape[:2]
        if n != self.clip_len:
            raise ValueError(f"ks: training clips must have {self.clip_len} frames (one student each), got {n}")
        key = self.active_positions(batch)
        clip = torch.arange(b, device=clips.device)
        key_image = batch.get("key_image")
        if key_image is None:  # no second view: branch A sees the clip's own key frame
            key_image = clips[clip, key]
        cfg, weights = self.cfg, self.class_weights

        # One pass of the shared base over the clips (branch B) and the key views (branch A).
        pooled = self.net.pooled(torch.cat([clips.flatten(0, 1), key_image]))
        clip_pooled, key_pooled = pooled[:b * n].view(b, n, -1), pooled[b * n:]
        # The students run once on the clips and their shuffled copies (g's inputs, L_self).
        perm = make_shuffle_permutations(b, n, generator=self._shuffle_generator, device=clips.device)
        order_logits, order_labels, both = self.order_logits(clip_pooled, perm)
        students = both[:b]                                             # D_b (b, n, U)
        temporal = self.net.temporal(students)                          # O_b (b, n, U)
        au_logits, spatial = self.net.spatial(key_pooled)               # heads, O_a (b, U)
        key_labels = labels[clip, key]

        loss_au = weighted_bce(au_logits, key_labels, weights)
        spatial_sup = weighted_bce(spatial, key_labels, weights)
        student_key = students[clip, key]
        skd = mutual_kd_loss(spatial, student_key, cfg["temperature"])
        loss_s = spatial_sup + weighted_bce(student_key, key_labels, weights) + cfg["alpha"] * skd
        temporal_key = temporal[clip, key]
        tkd = mutual_kd_loss(temporal_key, spatial, cfg["temperature"])
        loss_t = weighted_bce(temporal_key, key_labels, weights) + spatial_sup + cfg["alpha"] * tkd

        # A pair whose shuffle left the clip as it was (repeated frames) says nothing about order.
        informative = (~shuffle_keeps_clip(self._frame_rows(batch), perm)).repeat(2).float()
        per_clip = F.binary_cross_entropy_with_logits(order_logits, order_labels, reduction="none")
        loss_self = (per_clip * informative).sum() / informative.sum().clamp(min=1)

        unlabeled = torch.ones(b, n, dtype=torch.bool, device=clips.device)
        unlabeled[clip, key] = False
        kept = self.gate(order_logits[:b], state.epoch)
        semi = semi_loss(students, unlabeled & kept.unsqueeze(1), weights)

        ramp = self.ramp(state.epoch)
        loss = total_loss(loss_au, loss_s, loss_t, loss_self, semi, ramp, cfg["lambda"])
        # The parts keep their graphs (tests take gradients of each); the engine logs their values.
        return {"loss": loss, "au": loss_au, "spatial": loss_s, "temporal": loss_t, "skd": skd, "tkd": tkd,
                "self": loss_self, "semi": semi, "kept_clips": kept.float().mean(), "ramp": torch.tensor(ramp)}

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        images = batch["image"]
        if images.dim() == 4:  # a frame batch: clips of one frame
            return self.net(images.unsqueeze(1)).squeeze(1)
        return self.net(self._clips(batch))
