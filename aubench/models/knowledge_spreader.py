"""Knowledge-Spreader (KS): semi-supervised AU detection from sparsely labeled clips.

Li, Zhang, Wang, Yin, "Knowledge-Spreader: Learning semi-supervised facial action dynamics by
consistifying knowledge granularity", ICCV 2023. Each training clip holds n = 5 consecutive
frames of which only the key frame (at position m) carries labels.

Network (one ResNet-18 base shared by both branches, 512 x 7 x 7 at 224 px):
- spatial branch: U AU-specific features, each a 1x1 convolution of the feature map (one
  projection per AU, stored as one 1x1 conv with U*W output channels, + BN + ReLU) followed by
  global average pooling. These U tokens of width W go through the Spatial Teacher S_a (a transformer
  encoder with learnable AU positional embeddings, no class token, 8 heads) and one linear head
  per AU reads each refined token: the spatial logits. Our reading of the paper: the per-AU
  heads are S_a's output layer, so "the head outputs" and "S_a's outputs" are the same thing.
- token width W: the paper sets W = U, which 8 heads cannot divide for U = 12 (BP4D; DISFA's
  8 AUs happen to work); we use the smallest multiple of 8 >= U (16 for BP4D), overridable
  with model["token_width"].
- frame-specific features: global average pooling of the same feature map (512-d).
- n Spatial Students S_b: one small MLP per clip position, frame features -> U logits.
- Temporal Teacher T_b: a transformer encoder over the n frame tokens (frame positional
  embeddings) -> U logits per frame.
- perturbation classifier: a per-frame MLP over [d_t, d_t - d_{t-1}] (aubench.ops
  temporal_shuffle_features), mean-pooled over the clip, -> logit of "real temporal order".

Training (one batch; each clip's active student is the one at its key position m =
batch["key_position"], which the sampler shifts every batch):
- Eq. 3  L_sup: class-weighted BCE (AU weights = the fold's class_weight, from occurrence rates)
         on every known label, for the spatial and the temporal outputs.
- Eq. 2  L_kd: KL from the mean of teacher and active-student probabilities (T = 1, detached)
         to the active student S_b^m, on each clip's key frame; S_a's knowledge spreads to S_b^m.
- Eq. 4  pseudo-labels of the unlabeled frames t != m: 1[sigmoid(S_b^t(f_t)) >= 0.5].
- Eq. 5  L_semi: weighted BCE of T_b's outputs against those pseudo-labels (n-1 frames).
- Eq. 6  L_tkd: KL from T_b's probabilities (detached) to S_a's on every frame.
- perturbation-aware pseudo-labelling: the classifier learns real vs shuffled clips from the
  first epoch (its own BCE, on detached frame features so it judges the base without steering
  it); from epoch `gate_epoch` (2, i.e. the third epoch) the pseudo-labels of a clip are used
  only when the classifier's argmax says "real order" (P(real) >= 0.5) for that clip. We gate
  (keep/discard) rather than weight by the probability: no threshold to tune.
- Eq. 8  L = L_sup + lambda * L_kd + r(epoch) * (L_semi + alpha * L_tkd) + L_perturb, with
         lambda = alpha = 0.5 and the Gaussian ramp-up of Eq. 9 (`gaussian_rampup`).
Inference: mean of the spatial and temporal probabilities.

Size at the paper preset (U = 12): inference network 14.44M parameters (ResNet-18 base 11.18M,
S_a 0.10M, T_b 3.16M); with the students (0.67M) and the perturbation classifier (0.26M) the
training module has 15.37M (the paper reports 15.6M). Tiny preset: 0.88M inference, 0.94M in all.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aubench.models.backbones import create_backbone
from aubench.models.base import AUMethod, Preset, TrainState, register_method
from aubench.ops import make_shuffle_permutations, temporal_shuffle_features


# ----------------------------------------------------------------------------------- losses

def gaussian_rampup(epoch: float, omega: float = 2.0, mu: float = 0.0, sigma: float = 5.0) -> float:
    """Eq. 9: r(t) = exp(-omega * (1 - clamp((t - mu) / sigma, 0, 1))^2).

    exp(-omega) up to epoch mu, rising to 1 at epoch mu + sigma and staying there
    (omega 2, mu 0, sigma 5: 0.135, 0.278, 0.487, 0.726, 0.923, 1 for epochs 0..5).
    """
    if sigma <= 0:
        raise ValueError(f"gaussian_rampup: sigma must be > 0, got {sigma}")
    progress = min(max((epoch - mu) / sigma, 0.0), 1.0)
    return math.exp(-omega * (1.0 - progress) ** 2)


def weighted_bce(logits: torch.Tensor, target: torch.Tensor, au_weights: torch.Tensor,
                 frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 3: mean over known entries (target >= 0, and frame_mask) of w_i * BCE(p_i, y_i).

    logits/target (..., U), au_weights (U,), frame_mask bool (...,) selects frames. Zero (with a
    graph) when nothing is known.
    """
    known = target >= 0
    if frame_mask is not None:
        known = known & frame_mask.unsqueeze(-1)
    per_entry = F.binary_cross_entropy_with_logits(logits, target.clamp(min=0), reduction="none")
    per_entry = per_entry * au_weights
    return (per_entry * known).sum() / known.sum().clamp(min=1)


def bernoulli_kl(target_prob: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(Bernoulli(q) || Bernoulli(sigmoid(z))), the multi-label form of KL."""
    q = target_prob
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    return (torch.xlogy(q, q) - q * log_p) + (torch.xlogy(1 - q, 1 - q) - (1 - q) * log_not_p)


def spatial_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """Eq. 2: KL from the (detached) mean of teacher and student probabilities to the student."""
    student = student_logits / temperature
    target = 0.5 * (torch.sigmoid(teacher_logits / temperature) + torch.sigmoid(student))
    return temperature ** 2 * bernoulli_kl(target.detach(), student).mean()


def pseudo_labels(student_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 4: hard pseudo-labels 1[sigmoid(z) >= 0.5] (no gradient)."""
    return (student_logits.detach() >= 0).float()


def semi_loss(temporal_logits: torch.Tensor, pseudo: torch.Tensor, au_weights: torch.Tensor,
              unlabeled: torch.Tensor) -> torch.Tensor:
    """Eq. 5: weighted BCE of the temporal teacher on the (kept) unlabeled frames."""
    return weighted_bce(temporal_logits, pseudo, au_weights, frame_mask=unlabeled)


def temporal_kd_loss(spatial_logits: torch.Tensor, temporal_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 6: KL from the temporal teacher's (detached) probabilities to the spatial teacher's."""
    return bernoulli_kl(torch.sigmoid(temporal_logits).detach(), spatial_logits).mean()


def total_loss(sup: torch.Tensor, kd: torch.Tensor, semi: torch.Tensor, tkd: torch.Tensor,
               perturb: torch.Tensor, ramp: float, kd_weight: float = 0.5,
               tkd_weight: float = 0.5) -> torch.Tensor:
    """Eq. 8: L_sup + lambda L_kd + r(t) (L_semi + alpha L_tkd), plus the classifier's BCE."""
    return sup + kd_weight * kd + ramp * (semi + tkd_weight * tkd) + perturb


# ----------------------------------------------------------------------------------- modules

def _transformer(width: int, heads: int, layers: int, feedforward: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, heads, feedforward, dropout, batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class PerAUHead(nn.Module):
    """One linear classifier per AU token: (N, U, W) -> (N, U)."""

    def __init__(self, num_aus: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_aus, width) / math.sqrt(width))
        self.bias = nn.Parameter(torch.zeros(num_aus))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return (tokens * self.weight).sum(-1) + self.bias


class SpatialTeacher(nn.Module):
    """S_a: AU-specific features of a feature map, related by a transformer, read per AU."""

    def __init__(self, in_channels: int, num_aus: int, width: int, heads: int, layers: int,
                 dropout: float):
        super().__init__()
        self.num_aus, self.width = num_aus, width
        # U separate 1x1 projections, stored as one conv with U*W outputs.
        self.au_projection = nn.Sequential(nn.Conv2d(in_channels, num_aus * width, 1, bias=False),
                                           nn.BatchNorm2d(num_aus * width), nn.ReLU(inplace=True))
        self.positions = nn.Parameter(torch.randn(num_aus, width) * 0.02)
        self.encoder = _transformer(width, heads, layers, 4 * width, dropout)
        self.heads = PerAUHead(num_aus, width)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        tokens = self.au_projection(feature_map).mean(dim=(2, 3))        # GAP per AU
        tokens = tokens.view(-1, self.num_aus, self.width) + self.positions
        return self.heads(self.encoder(tokens))


class TemporalTeacher(nn.Module):
    """T_b: a transformer over the n frame tokens of a clip -> U logits per frame."""

    def __init__(self, width: int, num_aus: int, clip_len: int, heads: int, layers: int,
                 feedforward: int, dropout: float):
        super().__init__()
        self.positions = nn.Parameter(torch.randn(clip_len, width) * 0.02)
        self.encoder = _transformer(width, heads, layers, feedforward, dropout)
        self.classifier = nn.Linear(width, num_aus)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        n = frames.shape[1]
        if n > self.positions.shape[0]:
            raise ValueError(f"temporal teacher: clips of {n} frames, built for at most {self.positions.shape[0]}")
        return self.classifier(self.encoder(frames + self.positions[:n]))


class SpatialStudents(nn.Module):
    """S_b: one MLP per clip position; student t reads frame t."""

    def __init__(self, width: int, num_aus: int, clip_len: int, hidden: int):
        super().__init__()
        self.students = nn.ModuleList(
            nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_aus))
            for _ in range(clip_len))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.stack([student(frames[:, t]) for t, student in enumerate(self.students)], dim=1)


class PerturbationClassifier(nn.Module):
    """Real vs temporally shuffled clip, from per-frame [d_t, d_t - d_{t-1}] inputs (2C)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.frame_mlp = nn.Sequential(nn.Linear(2 * width, hidden), nn.ReLU(inplace=True))
        self.out = nn.Linear(hidden, 1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.out(self.frame_mlp(inputs).mean(dim=1)).squeeze(-1)


class KSNetwork(nn.Module):
    """The test-time network: base, Spatial Teacher and Temporal Teacher."""

    def __init__(self, backbone: nn.Module, spatial: SpatialTeacher, temporal: TemporalTeacher):
        super().__init__()
        self.backbone, self.spatial, self.temporal = backbone, spatial, temporal

    def features(self, clips: torch.Tensor):
        """clips (B,n,3,H,W) -> frame features (B,n,C), spatial and temporal logits (B,n,U)."""
        b, n = clips.shape[:2]
        feature_map = self.backbone(clips.flatten(0, 1))
        if feature_map.dim() != 4:
            raise ValueError(f"KS backbone must return feature maps (N,C,h,w), got {tuple(feature_map.shape)}")
        frames = feature_map.mean(dim=(2, 3)).view(b, n, -1)
        spatial = self.spatial(feature_map).view(b, n, -1)
        return frames, spatial, self.temporal(frames)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """AU probabilities (B,n,U): mean of the spatial and temporal teachers."""
        _, spatial, temporal = self.features(clips)
        return 0.5 * (torch.sigmoid(spatial) + torch.sigmoid(temporal))


# ----------------------------------------------------------------------------------- method

_DEFAULTS: dict[str, Any] = {
    "backbone": "resnet18", "backbone_kwargs": {}, "pretrained_path": None,
    "token_width": None,            # None: smallest multiple of `heads` >= num_aus
    "heads": 8, "spatial_layers": 1, "temporal_layers": 1, "temporal_feedforward": 2048,
    "student_hidden": 256, "perturb_hidden": 256, "dropout": 0.1,
    "kd_weight": 0.5, "tkd_weight": 0.5, "temperature": 1.0,      # lambda, alpha, T
    "ramp_omega": 2.0, "ramp_mu": 0.0, "ramp_sigma": 5.0,         # Eq. 9
    "gate_epoch": 2,                # classifier gates pseudo-labels from the third epoch
    "augment": True,                # clip-consistent rotation / flip / colour jitter (data layer)
    "seed": 0,                      # generator of the shuffle permutations
}


def _paper_preset() -> Preset:
    return Preset(name="paper", image_size=224, epochs=50, batch_size=16, optimizer="sgd", lr=0.01,
                  momentum=0.9, weight_decay=5e-4, schedule="constant", clip_len=5,
                  model=dict(_DEFAULTS))


def _tiny_preset() -> Preset:
    # The same architecture and losses at CPU size: ResNet-18 layout at a quarter of the width,
    # 64 px (2x2 feature map), narrow students and classifier. AdamW and 20 epochs instead of the
    # paper's SGD: on `aubench demo`'s data (fold 1, label ratio 0.2, all-positive mean F1 60.1),
    # SGD at lr 0.05 for 10 epochs left the students so weak (mean F1 36) that their pseudo-labels
    # pulled KS down to 49.4 (with the AU movements drawn x2); AdamW gave 56.7 after 10
    # epochs and 67.5 after 20 (students 65.8).
    model = dict(_DEFAULTS, backbone_kwargs={"channels": (16, 32, 64, 128), "stem_width": 16},
                 temporal_feedforward=256, student_hidden=64, perturb_hidden=64, augment=False)
    return Preset(name="tiny", image_size=64, epochs=20, batch_size=8, optimizer="adamw", lr=2e-3,
                  weight_decay=1e-4, schedule="cosine", clip_len=5, model=model)


@register_method("ks")
class KnowledgeSpreader(AUMethod):
    """Knowledge-Spreader; see the module docstring for the architecture and losses."""

    input_kind = "clip"
    presets = {"paper": _paper_preset(), "tiny": _tiny_preset()}

    def __init__(self, num_aus: int, preset: Preset, class_weights: torch.Tensor | None = None):
        super().__init__(num_aus, preset, class_weights)
        unknown = sorted(set(preset.model) - set(_DEFAULTS))
        if unknown:
            raise ValueError(f"ks: unknown model settings {unknown}; known: {sorted(_DEFAULTS)}")
        cfg = {**_DEFAULTS, **preset.model}
        if preset.clip_len < 2:
            raise ValueError(f"ks: clip_len must be >= 2 (one key frame plus unlabeled ones), got {preset.clip_len}")
        heads = int(cfg["heads"])
        width = cfg["token_width"] or heads * math.ceil(num_aus / heads)
        if width % heads:
            raise ValueError(f"ks: token_width {width} is not divisible by heads {heads}")
        self.cfg, self.clip_len = cfg, preset.clip_len

        backbone = create_backbone(cfg["backbone"], cfg["pretrained_path"], num_classes=0,
                                   global_pool="", **cfg["backbone_kwargs"])
        channels = backbone.num_features
        self.net = KSNetwork(
            backbone,
            SpatialTeacher(channels, num_aus, width, heads, cfg["spatial_layers"], cfg["dropout"]),
            TemporalTeacher(channels, num_aus, preset.clip_len, heads, cfg["temporal_layers"],
                            cfg["temporal_feedforward"], cfg["dropout"]))
        self.students = SpatialStudents(channels, num_aus, preset.clip_len, cfg["student_hidden"])
        self.perturbation = PerturbationClassifier(channels, cfg["perturb_hidden"])
        self._shuffle_generator = torch.Generator().manual_seed(int(cfg["seed"]))

    def inference_model(self) -> nn.Module:
        return self.net

    def _clips(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        images = batch["image"]
        if images.dim() != 5:
            raise ValueError(f"ks expects clip batches image (B,n,3,H,W), got {tuple(images.shape)}")
        return images

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

    def training_step(self, batch: dict[str, torch.Tensor], state: TrainState) -> dict[str, torch.Tensor]:
        clips, labels = self._clips(batch), batch["label"]
        b, n = clips.shape[:2]
        if n != self.clip_len:
            raise ValueError(f"ks: training clips must have {self.clip_len} frames (one student each), got {n}")
        key = self.active_positions(batch)
        cfg, weights = self.cfg, self.class_weights

        frames, spatial, temporal = self.net.features(clips)
        students = self.students(frames)

        sup = weighted_bce(spatial, labels, weights) + weighted_bce(temporal, labels, weights)
        clip = torch.arange(b, device=clips.device)
        kd = spatial_kd_loss(students[clip, key], spatial[clip, key], cfg["temperature"])

        perm = make_shuffle_permutations(b, n, generator=self._shuffle_generator, device=clips.device)
        # validate=False: perm comes from make_shuffle_permutations (saves a sort and a sync).
        inputs, order_labels = temporal_shuffle_features(frames.detach(), perm, validate=False)
        order_logits = self.perturbation(inputs)
        perturb = F.binary_cross_entropy_with_logits(order_logits, order_labels)

        labeled = batch["labeled"].to(torch.bool) if "labeled" in batch else (labels >= 0).any(-1)
        unlabeled = ~labeled
        unlabeled[clip, key] = False
        gated = state.epoch >= cfg["gate_epoch"]
        kept = order_logits[:b].detach() >= 0 if gated else torch.ones(b, dtype=torch.bool, device=clips.device)
        semi = semi_loss(temporal, pseudo_labels(students), weights, unlabeled & kept.unsqueeze(1))
        tkd = temporal_kd_loss(spatial, temporal)

        ramp = gaussian_rampup(state.epoch, cfg["ramp_omega"], cfg["ramp_mu"], cfg["ramp_sigma"])
        loss = total_loss(sup, kd, semi, tkd, perturb, ramp, cfg["kd_weight"], cfg["tkd_weight"])
        return {"loss": loss, "sup": sup.detach(), "kd": kd.detach(), "semi": semi.detach(),
                "tkd": tkd.detach(), "perturb": perturb.detach(),
                "kept_clips": kept.float().mean(), "ramp": torch.tensor(ramp)}

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        images = batch["image"]
        if images.dim() == 4:  # a frame batch: clips of one frame
            return self.net(images.unsqueeze(1)).squeeze(1)
        return self.net(self._clips(batch))
